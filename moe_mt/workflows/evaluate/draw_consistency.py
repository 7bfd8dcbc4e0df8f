"""How consistent a model's translations are across random expert draws (``moemt eval``).

A model whose inference draws its experts at random (THOR, Zuo et al. 2022, whose consistency
training claims to make the experts interchangeable) should translate a sentence alike under one
draw and another. :func:`draw_consistency` measures it on the eval set: the test set is
translated ``N`` times with random draws, seeds ``eval.seed``, ``eval.seed + 1``, ...; ``N`` is
the eval key its family names (:attr:`~moe_mt.models.families.Family.draws_key`, THOR's
``eval.thor_draws``), and the report's entry is named after the family (``thor``):

- ``bleu``: BLEU of each draw against the references, with ``bleu_mean``, ``bleu_std``
  (population), ``bleu_min``, ``bleu_max`` and ``bleu_range`` (max - min): the spread over draws;
- ``pairwise_bleu``: BLEU of draw ``j`` against draw ``i`` as the reference, for every pair
  ``i < j`` (``pairs``: ``[i, j, BLEU]``), with their ``mean`` and ``min`` (100 = identical);
- ``identical_share``: the share of sentences translated identically by every draw;
- ``signature``: sacreBLEU's signature of those BLEU scores.

Each draw is one more decode of the test set. The models' own inference settings are restored
afterwards (:meth:`~moe_mt.models.moe_layers.MoETransformerModel.random_draws`).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Sequence

from omegaconf import DictConfig

from moe_mt.errors import MoeMtError
from moe_mt.models import families


def drawing_models(translator) -> list:
    """The loaded models that draw experts at random (none for an exported engine)."""
    return [m for m in translator.models if getattr(m, "draws_experts", lambda: False)()]


def draw_consistency(
    translator,
    sources: Sequence[str],
    references: Sequence[str],
    draws: int,
    seed: int,
    first_draw: Sequence[str] | None = None,
) -> dict | None:
    """The consistency report (module docstring) of ``translator``'s drawing model(s), or None
    when it holds none. ``first_draw``: hypotheses already made with random draws and ``seed``
    (the eval's own, when it ran so), reused as draw 0."""
    from sacrebleu.metrics import BLEU

    models = drawing_models(translator)
    if not models:
        return None
    seeds = [seed + i for i in range(draws)]
    hypotheses: list[list[str]] = [] if first_draw is None else [list(first_draw)]
    for draw_seed in seeds[len(hypotheses) :]:
        with contextlib.ExitStack() as stack:
            for model in models:
                stack.enter_context(model.random_draws(draw_seed))
            hypotheses.append(translator.translate(list(sources)).hypotheses)

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


def consistency_entries(
    eval_cfg: DictConfig, arch: str, translator, sources, references, hypotheses, console
) -> dict:
    """``moemt eval``'s consistency entries (of the report, or of each direction of a
    multilingual report): one per family that draws, null but for the evaluated model's family,
    which gets :func:`draw_consistency`, reusing ``hypotheses`` as the first draw when the eval
    itself drew with ``eval.seed``."""
    entries = {f.name: None for f in families.families() if f.draws_key}
    family = families.family_of_arch(arch)
    models = drawing_models(translator)
    if family is None or family.draws_key is None or not models:
        return entries
    draws, seed = int(eval_cfg[family.draws_key]), int(eval_cfg.seed)
    if draws < 1:
        raise MoeMtError(f"eval.{family.draws_key} must be at least 1, not {draws}")
    console.print(f"{family.name} consistency: {draws} random expert draws", highlight=False)
    first = hypotheses if all(m.draw_seed() == seed for m in models) else None
    entries[family.name] = draw_consistency(translator, sources, references, draws, seed, first)
    return entries
