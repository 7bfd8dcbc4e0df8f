"""Label-smoothed cross-entropy plus the MoE layers' auxiliary losses, with routing statistics.

``moe_label_smoothed_cross_entropy``: fairseq's ``label_smoothed_nll_loss`` (summed over target
tokens, as fairseq's own criterion) plus

    sample_size * (balance_weight * balance + z_loss_weight * z)        (z only with --moe-z-loss)

where ``balance`` (Switch eq. 4) and ``z`` (ST-MoE eq. 5) are each the mean over the MoE layers
of that layer's per-token-mean loss (:func:`~moe_mt.moe.combine_aux_losses`). fairseq divides
the summed loss by ``sample_size`` before the gradient step (and for logging), so the objective
it optimises is ``mean CE + balance_weight * balance + z_loss_weight * z``: the aux weights mean
the same whatever the batch size. The aux losses come from ``extra["moe"]``, the per-forward list
that :class:`~moe_mt.models.moe_layers.MoETransformerModel` returns; for a dense model the
criterion equals ``label_smoothed_cross_entropy``.

Logged through fairseq's metrics (averaged over MoE layers, token-weighted over batches), so they
reach ``logs/train.log``: ``moe_balance``, ``moe_z`` (unweighted aux losses), ``moe_dropped``
(share of token assignments dropped by capacity), ``moe_active`` (share of experts that received
a token), ``moe_entropy`` (router entropy, nats), ``moe_load_max`` / ``moe_load_min`` (tokens of
the most / least used expert relative to a uniform share: 1.0 = balanced), and a router's own
statistics as ``moe_<name>`` (expert choice's ``moe_tokens_without_expert``: the share of tokens
that no expert took), each averaged over the layers that report it.
"""

# No `from __future__ import annotations`: omegaconf 2.0 reads the config dataclass types.
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from torch import Tensor

from moe_mt.criterions.logging_outputs import log_sample_size_means, logging_output, sample_size_of
from moe_mt.models.families import criterion_field
from moe_mt.models.moe_layers import MoELayerOutput
from moe_mt.models.switch_options import BALANCE_WEIGHT, Z_LOSS, Z_LOSS_WEIGHT
from moe_mt.moe import combine_aux_losses

CRITERION_NAME = "moe_label_smoothed_cross_entropy"
#: Logged statistics, each averaged over the MoE layers of a forward pass.
STAT_KEYS = ("moe_dropped", "moe_active", "moe_entropy", "moe_load_max", "moe_load_min")


@dataclass
class MoELabelSmoothedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    # Declared once, with the model options (moe_mt/models/switch_options.py).
    moe_balance_weight: float = criterion_field(BALANCE_WEIGHT)
    moe_z_loss: bool = criterion_field(Z_LOSS)
    moe_z_loss_weight: float = criterion_field(Z_LOSS_WEIGHT)


def aux_coefficients(balance_weight: float, z_loss: bool, z_loss_weight: float) -> dict:
    """Aux-loss name -> weight; a name left out is logged but not optimised."""
    return {"balance": balance_weight, **({"z": z_loss_weight} if z_loss else {})}


def moe_aux_loss(
    outputs: Sequence[MoELayerOutput], coefficients: dict[str, float]
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """``(weighted total or None, per-name mean over layers)`` of the layers' aux losses."""
    return combine_aux_losses([o.output.aux_losses for o in outputs], coefficients)


def moe_statistics(outputs: Sequence[MoELayerOutput]) -> dict[str, Tensor]:
    """:data:`STAT_KEYS` -> scalar, each the mean over layers (empty dict without MoE layers)."""
    if not outputs:
        return {}
    rows = []
    for o in outputs:
        s = o.output.stats
        tokens = s.tokens_per_expert
        load = tokens * tokens.numel() / tokens.sum().clamp_min(1.0)  # 1.0 = a uniform share
        row = [s.fraction_dropped, s.activation_rate, s.router_entropy, load.max(), load.min()]
        # One stack on the layer's device and one read-back below, not one per value (each is
        # a wait for the GPU); random routers report their entropy as a CPU constant.
        rows.append(torch.stack([v.float().to(tokens.device, non_blocking=True) for v in row]))
    # nanmean: routers without a distribution (random routing) report a NaN entropy.
    means = torch.stack(rows).nanmean(0).cpu()
    return {**dict(zip(STAT_KEYS, means, strict=True)), **router_statistics(outputs)}


def router_statistics(outputs: Sequence[MoELayerOutput]) -> dict[str, Tensor]:
    """``moe_<name>`` -> the mean over the layers that report it of a router's own statistic
    (``Routing.stats`` beyond the entropy, which :data:`STAT_KEYS` holds)."""
    values: dict[str, list[Tensor]] = {}
    for o in outputs:
        for name, value in o.output.routing.stats.items():
            if name != "router_entropy":
                values.setdefault(f"moe_{name}", []).append(value.detach().float().cpu())
    return {name: torch.stack(v).mean() for name, v in values.items()}


@register_criterion(CRITERION_NAME, dataclass=MoELabelSmoothedCrossEntropyConfig)
class MoELabelSmoothedCrossEntropy(LabelSmoothedCrossEntropyCriterion):
    """fairseq's label-smoothed CE plus weighted MoE aux losses (see the module docstring)."""

    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        *,
        moe_balance_weight: float,
        moe_z_loss: bool,
        moe_z_loss_weight: float,
    ):  # the moe_* defaults are the config dataclass's, passed by fairseq's build_criterion
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.coefficients = aux_coefficients(moe_balance_weight, moe_z_loss, moe_z_loss_weight)

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample_size_of(self, sample)
        outputs = net_output[1].get("moe", [])
        aux, means = moe_aux_loss(outputs, self.coefficients)
        if aux is not None:
            loss = loss + sample_size * aux.to(loss.dtype)
        output = logging_output(
            self, model, net_output, sample, sample_size, loss=loss.data, nll_loss=nll_loss.data
        )
        # Per-token means, scaled by sample_size: reduce_metrics divides the sum by it again.
        for name, value in means.items():
            output[f"moe_{name}"] = float(value.detach()) * sample_size
        for name, value in moe_statistics(outputs).items():
            output[name] = float(value) * sample_size
        return loss, sample_size, output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        keys = sorted({k for log in logging_outputs for k in log if k.startswith("moe_")})
        log_sample_size_means(logging_outputs, keys)
