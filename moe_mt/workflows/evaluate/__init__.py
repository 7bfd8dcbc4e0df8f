"""``moemt eval``: translate the test set of every direction with a chosen checkpoint, and
score it (a single-pair run is the one-direction case).

- :mod:`.evaluation`: :func:`evaluate`: test sets, checkpoint, decoding, per-direction scores,
  paired bootstrap, the averages, ``report.json``.
- :mod:`.report`: the report's schema (format 2) and reading the reports written before.
- :mod:`.scoring`: sacreBLEU BLEU, chrF2, TER with signatures; paired bootstrap; macro average.
- :mod:`.expert_usage`: tokens per expert per MoE layer while decoding, and its heat map.
- :mod:`.draw_consistency`: how much translations change across random expert draws (THOR).
- :mod:`.legacy_bleu`: tokenised, compound-split BLEU as WMT En-De papers report it.
"""

from moe_mt.workflows.evaluate.evaluation import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
