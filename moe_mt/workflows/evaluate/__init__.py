"""``moemt eval``: translate a test set with a chosen checkpoint and score it.

- :mod:`.evaluation`: :func:`evaluate`: files, checkpoint, decoding, scores (sacreBLEU BLEU,
  chrF2, TER with signatures), paired bootstrap, ``report.json``.
- :mod:`.directions`: multilingual runs: every direction scored, and their macro average.
- :mod:`.expert_usage`: tokens per expert per MoE layer while decoding, and its heat map.
- :mod:`.thor_consistency`: THOR: how much translations change across random expert draws.
- :mod:`.legacy_bleu`: tokenised, compound-split BLEU as WMT En-De papers report it.
"""

from moe_mt.workflows.evaluate.evaluation import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
