"""What moemt's criteria share: the per-batch logging output and the per-sample-size means.

fairseq's label-smoothed CE builds the same dict (``ntokens``, ``nsentences``, ``sample_size``,
accuracy counts when ``report_accuracy``) inside its ``forward``; criteria that compute their
own loss build it here instead of copying those lines.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from fairseq import metrics


def sample_size_of(criterion, sample) -> int:
    """Sentences with ``--sentence-avg``, else target tokens (fairseq's LS-CE rule)."""
    return sample["target"].size(0) if criterion.sentence_avg else sample["ntokens"]


def logging_output(criterion, model, net_output, sample, sample_size, **values) -> dict:
    """``values`` plus the batch counts, and the accuracy counts of ``net_output`` if asked."""
    output = {
        **values,
        "ntokens": sample["ntokens"],
        "nsentences": sample["target"].size(0),
        "sample_size": sample_size,
    }
    if criterion.report_accuracy:
        n_correct, total = criterion.compute_accuracy(model, net_output, sample)
        output["n_correct"] = n_correct.item()
        output["total"] = total.item()
    return output


def log_sample_size_means(logging_outputs, keys: Iterable[str], in_bits: bool = False) -> None:
    """Log ``sum(key) / sample_size`` for each key present in the outputs (values the criteria
    logged multiplied by ``sample_size``, or summed over tokens); ``in_bits`` divides by ln 2 as
    fairseq reports its losses."""
    sample_size = max(sum(log.get("sample_size", 0) for log in logging_outputs), 1)
    present = {k for log in logging_outputs for k in log}
    scale = 1 / math.log(2) if in_bits else 1.0
    for key in keys:
        if key in present:
            total = sum(float(log.get(key, 0)) for log in logging_outputs)
            metrics.log_scalar(key, total / sample_size * scale, sample_size, round=3)
