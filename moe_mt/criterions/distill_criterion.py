"""Word-level knowledge distillation (Hinton et al. 2015; Kim & Rush 2016 §3.1; Switch §5.3).

``distill_label_smoothed_cross_entropy``: for each non-pad target token ``t``,

    (1 - w) * CE_ls(t) + w * KL(p_T(. | t) || p_S(. | t))

where ``CE_ls`` is fairseq's ``label_smoothed_nll_loss`` against the gold token, ``p_S`` the
student's and ``p_T`` the teacher's output distribution (teacher forward in eval mode, no
gradient), ``KL(p || q) = sum_v p_v (log p_v - log q_v)`` computed in fp32 from the log-softmax
outputs (:func:`teacher_kl`, a term with ``p_v = 0`` counts 0). ``w`` is
``--distill-teacher-weight`` (``distill.teacher_weight``, default 0.25 as the Switch paper's
0.25 teacher / 0.75 ground truth). At ``w = 0`` the loss is exactly fairseq's
``label_smoothed_cross_entropy``.

Normalisation: as fairseq's label-smoothed criterion, the loss is the sum over the batch's
non-pad target tokens and ``sample_size`` is their number (sentences with ``--sentence-avg``);
fairseq divides by it, so the optimised objective is ``(1 - w) mean CE_ls + w mean KL`` per
target token. Validation computes the same mix.

The teacher is loaded in the constructor from ``--distill-teacher`` (a checkpoint path), with
the student's task (the same dictionaries: the student's data is the teacher's) and
``--distill-teacher-overrides``, the model arguments its family's eval sets (a THOR
teacher's inference mode and expert, :func:`moe_mt.models.families.eval_overrides`). It is kept
outside the module tree (not a submodule: fairseq's optimizer takes ``criterion.parameters()``
too, and checkpoints save the criterion's state), with ``requires_grad`` off, in eval mode.

Logged (per target token, base 2): ``loss`` (the mix), ``nll_loss`` (gold NLL), ``ce_gold``
(label-smoothed CE on gold) and ``kl_teacher``.
"""

# No `from __future__ import annotations`: omegaconf 2.0 reads the config dataclass types.
import json
from dataclasses import dataclass, field

import torch
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)
from torch import Tensor

from moe_mt.criterions.logging_outputs import log_sample_size_means, logging_output, sample_size_of

CRITERION_NAME = "distill_label_smoothed_cross_entropy"
BITS_KEYS = ("ce_gold", "kl_teacher")


@dataclass
class DistillLabelSmoothedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    distill_teacher: str = field(
        default="", metadata={"help": "checkpoint of the teacher (word-level KD)"}
    )
    distill_teacher_weight: float = field(
        default=0.25, metadata={"help": "weight w of KL(teacher || student); 1 - w on gold CE"}
    )
    distill_teacher_overrides: str = field(
        default="",
        metadata={
            "help": "the teacher's model arguments at load, a JSON object (its family's eval "
            "arguments: THOR's inference mode and expert; '': as trained)"
        },
    )


def teacher_kl(student_lprobs: Tensor, teacher_lprobs: Tensor, pad_mask: Tensor | None) -> Tensor:
    """``sum_t KL(p_T,t || p_S,t)`` over the non-pad tokens, in fp32.

    Args:
        student_lprobs, teacher_lprobs: ``[t, v]`` log-probabilities (log-softmax over ``v``).
        pad_mask: ``[t]`` bool, True = pad (left out).
    """
    ls, lt = student_lprobs.float(), teacher_lprobs.float()
    pt = lt.exp()
    per_token = (pt * (lt - ls)).masked_fill(pt == 0, 0.0).sum(dim=-1)
    if pad_mask is not None:
        per_token = per_token.masked_fill(pad_mask, 0.0)
    return per_token.sum()


def distillation_loss(
    student_lprobs: Tensor,
    teacher_lprobs: Tensor,
    target: Tensor,
    epsilon: float,
    weight: float,
    ignore_index: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(loss, nll, ce, kl)``: ``loss = (1 - weight) * ce + weight * kl``, each summed over the
    non-pad tokens of ``target`` ([t]); ``ce`` is fairseq's label-smoothed CE."""
    ce, nll = label_smoothed_nll_loss(student_lprobs, target, epsilon, ignore_index=ignore_index)
    kl = teacher_kl(student_lprobs, teacher_lprobs, target.eq(ignore_index)).to(ce.dtype)
    return (1.0 - weight) * ce + weight * kl, nll, ce, kl


def load_teacher(path: str, task, overrides: dict | None = None):
    """The teacher model of checkpoint ``path``, built with ``task``, eval mode, frozen;
    ``overrides`` replace model arguments of the checkpoint (its family's eval arguments)."""
    from moe_mt.checkpoints import load_state

    state = load_state(path, overrides or None)
    model = task.build_model(state["cfg"].model)
    model.load_state_dict(state["model"], strict=True, model_cfg=state["cfg"].model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@register_criterion(CRITERION_NAME, dataclass=DistillLabelSmoothedCrossEntropyConfig)
class DistillLabelSmoothedCrossEntropy(LabelSmoothedCrossEntropyCriterion):
    """Label-smoothed CE on gold mixed with the KL to a frozen teacher (module docstring)."""

    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        *,
        distill_teacher: str,
        distill_teacher_weight: float,
        distill_teacher_overrides: str,
        teacher=None,
    ):  # defaults are the config dataclass's; `teacher` (a model) is for tests
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if not 0.0 <= distill_teacher_weight <= 1.0:
            raise ValueError(f"--distill-teacher-weight {distill_teacher_weight} not in [0, 1]")
        self.weight = distill_teacher_weight
        if teacher is None:
            if not distill_teacher:
                raise ValueError(f"{CRITERION_NAME} needs --distill-teacher CHECKPOINT")
            overrides = json.loads(distill_teacher_overrides) if distill_teacher_overrides else {}
            teacher = load_teacher(distill_teacher, task, overrides)
        # In a list: not a submodule (no parameters for the optimizer, nothing in checkpoints).
        self._teacher = [teacher]

    @property
    def teacher(self):
        return self._teacher[0]

    def teacher_lprobs(self, sample) -> Tensor:
        teacher = self.teacher
        device = sample["target"].device
        if next(teacher.parameters()).device != device:
            teacher.to(device)
        teacher.eval()
        with torch.no_grad():
            out = teacher(**sample["net_input"])
            lprobs = teacher.get_normalized_probs(out, log_probs=True)
        if self.ignore_prefix_size > 0:
            lprobs = lprobs[:, self.ignore_prefix_size :, :]
        return lprobs.reshape(-1, lprobs.size(-1))

    def forward(self, model, sample, reduce=True):
        if not reduce:
            raise ValueError(f"{CRITERION_NAME} supports reduce=True only")
        net_output = model(**sample["net_input"])
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        loss, nll, ce, kl = distillation_loss(
            lprobs, self.teacher_lprobs(sample), target, self.eps, self.weight, self.padding_idx
        )
        sample_size = sample_size_of(self, sample)
        output = logging_output(
            self, model, net_output, sample, sample_size,
            loss=loss.data, nll_loss=nll.data, ce_gold=ce.data, kl_teacher=kl.data,
        )  # fmt: skip
        return loss, sample_size, output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        log_sample_size_means(logging_outputs, BITS_KEYS, in_bits=True)
