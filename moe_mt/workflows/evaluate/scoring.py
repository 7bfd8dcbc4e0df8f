"""Scores of hypotheses against references: sacreBLEU's BLEU, chrF2 and TER with their
signatures, the paired bootstrap between two systems, and the macro average over directions.

The average over directions is the unweighted mean of each direction's corpus-level score, as
multilingual MT reports it (M2M-100, NLLB-200 report the mean of per-direction scores); it is
never a corpus score over the pooled directions. A single-pair run's average is its one score.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.text import check_same_length
from moe_mt.workflows.evaluate.legacy_bleu import multi_bleu_metric

METRICS = ("BLEU", "chrF2", "TER")


def _metrics() -> dict:
    from sacrebleu.metrics import BLEU, CHRF, TER

    return {"BLEU": BLEU(), "chrF2": CHRF(), "TER": TER()}


def score(
    hypotheses: list[str],
    references: list[str],
    hyp_path: Path | str = "hypotheses",
    ref_path: Path | str = "references",
) -> dict:
    """BLEU, chrF2 and TER of ``hypotheses`` with sacrebleu's defaults, with signatures.

    sacrebleu silently scores the shorter of the two lists: unequal lengths are an error here.
    """
    check_same_length(hypotheses, hyp_path, references, ref_path, "hypotheses and references")
    scores = {}
    for name, metric in _metrics().items():
        result = metric.corpus_score(hypotheses, [references])
        signature = str(metric.get_signature())
        scores[name] = {
            "score": _number(result.score),
            "signature": signature,
            "formatted": result.format(signature=signature),
        }
    return scores


@contextlib.contextmanager
def _sacrebleu_seed(seed: int) -> Iterator[None]:
    # sacrebleu's paired tests read their seed from the environment only.
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = old


#: The name of fairseq-generate's BLEU4 on tokenised text in compare's tables and bootstraps.
TOKENIZED_BLEU = "BLEU4 tok"


def tokenized_bleu_metrics() -> dict:
    """multi-bleu.perl's BLEU as a sacrebleu metric (:func:`.legacy_bleu.multi_bleu`'s), for a
    paired bootstrap on tokenised lines."""
    return {TOKENIZED_BLEU: multi_bleu_metric()}


def paired_bootstrap(
    baseline: list[str],
    system: list[str],
    references: list[str],
    resamples: int,
    seed: int,
    metrics: dict | None = None,
) -> dict:
    """sacrebleu's paired bootstrap resampling of ``system`` against ``baseline`` (``metrics``:
    sacrebleu metrics by name; default BLEU, chrF2 and TER).

    Per metric: both scores, the bootstrap mean and 95% confidence half-width of each, and the
    p-value of the difference (Koehn 2004, as sacrebleu's ``--paired-bs``). One exception: where
    the two scores are equal, sacrebleu counts no resample "more extreme" than a zero difference
    and returns the smallest p-value it can, 1 / (resamples + 1), which would call two identical
    systems significantly different; a zero observed difference gets p = 1 instead.
    """
    from sacrebleu.significance import PairedTest

    if resamples < 1:
        raise MoeMtError(f"eval.bootstrap_resamples must be at least 1, not {resamples}")
    if seed <= 0:
        # sacrebleu treats a seed of 0 as "no seed": the resamples would not be reproducible.
        raise MoeMtError(f"eval.seed must be a positive integer for the bootstrap, not {seed}")
    with _sacrebleu_seed(seed):
        test = PairedTest(
            [("baseline", baseline), ("system", system)],
            metrics or _metrics(),
            references=[references],
            test_type="bs",
            n_samples=resamples,
        )
        signatures, results = test()
    found = {}
    # sacrebleu keys its results by each metric's own name (BLEU for any BLEU): back to ours.
    named = dict(zip((n for n in results if n != "System"), metrics or _metrics(), strict=True))
    for key, name in named.items():
        base, sys_ = results[key]
        found[name] = {
            "baseline": _number(base.score),
            "baseline_mean": _number(base.mean),
            "baseline_ci95": _number(base.ci),
            "system": _number(sys_.score),
            "system_mean": _number(sys_.mean),
            "system_ci95": _number(sys_.ci),
            "p_value": 1.0 if sys_.score == base.score else _number(sys_.p_value),
            "signature": str(signatures[key]),
        }
    return {"resamples": resamples, "seed": seed, "metrics": found}


def _number(value) -> float | None:
    """A JSON-ready float (sacrebleu hands back numpy scalars)."""
    return None if value is None else float(value)


def macro_average(per_direction: dict[str, dict]) -> dict:
    """Per metric: the unweighted mean of the directions' corpus-level scores, with their
    shared signature (directions scored with different signatures cannot be averaged)."""
    average = {}
    for metric in METRICS:
        scores = [d[metric]["score"] for d in per_direction.values()]
        signatures = {d[metric]["signature"] for d in per_direction.values()}
        if len(signatures) != 1:
            raise MoeMtError(f"{metric}: directions scored with different signatures")
        average[metric] = {
            "score": sum(scores) / len(scores),
            "signature": signatures.pop(),
            "directions": len(scores),
        }
    return average
