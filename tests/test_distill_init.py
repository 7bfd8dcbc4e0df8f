"""Student initialisation from a teacher: exactly the tensors reported as copied are copied,
FFNs from one expert or the mean of the experts, everything else keeps the student's own."""

from __future__ import annotations

import pytest
import torch

from moe_mt.workflows.common.student_init import student_state_from_teacher
from tests.test_switch import build

DENSE = "model.arch=moemt_transformer_demo"


def test_hand_made_state_dicts():
    w1 = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # [e, d, f]
    w2 = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # [e, f, d]
    b1, b2 = torch.ones(2, 4), torch.stack([torch.zeros(3), torch.full((3,), 2.0)])
    teacher = {
        "emb": torch.full((5, 3), 7.0),
        "wide": torch.ones(3, 9),
        "l.moe.experts.w1": w1, "l.moe.experts.w2": w2,
        "l.moe.experts.b1": b1, "l.moe.experts.b2": b2,
        "l.moe.router.gate.weight": torch.ones(2, 3),
    }  # fmt: skip
    student = {
        "emb": torch.zeros(5, 3),
        "wide": torch.zeros(3, 8),  # another shape: kept
        "only_student": torch.zeros(2),
        "l.fc1.weight": torch.zeros(4, 3), "l.fc1.bias": torch.zeros(4),
        "l.fc2.weight": torch.zeros(3, 4), "l.fc2.bias": torch.zeros(3),
    }  # fmt: skip

    state, report = student_state_from_teacher(student, teacher, "mean")
    assert set(report.copied) == {"emb"} and set(report.kept) == {"wide", "only_student"}
    assert set(report.from_experts) == {f"l.fc{i}.{k}" for i in (1, 2) for k in ("weight", "bias")}
    assert torch.equal(state["emb"], teacher["emb"]) and torch.equal(state["wide"], student["wide"])
    assert torch.equal(state["l.fc1.weight"], w1.mean(0).t())
    assert torch.equal(state["l.fc2.weight"], w2.mean(0).t())
    assert torch.equal(state["l.fc2.bias"], torch.ones(3))
    assert "shape (3, 8) vs teacher wide (3, 9)" in report.kept["wide"]

    state, report = student_state_from_teacher(student, teacher, "expert", expert=1)
    assert torch.equal(state["l.fc1.weight"], w1[1].t()) and torch.equal(state["l.fc1.bias"], b1[1])
    assert torch.equal(state["l.fc2.bias"], torch.full((3,), 2.0))
    assert report.from_experts["l.fc1.weight"] == "l.moe.experts.w1[1].T"

    state, report = student_state_from_teacher(student, teacher, "none")
    assert report.from_experts == {} and torch.equal(state["l.fc1.weight"], torch.zeros(4, 3))
    with pytest.raises(ValueError, match="out of range"):
        student_state_from_teacher(student, teacher, "expert", expert=2)


@pytest.mark.parametrize(
    "teacher_args",
    [
        ("model.arch=switch_transformer_demo", "model.moe.num_experts=4", "model.moe.freq=1"),
        (
            "model.arch=thor_transformer_demo",
            "model.moe.num_experts=3",
            "train.criterion=thor_label_smoothed_cross_entropy",
        ),
    ],  # fmt: skip
    ids=["switch", "thor"],
)
@pytest.mark.parametrize("moe_init", ["mean", "expert"])
def test_moe_teacher_into_a_dense_student(prepped_demo, teacher_args, moe_init):
    _, teacher_model, _ = build(prepped_demo, *teacher_args, seed=1)
    _, student_model, _ = build(prepped_demo, DENSE, "train.criterion=label_smoothed_cross_entropy",
                                seed=2)  # fmt: skip
    teacher, student = teacher_model.state_dict(), student_model.state_dict()
    state, report = student_state_from_teacher(student, teacher, moe_init, expert=1)

    # Every student tensor is accounted for once; the report says exactly what changed.
    names = [*report.copied, *report.from_experts, *report.kept]
    assert sorted(names) == sorted(student)
    # equal_nan: fairseq's sinusoidal positions keep an uninitialised one-element buffer
    # (``_float_tensor``), which may hold NaN; copied, it is NaN on both sides.
    for name in report.copied:
        assert _identical(state[name], teacher[name]), name
    for name in report.kept:
        assert _identical(state[name], student[name]), name
    assert report.from_experts  # the MoE layers' FFNs
    for name, source in report.from_experts.items():
        layer, leaf = name.rsplit(".fc", 1)
        bank = teacher[f"{layer}.moe.experts.{'w' if 'weight' in leaf else 'b'}{leaf[0]}"]
        value = bank[1] if moe_init == "expert" else bank.mean(0)
        assert torch.allclose(state[name], value.t() if "weight" in leaf else value, atol=1e-7)
        assert source.startswith(f"{layer}.moe.experts.")
    # Attention, embeddings and layer norms are copied; no router has a student counterpart.
    for part in ("self_attn.k_proj.weight", "self_attn_layer_norm.weight", "embed_tokens"):
        assert any(part in name for name in report.copied)
    assert not any("router" in name for name in state)
    student_model.load_state_dict(state, strict=True)


def test_student_of_another_width_keeps_mismatched_tensors(prepped_demo):
    _, teacher_model, _ = build(prepped_demo, DENSE, seed=1)
    _, student_model, _ = build(prepped_demo, DENSE, "model.ffn_embed_dim=64", seed=2)
    teacher, student = teacher_model.state_dict(), student_model.state_dict()
    state, report = student_state_from_teacher(student, teacher)
    ffn = {n for n in student if ".fc1." in n or ".fc2.weight" in n}
    assert ffn and ffn <= set(report.kept)
    assert all(torch.equal(state[n], student[n]) for n in report.kept)
    assert "encoder.layers.0.self_attn.q_proj.weight" in report.copied


def _identical(a, b) -> bool:
    """Equal element for element, NaN equal to NaN."""
    if not a.is_floating_point():
        return torch.equal(a, b)
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
