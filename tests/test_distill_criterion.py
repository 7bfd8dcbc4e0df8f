"""Word-level KD criterion: hand-computed loss, plain CE at weight 0, a frozen teacher kept out
of the optimizer, teacher loading through fairseq's criterion config."""

from __future__ import annotations

import math

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

from moe_mt.checkpoints import load_state
from moe_mt.criterions.distill_criterion import (
    CRITERION_NAME,
    DistillLabelSmoothedCrossEntropy,
    distillation_loss,
    teacher_kl,
)
from tests.test_switch import batch, build

DENSE = "model.arch=moemt_transformer_demo"


def test_registered_name_is_pinned():
    from fairseq.criterions import CRITERION_REGISTRY

    assert CRITERION_NAME == "distill_label_smoothed_cross_entropy" in CRITERION_REGISTRY


def test_loss_against_hand_computed_values():
    # Vocabulary of 3, pad index 1; tokens: gold 0, gold 2, a pad.
    student = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]], dtype=torch.float64)
    teacher = torch.tensor(
        [[0.7, 0.2, 0.1], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]], dtype=torch.float64
    )
    target = torch.tensor([0, 2, 1])
    ln = math.log
    # fairseq's label smoothing: (1 - eps - eps/(V-1)) * nll + eps/(V-1) * sum_v -log p_v.
    ce = 0.85 * -ln(0.5) + 0.05 * -(ln(0.5) + ln(0.3) + ln(0.2))
    ce += 0.85 * -ln(0.3) + 0.05 * -(ln(0.1) + ln(0.6) + ln(0.3))
    kl = 0.7 * ln(0.7 / 0.5) + 0.2 * ln(0.2 / 0.3) + 0.1 * ln(0.1 / 0.2)
    kl += 0.2 * ln(0.2 / 0.1) + 0.2 * ln(0.2 / 0.6) + 0.6 * ln(0.6 / 0.3)
    loss, nll, ce_out, kl_out = distillation_loss(
        student.log(), teacher.log(), target, epsilon=0.1, weight=0.25, ignore_index=1
    )
    assert float(ce_out) == pytest.approx(ce, rel=1e-12)
    assert float(kl_out) == pytest.approx(kl, rel=1e-6)  # KL in fp32
    assert float(nll) == pytest.approx(-ln(0.5) - ln(0.3), rel=1e-12)
    assert float(loss) == pytest.approx(0.75 * ce + 0.25 * kl, rel=1e-6)


def test_kl_of_a_teacher_with_zero_probabilities_is_finite():
    student = torch.tensor([[0.5, 0.5, 0.0 + 1e-30]]).log()
    teacher = torch.tensor([[1.0, 0.0, 0.0]]).log()  # log 0 = -inf
    assert float(teacher_kl(student, teacher, None)) == pytest.approx(math.log(2), rel=1e-6)
    assert float(teacher_kl(teacher, teacher, None)) == 0.0


def _criterion(task, teacher, weight: float) -> DistillLabelSmoothedCrossEntropy:
    return DistillLabelSmoothedCrossEntropy(
        task, False, 0.1, distill_teacher="", distill_teacher_weight=weight,
        distill_teacher_overrides="", teacher=teacher,
    )  # fmt: skip


def test_weight_zero_is_plain_label_smoothed_cross_entropy(prepped_demo):
    task, student, _ = build(prepped_demo, DENSE, seed=1)
    _, teacher, _ = build(prepped_demo, DENSE, seed=2)
    sample = batch(task)
    student.eval()  # no dropout: both criteria see the same forward pass
    plain, plain_size, plain_log = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)(
        student, sample
    )
    loss, size, log = _criterion(task, teacher, 0.0)(student, sample)
    assert torch.equal(loss, plain) and size == plain_size
    assert torch.equal(log["nll_loss"], plain_log["nll_loss"]) and float(log["kl_teacher"]) > 0


def test_teacher_is_frozen_and_outside_the_optimizer(prepped_demo):
    task, student, _ = build(prepped_demo, DENSE, seed=1)
    _, teacher, _ = build(prepped_demo, DENSE, seed=2)
    for p in teacher.parameters():
        p.requires_grad_(False)
    criterion = _criterion(task, teacher, 0.25)
    assert list(criterion.parameters()) == [] and criterion.state_dict() == {}
    student.train()
    teacher.train()  # the criterion puts it in eval mode
    loss, _, log = criterion(student, batch(task))
    loss.backward()
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    sample_size = log["sample_size"]
    expected = 0.75 * log["ce_gold"] + 0.25 * log["kl_teacher"]
    assert float(loss) == pytest.approx(float(expected), rel=1e-5) and sample_size > 0


def test_teacher_loaded_from_the_criterion_config(trained_demo):
    checkpoint = trained_demo / "checkpoints" / "checkpoint_last.pt"
    _, _, criterion = build(
        trained_demo, DENSE, f"train.criterion={CRITERION_NAME}",
        f"train.fairseq_args=[--distill-teacher,{checkpoint},--distill-teacher-weight,0.5]",
    )  # fmt: skip
    assert isinstance(criterion, DistillLabelSmoothedCrossEntropy) and criterion.weight == 0.5
    state = load_state(checkpoint)["model"]
    teacher = dict(criterion.teacher.named_parameters())
    assert not criterion.teacher.training and len(teacher) > 10
    assert all(torch.equal(p, state[k]) and not p.requires_grad for k, p in teacher.items())
