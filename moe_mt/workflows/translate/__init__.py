"""A trained run translating lines with fairseq: what ``moemt translate``, eval, distill and
export decode with.

- :mod:`.translator`: :class:`Translator` (checkpoint + task + sentencepiece, fairseq's beam
  search, one direction at a time for multilingual runs) and :class:`DecodeOptions`.

``moemt translate`` itself (stdin to stdout, either engine) is
:func:`moe_mt.workflows.export.stream.translate_stream`: the CTranslate2 engine decodes an export,
which is made from a :class:`Translator`.
"""

from moe_mt.workflows.translate.translator import DecodeOptions, Translator

__all__ = ["DecodeOptions", "Translator"]
