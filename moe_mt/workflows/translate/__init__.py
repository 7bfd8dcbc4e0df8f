"""``moemt translate``: a trained run translating lines.

- :mod:`.translator`: :class:`Translator` (checkpoint + task + sentencepiece, fairseq's beam
  search, one direction at a time for multilingual runs) and :class:`DecodeOptions`.
"""

from moe_mt.workflows.translate.translator import DecodeOptions, Translator

__all__ = ["DecodeOptions", "Translator"]
