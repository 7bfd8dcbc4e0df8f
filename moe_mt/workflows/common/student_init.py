"""Student initialisation from a teacher's non-expert weights (Switch Transformer §5.3).

The student is a dense model; the teacher a dense or MoE model of the same family of layers.
Every student tensor whose name and shape the teacher has too is copied (embeddings, attention,
layer norms, dense FFNs, output projection). A student FFN whose layer is an MoE layer in the
teacher (``<layer>.moe.experts.{w1,b1,w2,b2}``, weights ``[e, d, f]`` / ``[e, f, d]``) takes
one expert (``moe_init="expert"``, expert ``expert``) or the element-wise mean of the experts
(``moe_init="mean"``), transposed into ``nn.Linear``'s ``[out, in]`` layout:

    fc1.weight = w1[e].T    fc1.bias = b1[e]    fc2.weight = w2[e].T    fc2.bias = b2[e]

Nothing else is copied: routers have no student counterpart, and a tensor whose shape differs
(another width, another vocabulary) keeps the student's own initialisation. The returned
:class:`~moe_mt.workflows.common.model_init.InitReport` lists exactly what was copied, from
where, and what was not. The copying and the report are the shared ones of
:mod:`moe_mt.workflows.common.model_init` (sparse upcycling runs the other direction).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import torch
from torch import Tensor

from moe_mt.workflows.common.model_init import (
    FROM_EXPERTS,
    InitReport,
    Source,
    init_state,
    same_name_rule,
)

MOE_INITS = ("mean", "expert", "none")
#: student FFN tensor -> (teacher expert-bank tensor, transpose to nn.Linear's [out, in])
EXPERT_SOURCES = {
    "fc1.weight": ("moe.experts.w1", True),
    "fc1.bias": ("moe.experts.b1", False),
    "fc2.weight": ("moe.experts.w2", True),
    "fc2.bias": ("moe.experts.b2", False),
    # a GLU FFN (moe_mt.models.glu.GLUProjection): the gate w1 and the up projection w3
    "fc1.w1.weight": ("moe.experts.w1", True),
    "fc1.w1.bias": ("moe.experts.b1", False),
    "fc1.w3.weight": ("moe.experts.w3", True),
    "fc1.w3.bias": ("moe.experts.b3", False),
}

__all__ = ["MOE_INITS", "InitReport", "expert_tensor", "student_state_from_teacher"]


def expert_tensor(bank: Tensor, moe_init: str, expert: int, transpose: bool) -> Tensor:
    """One expert's slice ``bank[expert]`` or the mean over experts, as a student tensor.

    Args:
        bank: ``[e, ...]`` expert weights or biases.
    """
    if moe_init == "expert":
        if not 0 <= expert < bank.shape[0]:
            raise ValueError(f"expert {expert} out of range: the teacher has {bank.shape[0]}")
        value = bank[expert]
    else:
        value = bank.to(torch.float64).mean(dim=0).to(bank.dtype)
    return value.t() if transpose else value


def student_state_from_teacher(
    student: Mapping[str, Tensor],
    teacher: Mapping[str, Tensor],
    moe_init: str = "mean",
    expert: int = 0,
) -> tuple[dict[str, Tensor], InitReport]:
    """The student's state dict with the teacher's tensors copied in where they fit.

    Args:
        student: the student's freshly initialised state dict (names and shapes are the target).
        teacher: the teacher's state dict (a checkpoint's ``model``).
        moe_init: ``mean`` | ``expert`` | ``none`` (do not take FFNs from experts).
        expert: the expert of ``moe_init="expert"``.

    Returns:
        ``(state, report)``: a new dict (student tensors not copied are the student's own).
    """
    if moe_init not in MOE_INITS:
        raise ValueError(f"moe_init={moe_init!r}: expected one of {MOE_INITS}")
    rule = partial(_teacher_rule, moe_init=moe_init, expert=expert)
    return init_state(student, teacher, rule, source_name="teacher")


def _teacher_rule(name: str, teacher: Mapping[str, Tensor], moe_init: str, expert: int) -> Source:
    """The teacher's counterpart of the student tensor ``name``."""
    if name in teacher:
        return same_name_rule(name, teacher)
    layer, _, leaf = name.rpartition(".fc")
    leaf = "fc" + leaf
    if layer and leaf in EXPERT_SOURCES:
        bank_name, transpose = EXPERT_SOURCES[leaf]
        bank_key = f"{layer}.{bank_name}"
        if bank_key in teacher:
            if moe_init == "none":
                return Source(None, f"teacher has experts {bank_key} (distill.moe_init=none)")
            which = f"[{expert}]" if moe_init == "expert" else " mean over experts"
            t = ".T" if transpose else ""
            tensor = expert_tensor(teacher[bank_key], moe_init, expert, transpose)
            return Source(tensor, f"{bank_key}{which}{t}", FROM_EXPERTS)
    return Source(None, "no teacher tensor of that name")
