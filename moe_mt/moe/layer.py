"""The MoE feed-forward layer: router -> dispatch (capacity) -> expert bank -> combine.

Axes: ``t`` flat tokens (pads included), ``n`` positions, ``b`` sentences, ``d`` model width,
``o`` output width, ``e`` experts, ``k`` choices per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moe_mt.moe.dispatch import DispatchPlan, combine, dispatch, expert_capacity, plan_dispatch
from moe_mt.moe.experts import ExpertBank
from moe_mt.moe.routing import (
    Router,
    Routing,
    flatten_tbd,
    sentence_index_tbd,
    unflatten_tbd,
)
from moe_mt.moe.stats import MoEStats, dispatch_stats


@dataclass
class MoEOutput:
    """Result of :class:`MoEFeedForward` (always this type, whatever the flags).

    Attributes:
        y: the layer output, shaped like the input (``[t, o]`` or ``[n, b, o]``); zero for pads
            and for tokens whose every assignment was dropped.
        aux_losses: the router's named, unweighted auxiliary losses (scalars).
        stats: :class:`~moe_mt.moe.stats.MoEStats` of this layer.
        routing: the router's decision.
        plan: the dispatch plan (what was kept, counts per expert).
    """

    y: Tensor
    aux_losses: dict[str, Tensor]
    stats: MoEStats
    routing: Routing
    plan: DispatchPlan


class MoEFeedForward(nn.Module):
    """Sparse MoE replacement of a transformer FFN.

    Args:
        router: any :class:`~moe_mt.moe.routing.Router` (top-k, cosine, random).
        experts: the :class:`~moe_mt.moe.experts.ExpertBank`; its ``num_experts`` must match.
        capacity_factor: training capacity factor; capacity per expert is
            ``ceil(factor * k * T / E)`` over the ``T`` non-pad tokens. ``None`` = no dropping.
        eval_capacity_factor: the same in eval mode; default ``None`` (keep every token).

    Dropped assignments contribute zero output (the residual around the layer carries the
    token); see :mod:`moe_mt.moe.dispatch` for the token priority rule.
    """

    def __init__(
        self,
        router: Router,
        experts: ExpertBank,
        capacity_factor: float | None = 1.25,
        eval_capacity_factor: float | None = None,
    ) -> None:
        super().__init__()
        # A shard of an expert-parallel bank holds fewer experts than the layer routes to.
        num_experts = getattr(experts, "num_global_experts", experts.num_experts)
        if router.num_experts != num_experts:
            raise ValueError(f"router has {router.num_experts} experts, bank {num_experts}")
        self.router, self.experts = router, experts
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor

    @property
    def num_experts(self) -> int:
        return getattr(self.experts, "num_global_experts", self.experts.num_experts)

    def capacity(self, num_tokens: int, k: int) -> int | None:
        """Per-expert capacity for ``num_tokens`` non-pad tokens in the current mode."""
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        return expert_capacity(num_tokens, self.num_experts, k, factor)

    def forward(
        self, x: Tensor, pad_mask: Tensor | None = None, sentence_index: Tensor | None = None
    ) -> MoEOutput:
        """Apply the layer to flat tokens.

        Args:
            x: ``[t, d]``.
            pad_mask: ``[t]`` bool, True = pad (zero output, no capacity, out of losses/stats).
            sentence_index: ``[t]`` long, sentence of each token (for per-sentence routers).

        Returns:
            :class:`MoEOutput` with ``y`` ``[t, o]``.
        """
        t = x.shape[0]
        routing = self.router(x, pad_mask, sentence_index=sentence_index)
        num_real = t if pad_mask is None else t - int(pad_mask.sum())
        plan = plan_dispatch(
            routing.expert_index, self.num_experts, self.capacity(num_real, routing.k), pad_mask
        )
        grouped = self.experts(dispatch(x, plan), plan.counts)
        y = combine(grouped, plan, routing.combine_weight, t)
        stats = dispatch_stats(
            plan.counts, plan.num_assignments, routing.stats.get("router_entropy")
        )
        return MoEOutput(
            y=y, aux_losses=routing.aux_losses, stats=stats, routing=routing, plan=plan
        )

    def forward_tbd(self, x: Tensor, padding_mask: Tensor | None = None) -> MoEOutput:
        """Apply the layer to fairseq's layout: ``x`` ``[n, b, d]``, ``padding_mask`` ``[b, n]``.

        Returns:
            :class:`MoEOutput` with ``y`` ``[n, b, o]``.
        """
        n, b, _ = x.shape
        flat, flat_mask = flatten_tbd(x, padding_mask)
        out = self.forward(flat, flat_mask, sentence_index_tbd(n, b, x.device))
        out.y = unflatten_tbd(out.y, n, b)
        return out


def dense_expert_mean(experts: ExpertBank, x: Tensor) -> Tensor:
    """Reference: mean of all experts' outputs on each row of ``x`` ``[t, d]`` -> ``[t, o]``."""
    return torch.stack([experts.forward_expert(x, e) for e in range(experts.num_experts)]).mean(0)
