"""The MoE feed-forward layer: router -> dispatch (capacity) -> expert bank -> combine.

Axes: ``t`` flat tokens (pads included), ``n`` positions, ``b`` sentences, ``d`` model width,
``o`` output width, ``e`` experts, ``k`` choices per token.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from moe_mt.moe.balance import (
    BALANCE_SCOPES,
    GlobalBatchLoad,
    expert_load,
    global_batch_balance_loss,
    sequence_balance_loss,
)
from moe_mt.moe.conventions import RoutingConventions, fairseq_capacity, renormalize_kept
from moe_mt.moe.conventions import apply_routing_conventions as _apply_conventions
from moe_mt.moe.dispatch import (
    DispatchPlan,
    combine,
    dispatch,
    expert_capacity,
    plan_dispatch,
    plan_dispatch_static,
)
from moe_mt.moe.eom import expert_output_mask
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


PLANS = ("auto", "static", "dynamic")
LAYOUTS = ("auto", "groups", "slots")
# Rows per expert group of the static plan on CUDA: a multiple of 16, as torchtitan pads its
# groups for the grouped GEMM's tiles; elsewhere no padding.
CUDA_GROUP_ALIGN = 16


class MoEFeedForward(nn.Module):
    """Sparse MoE replacement of a transformer FFN.

    Args:
        router: any :class:`~moe_mt.moe.routing.Router` (top-k, cosine, random).
        experts: the :class:`~moe_mt.moe.experts.ExpertBank`; its ``num_experts`` must match.
        capacity_factor: training capacity factor; capacity per expert is
            ``ceil(factor * k * T / E)`` over the ``T`` non-pad tokens. ``None`` = no dropping.
        eval_capacity_factor: the same in eval mode; default ``None`` (keep every token).
        conventions: :class:`~moe_mt.moe.conventions.RoutingConventions` (reference conventions
            of the balance loss, top-k weights, second expert and capacity); default moemt's.
        eom: Expert Output Masking probability (:mod:`moe_mt.moe.eom`); 0 disables it.
        dispatch_plan: ``"auto"`` (default: ``"static"`` on CUDA, ``"dynamic"`` elsewhere),
            ``"static"`` (:func:`~moe_mt.moe.dispatch.plan_dispatch_static`: fixed shapes,
            capacity as a mask, no host synchronisation; what a GPU and
            ``torch.compile(fullgraph=True)`` need) or
            ``"dynamic"`` (:func:`~moe_mt.moe.dispatch.plan_dispatch`: only the kept rows; the
            faster on the CPU). Both keep the same assignments and give the same output.
        static_layout: the static plan's expert layout: ``"groups"`` (contiguous groups for
            one grouped GEMM per weight over device-side offsets), ``"slots"`` (an
            ``[e, C, d]`` buffer per capacity ``C`` for ``bmm``, where there is a capacity: in
            eval without one, groups) or ``"auto"``
            (default: groups where the bank's grouped GEMM takes the dtype, bf16 on CUDA, else
            slots when there is a capacity, else groups).
        balance_scope: over what the ``"balance"`` loss counts (:mod:`moe_mt.moe.balance`):
            ``"micro_batch"`` (default: Switch's loss over the layer's batch), ``"sequence"``
            (DeepSeek-V3's sequence-wise loss) or ``"global_batch"`` (Qiu et al. 2025: the
            frequencies of the whole update, every micro-batch and data-parallel rank; in eval
            mode the micro-batch's).

    Dropped assignments contribute zero output (the residual around the layer carries the
    token); see :mod:`moe_mt.moe.dispatch` for the token priority rule.
    """

    def __init__(
        self,
        router: Router,
        experts: ExpertBank,
        capacity_factor: float | None = 1.25,
        eval_capacity_factor: float | None = None,
        conventions: RoutingConventions | None = None,
        eom: float = 0.0,
        dispatch_plan: str = "auto",
        static_layout: str = "auto",
        balance_scope: str = "micro_batch",
    ) -> None:
        super().__init__()
        # A shard of an expert-parallel bank holds fewer experts than the layer routes to.
        num_experts = getattr(experts, "num_global_experts", experts.num_experts)
        if router.num_experts != num_experts:
            raise ValueError(f"router has {router.num_experts} experts, bank {num_experts}")
        self.router, self.experts = router, experts
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.conventions = conventions or RoutingConventions()
        self.conventions.check(router.k)
        if self.conventions.changes_routing and not router.takes_conventions():
            raise ValueError(
                f"the reference conventions {self.conventions} rebuild softmax top-k weights, "
                f"which {type(router).__name__} does not compute with these options (expert "
                "choice; sigmoid scores, a route scale, bias balancing or no renormalisation)"
            )
        if balance_scope not in BALANCE_SCOPES:
            raise ValueError(f"unknown balance_scope {balance_scope!r}; known: {BALANCE_SCOPES}")
        self.balance_scope = balance_scope
        self.global_load = GlobalBatchLoad(num_experts) if balance_scope == "global_batch" else None
        self.eom = eom
        if dispatch_plan not in PLANS:
            raise ValueError(f"unknown dispatch_plan {dispatch_plan!r}; known: {PLANS}")
        self.dispatch_plan = dispatch_plan
        if static_layout not in LAYOUTS:
            raise ValueError(f"unknown static_layout {static_layout!r}; known: {LAYOUTS}")
        self.static_layout = static_layout

    @property
    def num_experts(self) -> int:
        return getattr(self.experts, "num_global_experts", self.experts.num_experts)

    def capacity(
        self, num_tokens: int | Tensor, k: int, total_tokens: int | None = None
    ) -> int | Tensor | None:
        """Per-expert capacity for ``num_tokens`` non-pad tokens (an int, or a scalar tensor on
        the device for the static plan; ``total_tokens`` with pads, which fairseq's formula
        counts) in the current mode."""
        if self.conventions.capacity_formula == "fairseq":
            return fairseq_capacity(
                num_tokens if total_tokens is None else total_tokens, self.num_experts, k,
                self.capacity_factor, self.conventions.eval_capacity_token_fraction,
                self.training,
            )  # fmt: skip
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        return expert_capacity(num_tokens, self.num_experts, k, factor)

    def route(self, x: Tensor, pad_mask: Tensor | None, sentence_index: Tensor | None) -> Routing:
        """The router's decision under this layer's conventions."""
        routing = self.router(x, pad_mask, sentence_index=sentence_index)
        generator = getattr(self.router, "generator", None)
        routing = _apply_conventions(routing, self.conventions, pad_mask, generator)
        if self.balance_scope != "micro_batch" and "balance" in routing.aux_losses:
            balance = self.scoped_balance_loss(routing, pad_mask, sentence_index)
            routing.aux_losses = {**routing.aux_losses, "balance": balance}
        return routing

    def scoped_balance_loss(
        self, routing: Routing, pad_mask: Tensor | None, sentence_index: Tensor | None
    ) -> Tensor:
        """The ``"balance"`` loss over ``balance_scope``, counting the choices the conventions
        count (``balance_choices``)."""
        first = self.conventions.balance_choices == "first"
        counted = routing.expert_index[:, :1] if first else routing.expert_index
        if self.balance_scope == "sequence":
            if sentence_index is None:
                raise ValueError("balance_scope=sequence needs the tokens' sentence_index")
            return sequence_balance_loss(routing.probs, counted, sentence_index, pad_mask)
        if not self.training:  # validation batches are no update's micro-batches
            return routing.aux_losses["balance"]
        load = self.global_load.add(expert_load(counted, self.num_experts, pad_mask))
        return global_batch_balance_loss(routing.probs, load, pad_mask)

    def uses_static_plan(self, x: Tensor) -> bool:
        """Whether ``x`` takes the static plan (``dispatch_plan``, by device under ``auto``)."""
        return self.dispatch_plan == "static" or (self.dispatch_plan == "auto" and x.is_cuda)

    def plan_dispatch(self, routing: Routing, pad_mask: Tensor | None, x: Tensor) -> DispatchPlan:
        """Where each assignment goes, with this layer's capacity (static or dynamic plan)."""
        t, k, skip = routing.expert_index.shape[0], routing.k, routing.skip_mask(pad_mask)
        if self.uses_static_plan(x):
            # The non-pad count stays on the device: capacity becomes a mask, not a shape.
            num_real = t if pad_mask is None else (~pad_mask).sum()
            align = CUDA_GROUP_ALIGN if x.is_cuda else 1
            capacity = self.capacity(num_real, k, t)
            slots = self.static_slots(x, k)
            index = routing.expert_index
            return plan_dispatch_static(index, self.num_experts, capacity, skip, align, slots)
        num_real = t if pad_mask is None else t - int(pad_mask.sum())
        capacity = self.capacity(num_real, k, t)
        return plan_dispatch(routing.expert_index, self.num_experts, capacity, skip)

    def static_slots(self, x: Tensor, k: int) -> int | None:
        """Rows per expert of the static plan's fixed-slot layout, ``None`` for groups.

        The slots hold the capacity of a batch without pads (a host integer, at least the
        capacity counted on the device) and at most every token.
        """
        t = x.shape[0]
        bound = self.capacity(t, k, t)
        if self.static_layout == "groups" or bound is None:  # no capacity, no slots
            return None
        if self.static_layout == "auto" and self.experts.grouped_gemm_runs(x):
            return None
        return min(bound, t)

    def combine_weight(self, routing: Routing, plan: DispatchPlan) -> Tensor:
        """``[t, k]`` weights of the kept outputs: renormalised over the kept choices with
        ``renormalize=after`` (k > 1), then Expert Output Masking."""
        weight = routing.combine_weight
        if self.conventions.renormalize == "after" and routing.k > 1:
            weight = renormalize_kept(weight, plan.kept)
        return expert_output_mask(weight, self.eom, self.training)

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
        routing = self.route(x, pad_mask, sentence_index)
        plan = self.plan_dispatch(routing, pad_mask, x)
        rows = dispatch(x, plan)
        if plan.slots is not None:
            grouped = self.experts.forward_slots(rows, plan.slots)
        else:
            grouped = self.experts(rows, plan.rows_per_group)
        y = combine(grouped, plan, self.combine_weight(routing, plan), t)
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
        out = self.forward(flat, flat_mask, sentence_index_tbd(n, b))
        out.y = unflatten_tbd(out.y, n, b)
        return out
