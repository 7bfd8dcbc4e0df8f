"""``moemt export``: a trained run for deployment, as a CTranslate2 model (and the engine that
``moemt eval`` / ``moemt translate`` decode it with).

- :mod:`.exporter`: :func:`export`: the checkpoint ``eval.checkpoint`` chooses, converted with
  ``eval.quantization`` into ``RUN_DIR/export/ct2-<quantization>`` (or ``--out``) with the
  sentencepiece model(s) and ``export.json``; reused while its inputs are unchanged.
- :mod:`.dense_model`: the dense Transformer a checkpoint is at inference (dense runs, distilled
  students, THOR with one fixed expert), or the one-line refusal of a routed MoE model.
- :mod:`.ct2_spec`: that model as a ``ctranslate2.specs.TransformerSpec``, through the library's
  spec API and fairseq loader helpers, validated, quantized and saved by its converter.
- :mod:`.ct2_translator`: :class:`Ct2Translator`: an export decoding lines with fairseq's
  batches and decoding options mapped one to one.
- :mod:`.engine`: ``eval.engine`` (fairseq | ctranslate2): the translator of either, and the
  eval report's ``engine`` entry.
- :mod:`.stream`: :func:`translate_stream`, ``moemt translate``: lines through the checkpoint
  ``eval.checkpoint`` chooses, in the engine ``eval.engine`` names.
"""

from moe_mt.workflows.export.exporter import ExportResult, export

__all__ = ["ExportResult", "export"]
