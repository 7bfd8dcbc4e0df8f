"""How consistent a THOR model's translations are across random expert draws (``moemt eval``).

THOR's central claim (Zuo et al. 2022) is that its consistency training makes the experts
interchangeable: a sentence translated with one random draw of experts should read like the same
sentence translated with another. :func:`thor_consistency` measures it on the eval set: the test
set is translated ``eval.thor_draws`` times in ``random`` mode with seeds ``eval.seed``,
``eval.seed + 1``, ...; reported (``report.json``, key ``thor``):

- ``bleu``: BLEU of each draw against the references, with ``bleu_mean``, ``bleu_std``
  (population), ``bleu_min``, ``bleu_max`` and ``bleu_range`` (max - min): the spread over draws;
- ``pairwise_bleu``: BLEU of draw ``j`` against draw ``i`` as the reference, for every pair
  ``i < j`` (``pairs``: ``[i, j, BLEU]``), with their ``mean`` and ``min`` (100 = identical);
- ``identical_share``: the share of sentences translated identically by every draw;
- ``signature``: sacreBLEU's signature of those BLEU scores.

Each draw is one more decode of the test set. The model's own inference settings are restored
afterwards.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from omegaconf import DictConfig

from moe_mt.errors import MoeMtError
from moe_mt.models.thor import ThorTransformerModel


def thor_models(translator) -> list:
    return [m for m in translator.models if isinstance(m, ThorTransformerModel)]


def thor_consistency(
    translator,
    sources: Sequence[str],
    references: Sequence[str],
    eval_cfg: DictConfig,
    first_draw: Sequence[str] | None = None,
) -> dict | None:
    """The consistency report (module docstring) of ``translator``'s THOR model(s), or None
    when it holds none. ``first_draw``: hypotheses already made with ``random`` inference and
    seed ``eval_cfg.seed`` (the eval's own, when it ran in that mode), reused as draw 0."""
    from sacrebleu.metrics import BLEU

    models = thor_models(translator)
    if not models:
        return None
    draws = int(eval_cfg.thor_draws)
    if draws < 1:
        raise MoeMtError(f"eval.thor_draws must be at least 1, not {draws}")
    seeds = [int(eval_cfg.seed) + i for i in range(draws)]
    saved = [[(r.inference, r.fixed_expert, r.seed) for r in m.routers()] for m in models]
    hypotheses: list[list[str]] = []
    try:
        for i, seed in enumerate(seeds):
            if i == 0 and first_draw is not None:
                hypotheses.append(list(first_draw))
                continue
            for model in models:
                model.set_inference("random", seed=seed)
            hypotheses.append(translator.translate(list(sources)).hypotheses)
    finally:
        for model, settings in zip(models, saved, strict=True):
            for router, (mode, expert, seed) in zip(model.routers(), settings, strict=True):
                router.inference, router.fixed_expert, router.seed = mode, expert, seed

    bleu = BLEU()
    scores = [bleu.corpus_score(h, [list(references)]).score for h in hypotheses]
    pairs = [
        [i, j, bleu.corpus_score(hypotheses[j], [hypotheses[i]]).score]
        for i in range(draws)
        for j in range(i + 1, draws)
    ]
    identical = sum(len(set(row)) == 1 for row in zip(*hypotheses, strict=True))
    return {
        "mode": "random",
        "draws": draws,
        "seeds": seeds,
        "bleu": [round(s, 4) for s in scores],
        "bleu_mean": round(statistics.fmean(scores), 4),
        "bleu_std": round(statistics.pstdev(scores), 4),
        "bleu_min": round(min(scores), 4),
        "bleu_max": round(max(scores), 4),
        "bleu_range": round(max(scores) - min(scores), 4),
        "pairwise_bleu": {
            "pairs": [[i, j, round(s, 4)] for i, j, s in pairs],
            "mean": round(statistics.fmean(s for *_, s in pairs), 4) if pairs else None,
            "min": round(min(s for *_, s in pairs), 4) if pairs else None,
        },
        "identical_share": round(identical / len(sources), 4) if sources else None,
        "signature": str(bleu.get_signature()),
    }


def eval_thor_consistency(
    eval_cfg: DictConfig, translator, sources, references, hypotheses, console
) -> dict | None:
    """``moemt eval``'s ``thor`` entry (of the report, or of each direction of a multilingual
    report): None for models without THOR layers; otherwise :func:`thor_consistency`, reusing
    ``hypotheses`` as the first draw when they were decoded in ``random`` mode."""
    if not thor_models(translator):
        return None
    console.print(f"THOR consistency: {eval_cfg.thor_draws} random expert draws", highlight=False)
    first = hypotheses if eval_cfg.thor_inference == "random" else None
    return thor_consistency(translator, sources, references, eval_cfg, first)
