"""Expert-choice routing (Zhou et al., NeurIPS 2022, "Mixture-of-Experts with Expert Choice
Routing", arXiv 2202.09368): each expert picks its tokens, instead of each token its experts.

The method, §3.1 of the paper, on ``n`` tokens, ``e`` experts and a capacity factor ``c``:

- ``k = n c / e``: every expert takes the same number of tokens (its capacity; we call it ``C``,
  the paper ``k``), so that on average each token uses ``c`` experts;
- ``S = Softmax(X W_g)``, ``[n, e]``, a softmax over the experts;
- ``G, I = TopK(S^T, k)``, ``P = Onehot(I)``: expert ``i`` takes the ``k`` tokens with the
  highest ``S[:, i]``; the gating weight of a chosen (token, expert) pair is ``S[token, i]``;
- ``X_out[l] = sum_{i, j} P[i, j, l] G[i, j] X_e[i, j]``: a token's output sums the outputs of
  the experts that chose it, each weighted by its score; a token may get 0 to ``e`` experts.

Load is balanced by construction, so there is no balance loss.

It runs on the token-choice pipeline unchanged (:mod:`moe_mt.moe.dispatch`): the decision is a
:class:`~moe_mt.moe.routing.Routing` with ``k = e`` columns, column ``i`` for expert ``i``
(``expert_index[t, i] = i``), ``active[t, i]`` whether expert ``i`` chose token ``t`` and
``combine_weight = S * active``; :meth:`~moe_mt.moe.routing.Routing.skip_mask` then keeps the
pairs not chosen out of the plan. The layer must not drop further: build
:class:`~moe_mt.moe.layer.MoEFeedForward` with ``capacity_factor=None`` (a layer factor of 1 or
more also never drops, since an expert holds at most every token) and the default
:class:`~moe_mt.moe.conventions.RoutingConventions`: the others are token-choice conventions
(they would renormalise the weights or add a balance loss), which
:meth:`ExpertChoiceRouter.takes_conventions` refuses.

Where moemt differs from the paper:

- ``C = min(ceil(c T / e), T)`` over the ``T`` non-pad tokens of the layer's flat batch (the
  paper: ``n c / e`` over the ``n`` tokens of a batch). Pads are never chosen and take no
  capacity.
- The router's z-loss (ST-MoE, :func:`~moe_mt.moe.losses.router_z_loss`) is reported as aux loss
  ``"z"``, so that a z-loss weight applies; the paper uses none.
- No cap on the experts per token (the paper's §3.2 variant, a linear program, is not here).

Ties are broken by token order: of the tokens tied at an expert's ``C``-th score, the earliest in
the flat order take the remaining places (``torch.topk`` itself does not say which of tied values
it returns, and backends differ). For fairseq's ``[n, b, d]`` input that order is the batch-major
one of :func:`~moe_mt.moe.routing.flatten_tbd`: sentence 0's positions, then sentence 1's, ...

Routing runs over the whole flat batch, so a token's output depends on the other sentences of
the batch (the paper's design: a translation depends on what it is batched with). That is why it
is encoder-only: in a causal decoder an expert would choose a token by comparing it with the
scores of later tokens (:data:`DECODER_REFUSAL`), the causality reason for which Soft MoE is
encoder-only here. For the same reason expert parallelism would need the global batch's top-``C``
per expert, which is not implemented (:data:`EXPERT_PARALLEL_REFUSAL`).

Cost of the shared pipeline with ``k = e``: the static plan
(:func:`~moe_mt.moe.dispatch.plan_dispatch_static`) sizes its grouped tensor by ``k t = e t``
rows, of which about ``c t`` hold tokens; the dynamic plan holds exactly the chosen pairs.

Axes: ``t`` flat tokens (pads included), ``d`` model width, ``e`` experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from moe_mt.moe.dispatch import expert_capacity
from moe_mt.moe.losses import router_z_loss
from moe_mt.moe.routing import Router, Routing, linear_gate, router_dtype
from moe_mt.moe.stats import router_entropy

DECODER_REFUSAL = (
    "expert-choice routing cannot sit in the decoder: each expert picks its top tokens over the "
    "whole batch, so a causal decoder's token would be routed by comparing it with later tokens' "
    "scores; use model.moe.sides=encoder"
)
EXPERT_PARALLEL_REFUSAL = (
    "expert-choice routing does not support expert parallelism: each expert picks its top "
    "tokens over the layer's global batch, which no rank holds (use model.expert_parallel_size=1)"
)


def expert_choice_capacity(
    num_tokens: int | Tensor, num_experts: int, capacity_factor: float
) -> int | Tensor:
    """Tokens per expert ``C = min(ceil(c T / e), T)`` for ``T = num_tokens`` (an int, or a
    scalar tensor counted on the device, then a scalar long tensor there)."""
    capacity = expert_capacity(num_tokens, num_experts, 1, capacity_factor)
    if isinstance(capacity, Tensor):
        return torch.minimum(capacity, num_tokens)
    return min(capacity, num_tokens)


def top_tokens_per_expert(scores: Tensor, capacity: Tensor, bound: int) -> Tensor:
    """``[t, e]`` bool: for each expert (column of ``scores`` ``[t, e]``), its ``capacity``
    highest-scoring tokens; of the tokens tied at the last place, the earliest rows.

    Args:
        scores: ``[t, e]``, ``-inf`` where a token may not be chosen (pads).
        capacity: scalar long tensor, at most the finite scores of a column (may stay on the
            device: nothing here reads it back).
        bound: a host integer with ``capacity <= bound <= t``, the ``torch.topk`` size.
    """
    t, e = scores.shape
    if bound == 0:
        return torch.zeros(t, e, dtype=torch.bool, device=scores.device)
    top = scores.topk(bound, dim=0).values  # [bound, e], highest first
    last = (capacity - 1).clamp_min(0).reshape(1, 1).expand(1, e)
    threshold = top.gather(0, last)  # [1, e]: each expert's capacity-th score
    above = scores > threshold
    tied = scores == threshold
    room = capacity - above.sum(dim=0, keepdim=True)  # places left for the tied tokens
    tie_rank = tied.cumsum(dim=0) - 1  # 0 for an expert's earliest tied token
    return (above | (tied & (tie_rank < room))) & (capacity > 0)


def tokens_without_expert(active: Tensor, pad_mask: Tensor | None = None) -> Tensor:
    """Detached scalar: share of the non-pad tokens that no expert chose (``active`` ``[t, e]``)."""
    real = torch.ones_like(active[:, 0]) if pad_mask is None else ~pad_mask
    unchosen = ~active.any(dim=1) & real
    return (unchosen.sum().float() / real.sum().clamp_min(1).float()).detach()


def route_expert_choice(
    logits: Tensor, capacity_factor: float, pad_mask: Tensor | None = None
) -> Routing:
    """Expert-choice routing from router logits ``[t, e]`` (call with autocast disabled, fp32
    or wider); see the module docstring.

    Returns:
        :class:`~moe_mt.moe.routing.Routing` with ``expert_index`` ``[t, e]`` (``arange(e)`` on
        every row), ``active`` ``[t, e]`` (expert chose token), ``combine_weight`` ``[t, e]``
        ``S * active``, ``probs`` ``S``; aux loss ``"z"``; stats ``"router_entropy"`` and
        ``"tokens_without_expert"``.
    """
    t, e = logits.shape
    probs = logits.softmax(dim=-1)  # S: normalises over experts e
    scores = probs.detach()
    num_real: int | Tensor = t
    if pad_mask is not None:
        scores = scores.masked_fill(pad_mask[:, None], float("-inf"))  # never chosen
        num_real = (~pad_mask).sum()
    capacity = expert_choice_capacity(num_real, e, capacity_factor)
    capacity = torch.as_tensor(capacity, dtype=torch.long, device=logits.device)
    bound = expert_choice_capacity(t, e, capacity_factor)  # host integer, from the shape alone
    active = top_tokens_per_expert(scores, capacity, bound)
    return Routing(
        expert_index=torch.arange(e, device=logits.device).expand(t, e),
        combine_weight=probs * active.to(probs.dtype),
        probs=probs,
        aux_losses={"z": router_z_loss(logits, pad_mask)},
        stats={
            "router_entropy": router_entropy(probs, pad_mask),
            "tokens_without_expert": tokens_without_expert(active, pad_mask),
        },
        active=active,
    )


class ExpertChoiceRouter(Router):
    """Linear gate ``logits = x W`` (no bias), softmax over experts, each expert its top-``C``
    tokens of the flat batch (see the module docstring).

    Args:
        d_model: input width ``d``.
        num_experts: ``e``.
        capacity_factor: ``c`` in ``(0, e]``, the mean number of experts per token (the paper
            uses 2, also 1 and 0.5).
        init_scale: weights drawn from a truncated normal with std ``sqrt(init_scale / d)``, as
            :class:`~moe_mt.moe.router_topk.TopKRouter`'s.

    ``k`` is ``e``: the :class:`~moe_mt.moe.routing.Routing` has a column per expert, most of
    them inactive. :meth:`choices_per_row` is the mean number of experts per token, ``c``.

    Numerics: the logits, softmax, choice and z-loss run in fp32 (or wider) with autocast
    disabled (selective precision, Switch §2.4).
    """

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        capacity_factor: float = 2.0,
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0 < capacity_factor <= num_experts:
            raise ValueError(
                f"capacity_factor={capacity_factor} must be in (0, num_experts={num_experts}]"
            )
        self.num_experts, self.k = num_experts, num_experts
        self.capacity_factor = float(capacity_factor)
        self.weight = linear_gate(d_model, num_experts, init_scale)

    def choices_per_row(self) -> float:
        """Mean experts per routed row, for FLOP counts: ``c`` (nominal; the rounding up of
        ``C`` adds less than ``e / T``)."""
        return self.capacity_factor

    def takes_conventions(self) -> bool:
        """No: the reference conventions rebuild token-choice top-k weights (renormalised per
        token) and a balance loss; expert choice has neither."""
        return False

    def logits(self, x: Tensor) -> Tensor:
        """``[t, e]`` router logits in fp32 or wider."""
        dtype = router_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(x.to(dtype), self.weight.to(dtype))

    def forward(
        self, x: Tensor, pad_mask: Tensor | None = None, sentence_index: Tensor | None = None
    ) -> Routing:
        """Route ``x`` ``[t, d]``; ``pad_mask`` ``[t]`` (True = pad): pads are never chosen and
        count in neither the capacity nor the z-loss. ``sentence_index`` is ignored."""
        logits = self.logits(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return route_expert_choice(logits, self.capacity_factor, pad_mask)
