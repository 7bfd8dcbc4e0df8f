"""THOR's training loss: two passes with independent expert draws and a consistency term.

``thor_label_smoothed_cross_entropy`` (Zuo et al. 2022, eq. 3 and the authors' code): in
training, the model runs twice on the same batch; each THOR layer draws its expert anew at each
pass (and dropout draws new masks), and the loss is

    CE_1 + CE_2 + alpha * C,    C = 0.5 * sum_t sum_v (p_t,v - q_t,v) (log p_t,v - log q_t,v)

where ``CE_i`` is fairseq's ``label_smoothed_nll_loss`` of pass ``i`` summed over the non-pad
target tokens, ``p`` and ``q`` the two passes' output distributions, and ``C`` the symmetric KL
``0.5 * (KL(p||q) + KL(q||p))`` summed over the same tokens (:func:`symmetric_kl`, from the
log-softmax outputs in fp32: no log of an underflowed probability). ``alpha`` is
``--moe-consistency-alpha`` (``model.moe.consistency_alpha``; default 1.0 as the authors' code,
5.0 in the paper's experiments).

Normalisation: as fairseq's ``label_smoothed_cross_entropy``, the criterion returns the sum
and ``sample_size`` (target tokens, or sentences with ``--sentence-avg``); fairseq divides by
it. The optimised objective is therefore ``mean CE_1 + mean CE_2 + alpha * mean C`` per target
token: twice the dense baseline's loss scale on the CE side, as in the authors' code.

Logged (per target token, base 2 like fairseq's ``loss``): ``loss`` and ``nll_loss`` are the
means of the two passes (comparable with the dense baseline's), ``ce_pass1`` / ``ce_pass2`` each
pass's label-smoothed CE, ``consistency`` the term ``C``, ``objective`` the optimised total;
``thor_same_expert`` is the share of (layer, token) decisions in which both passes drew the same
expert (``1 / E`` in expectation). Validation and inference (the model in eval mode) run one pass:
plain label-smoothed CE, as the dense baseline.
"""

# No `from __future__ import annotations`: omegaconf 2.0 reads the config dataclass types.
from dataclasses import dataclass

from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)
from torch import Tensor

from moe_mt.criterions.logging_outputs import log_sample_size_means, logging_output, sample_size_of
from moe_mt.models.families import criterion_field
from moe_mt.models.thor_options import CONSISTENCY_ALPHA

CRITERION_NAME = "thor_label_smoothed_cross_entropy"
#: Summed per batch, logged per target token in base 2.
BITS_KEYS = ("ce_pass1", "ce_pass2", "consistency", "objective")


@dataclass
class ThorLabelSmoothedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    moe_consistency_alpha: float = criterion_field(CONSISTENCY_ALPHA)  # thor_options.py


def symmetric_kl(lprobs_p: Tensor, lprobs_q: Tensor, pad_mask: Tensor | None = None) -> Tensor:
    """``0.5 * sum_t sum_v (p - q) (log p - log q)``: symmetric KL summed over tokens.

    Args:
        lprobs_p, lprobs_q: ``[t, v]`` log-probabilities (log-softmax over ``v``).
        pad_mask: ``[t]`` bool, True = pad (left out).

    Returns:
        a scalar (fp32 or wider), ``0.5 * sum_t (KL(p_t||q_t) + KL(q_t||p_t))``; symmetric in
        its arguments and zero when they are equal.
    """
    lp = lprobs_p.float()
    lq = lprobs_q.float()
    per_token = ((lp.exp() - lq.exp()) * (lp - lq)).sum(dim=-1)
    if pad_mask is not None:
        per_token = per_token.masked_fill(pad_mask, 0.0)
    return 0.5 * per_token.sum()


def same_expert_share(outputs_1, outputs_2) -> float | None:
    """Share of the non-pad (layer, token) decisions where two passes chose the same expert."""
    same, total = 0, 0
    for o1, o2 in zip(outputs_1, outputs_2, strict=True):
        kept = o1.output.routing.combine_weight[:, 0] > 0  # pads have weight 0
        e1, e2 = o1.output.routing.expert_index[:, 0], o2.output.routing.expert_index[:, 0]
        same += int((e1.eq(e2) & kept).sum())
        total += int(kept.sum())
    return same / total if total else None


@register_criterion(CRITERION_NAME, dataclass=ThorLabelSmoothedCrossEntropyConfig)
class ThorLabelSmoothedCrossEntropy(LabelSmoothedCrossEntropyCriterion):
    """Two passes, label-smoothed CE on both, plus alpha x symmetric KL (module docstring)."""

    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        *,
        moe_consistency_alpha: float,
    ):  # moe_consistency_alpha's default is the config dataclass's
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.alpha = moe_consistency_alpha

    def forward(self, model, sample, reduce=True):
        if not model.training:
            return super().forward(model, sample, reduce=reduce)
        if not reduce:
            raise ValueError(f"{CRITERION_NAME} trains with reduce=True only")
        net_outputs = [model(**sample["net_input"]) for _ in range(2)]
        passes = [self.get_lprobs_and_target(model, out, sample) for out in net_outputs]
        ce, nll = zip(
            *(
                label_smoothed_nll_loss(lp, tgt, self.eps, ignore_index=self.padding_idx)
                for lp, tgt in passes
            ),
            strict=True,
        )
        target = passes[0][1]
        consistency = symmetric_kl(passes[0][0], passes[1][0], target.eq(self.padding_idx))
        loss = ce[0] + ce[1] + self.alpha * consistency.to(ce[0].dtype)

        sample_size = sample_size_of(self, sample)
        output = logging_output(
            self, model, net_outputs[0], sample, sample_size,
            loss=(ce[0].data + ce[1].data) / 2,
            nll_loss=(nll[0].data + nll[1].data) / 2,
            ce_pass1=ce[0].data,
            ce_pass2=ce[1].data,
            consistency=consistency.data,
            objective=loss.data,
        )  # fmt: skip
        same = same_expert_share(*(out[1].get("moe", []) for out in net_outputs))
        if same is not None:
            output["thor_same_expert"] = same * sample_size
        return loss, sample_size, output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        log_sample_size_means(logging_outputs, BITS_KEYS, in_bits=True)
        log_sample_size_means(logging_outputs, ["thor_same_expert"])
