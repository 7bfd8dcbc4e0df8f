"""Sort-based dispatch: token assignments grouped contiguously per expert, with capacity.

Axes: ``t`` tokens (flat, pads included), ``k`` choices per token, ``e`` experts, ``m`` kept
assignments (rows of the grouped tensor), ``d`` width.

Token priority under capacity: first choices before second choices (column 0 of
``expert_index`` before column 1, ...), and within the same choice, sequence order (lower flat
token index first). An expert keeps its first ``capacity`` assignments in that order; the others
are dropped and contribute zero output (the residual around the layer carries those tokens).
For fairseq's ``[n, b, d]`` input flattened by :func:`~moe_mt.moe.routing.flatten_tbd`, sequence
order visits position 0 of every sentence, then position 1, and so on.

The plan (a permutation plus per-expert counts) is separate from moving the data, so that expert
parallelism can exchange the per-expert groups between ranks with ``all_to_all`` unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def expert_capacity(
    num_tokens: int, num_experts: int, k: int, capacity_factor: float | None
) -> int | None:
    """``ceil(capacity_factor * k * T / E)`` with ``T`` non-pad tokens; ``None`` = no dropping.

    A factor of ``None`` or ``<= 0`` disables capacity (every assignment is kept).
    """
    if capacity_factor is None or capacity_factor <= 0:
        return None
    return math.ceil(capacity_factor * k * num_tokens / num_experts)


@dataclass
class DispatchPlan:
    """Where every kept assignment goes.

    Attributes:
        token_index: ``[m]`` long, flat token of each grouped row; rows are grouped by expert
            (expert 0 first) and, within an expert, in priority order.
        choice_index: ``[m]`` long, which column of ``expert_index`` each row came from.
        counts: ``[e]`` long, rows per expert (after capacity); sums to ``m``.
        kept: ``[t, k]`` bool, True where the assignment was dispatched (False for pads and drops).
        num_assignments: scalar long, non-pad assignments before capacity (``k`` per real token).
        capacity: the per-expert capacity used, or ``None``.
    """

    token_index: Tensor
    choice_index: Tensor
    counts: Tensor
    kept: Tensor
    num_assignments: Tensor
    capacity: int | None


def plan_dispatch(
    expert_index: Tensor,
    num_experts: int,
    capacity: int | None = None,
    pad_mask: Tensor | None = None,
) -> DispatchPlan:
    """Group the assignments of ``expert_index`` ``[t, k]`` by expert, applying ``capacity``.

    Pads (``pad_mask`` ``[t]`` True) get no row and take no capacity.
    """
    t, k = expert_index.shape
    # Choice-major order [k * t]: all first choices (in sequence order), then all second choices.
    flat_expert = expert_index.t().reshape(k * t)
    if pad_mask is not None:
        flat_expert = flat_expert.masked_fill(pad_mask.repeat(k), num_experts)  # pads sort last
    # A stable sort keeps the priority order inside each expert's group.
    sorted_expert, order = torch.sort(flat_expert, stable=True)
    counts_all = torch.bincount(flat_expert, minlength=num_experts + 1)
    starts = torch.cumsum(counts_all, 0) - counts_all
    keep_sorted = sorted_expert < num_experts
    if capacity is not None:
        rank = torch.arange(k * t, device=order.device) - starts[sorted_expert]
        keep_sorted &= rank < capacity
    selected = order[keep_sorted]
    counts = counts_all[:num_experts]
    if capacity is not None:
        counts = counts.clamp(max=capacity)
    kept = torch.zeros(k * t, dtype=torch.bool, device=order.device)
    kept[selected] = True
    return DispatchPlan(
        token_index=selected % t,
        choice_index=torch.div(selected, t, rounding_mode="floor"),
        counts=counts,
        kept=kept.view(k, t).t(),
        num_assignments=counts_all[:num_experts].sum(),
        capacity=capacity,
    )


def dispatch(x: Tensor, plan: DispatchPlan) -> Tensor:
    """Gather ``x`` ``[t, d]`` into the grouped layout ``[m, d]`` (contiguous per expert)."""
    return x.index_select(0, plan.token_index)


def combine(grouped: Tensor, plan: DispatchPlan, combine_weight: Tensor, num_tokens: int) -> Tensor:
    """Weight the grouped expert outputs ``[m, d]`` and sum them back per token: ``[t, d]``.

    ``combine_weight`` is ``[t, k]``; tokens with no kept assignment (pads, drops) get zeros.
    """
    k = combine_weight.shape[1]
    weight = combine_weight.reshape(-1).index_select(0, plan.token_index * k + plan.choice_index)
    out = grouped.new_zeros(num_tokens, grouped.shape[1])
    return out.index_add(0, plan.token_index, grouped * weight.to(grouped.dtype)[:, None])
