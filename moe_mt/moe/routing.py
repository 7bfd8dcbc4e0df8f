"""The routing decision every router returns, and token-layout helpers.

Axes: ``t`` tokens (flat, pads included), ``k`` experts chosen per token, ``e`` experts,
``d`` model width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from moe_mt.moe.losses import load_balance_loss, router_z_loss
from moe_mt.moe.stats import router_entropy


@dataclass
class Routing:
    """What a token-choice router decided for a flat batch of ``t`` tokens.

    Attributes:
        expert_index: ``[t, k]`` long, the experts chosen for each token, column 0 first.
            Rows of pad tokens are meaningless (dispatch ignores them).
        combine_weight: ``[t, k]`` float (at least fp32), the weight of each chosen expert's
            output; zero for pad tokens. Differentiable w.r.t. the router's parameters.
        probs: ``[t, e]`` router probabilities (softmax over ``e``) or ``None`` for routers
            without one; used for entropy statistics.
        aux_losses: named scalar auxiliary losses of this layer (e.g. ``"balance"``, ``"z"``),
            unweighted; coefficients are applied by :func:`~moe_mt.moe.losses.combine_aux_losses`.
        stats: named router statistics (detached scalars), e.g. ``"router_entropy"``.
        active: ``[t, k]`` bool, False where a choice was not made (GShard's ``random``
            second-expert policy, :mod:`moe_mt.moe.conventions`), or ``None``: every choice
            was made. An inactive choice takes no capacity and has combine weight 0.
    """

    expert_index: Tensor
    combine_weight: Tensor
    probs: Tensor | None = None
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)
    active: Tensor | None = None

    @property
    def k(self) -> int:
        return self.expert_index.shape[1]

    def skip_mask(self, pad_mask: Tensor | None) -> Tensor | None:
        """Assignments that take no capacity: ``pad_mask`` ``[t]`` itself when every choice
        was made, else ``[t, k]`` (pads or inactive choices), for
        :func:`~moe_mt.moe.dispatch.plan_dispatch`."""
        if self.active is None:
            return pad_mask
        skip = ~self.active
        return skip if pad_mask is None else skip | pad_mask[:, None]


def linear_gate(d_in: int, num_experts: int, init_scale: float) -> torch.nn.Parameter:
    """``[e, d]`` gate weights from a truncated normal with std ``sqrt(init_scale / d)``, cut at
    two std (Switch §2.4 uses a 10x smaller scale than usual, 0.1)."""
    weight = torch.nn.Parameter(torch.empty(num_experts, d_in))
    std = math.sqrt(init_scale / d_in)
    torch.nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
    return weight


def router_dtype(x: Tensor) -> torch.dtype:
    """At least fp32: router math is never in half precision (Switch §2.4, selective precision)."""
    return torch.promote_types(x.dtype, torch.float32)


def flatten_tbd(x: Tensor, padding_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """fairseq layout to flat tokens, sentence by sentence.

    Args:
        x: ``[n, b, d]`` (fairseq's time-major layer input).
        padding_mask: ``[b, n]`` bool, True = pad, or ``None``.

    Returns:
        ``([b * n, d], [b * n] bool or None)``; flat index ``j * n + i`` is position ``i`` of
        sentence ``j``. The flat order is the capacity priority (:mod:`moe_mt.moe.dispatch`), so
        it is the references' batch-major order (fairseq's MoE layer and tutel flatten
        ``[batch, length]``; Switch and GShard group consecutive tokens of ``[batch, length]``):
        when an expert overflows, it drops the tokens of the batch's last sentences, whatever
        their positions. Time-major order would drop the late positions of every sentence
        first, the end of every target and its EOS most of all, so that a model trained with
        capacity learns to predict those positions without the FFN, which evaluation (no
        capacity) then gives them: over-long, looping outputs of an unbalanced router.
    """
    n, b, d = x.shape
    flat = x.transpose(0, 1).reshape(b * n, d)
    flat_mask = None if padding_mask is None else padding_mask.reshape(b * n)
    return flat, flat_mask


def unflatten_tbd(y: Tensor, n: int, b: int) -> Tensor:
    """Flat ``[b * n, o]`` (the layout of :func:`flatten_tbd`) back to fairseq's ``[n, b, o]``."""
    return y.view(b, n, -1).transpose(0, 1)


def sentence_index_tbd(n: int, b: int, device: torch.device | None = None) -> Tensor:
    """``[b * n]`` long: sentence (batch column) of each flat token of :func:`flatten_tbd`.

    The layers build it on the CPU whatever their device: it follows from the shape alone, and
    the routers that use it draw on the CPU (THOR), so no value goes back from a GPU.
    """
    return torch.arange(b, device=device).repeat_interleave(n)


class Router(torch.nn.Module):
    """Base of token-choice routers: ``forward(x [t, d], pad_mask [t]) -> Routing``.

    Subclasses set ``num_experts`` and ``k``. ``sentence_index`` (``[t]`` long, the sentence of
    each flat token) is used by routers that decide per sentence and ignored by the others.
    """

    num_experts: int
    k: int

    def forward(
        self, x: Tensor, pad_mask: Tensor | None = None, sentence_index: Tensor | None = None
    ) -> Routing:
        raise NotImplementedError

    def macs_per_row(self) -> int:
        """Multiply-accumulates per routed row (token or sub-token), for model summaries: one
        per element of the router's weight matrices (a linear gate ``d E``; cosine ``d r + r
        E``; none for a router without weights). A router that computes otherwise overrides it.
        """
        return sum(p.numel() for p in self.parameters() if p.dim() == 2)

    def choices_per_row(self) -> float:
        """Experts one routed row uses on average (``k`` for token choice), for FLOP counts."""
        return float(self.k)

    def takes_conventions(self) -> bool:
        """Whether the reference conventions (:mod:`moe_mt.moe.conventions`), which rebuild the
        combine weights from the softmax ``probs``, may apply to this router's decision."""
        return True


SCORE_FUNCS = ("softmax", "sigmoid")


def route_top_k(
    logits: Tensor,
    k: int,
    pad_mask: Tensor | None = None,
    normalize_top_k: bool = True,
    score_func: str = "softmax",
    selection_bias: Tensor | None = None,
    scale: float = 1.0,
) -> Routing:
    """Top-k routing from router logits ``[t, e]`` (call with autocast disabled, fp32 or wider).

    Scores ``s = softmax(logits)`` over experts (Switch, GShard) or ``s = sigmoid(logits)`` per
    expert (DeepSeek-V3 eq. 15, Llama 4; torchtitan's default). The experts chosen are the top-k
    of ``s + selection_bias`` (auxiliary-loss-free balancing, :mod:`moe_mt.moe.balance`; the bias
    only selects), and their combine weights are the *unbiased* ``s`` of the chosen experts (the
    leak that transformers' PR #41647 removed, of gating with the biased scores, cannot happen
    here). With ``k > 1`` and ``normalize_top_k`` the weights are renormalised to sum to 1 per
    token, before capacity drops any (fairseq's ``--moe-normalize-gate-prob-before-dropping``;
    DeepSeek-V3 eq. 13 for sigmoid scores; fairseq's GShard default renormalises after dropping,
    over the kept choices). Then they are multiplied by ``scale`` (DeepSeek-V3's routed scaling
    factor, torchtitan's ``route_scale``).

    ``probs`` (entropy, balance loss, conventions) is ``s`` normalised over experts: the softmax
    itself, or DeepSeek-V3's ``s'_{i,t} = s_{i,t} / sum_j s_{j,t}`` (eq. 19) for sigmoid scores.
    Aux losses: ``"balance"`` (:func:`~moe_mt.moe.losses.load_balance_loss`) and ``"z"``
    (:func:`~moe_mt.moe.losses.router_z_loss`, on the logits whatever the score function), both
    over non-pad tokens.
    """
    if score_func == "softmax":
        scores = probs = logits.softmax(dim=-1)  # normalises over experts e
    elif score_func == "sigmoid":
        scores = torch.sigmoid(logits)
        probs = scores / scores.sum(dim=-1, keepdim=True)
    else:
        raise ValueError(f"unknown score_func {score_func!r}; known: {SCORE_FUNCS}")
    if selection_bias is None:
        top_p, top_i = scores.topk(k, dim=-1)
    else:
        top_i = (scores.detach() + selection_bias.to(scores.dtype)).topk(k, dim=-1).indices
        top_p = scores.gather(1, top_i)
    if k > 1 and normalize_top_k:
        top_p = top_p / top_p.sum(dim=-1, keepdim=True)
    if scale != 1.0:
        top_p = top_p * scale
    if pad_mask is not None:
        top_p = top_p.masked_fill(pad_mask[:, None], 0.0)
    return Routing(
        expert_index=top_i,
        combine_weight=top_p,
        probs=probs,
        aux_losses={
            "balance": load_balance_loss(probs, top_i, pad_mask),
            "z": router_z_loss(logits, pad_mask),
        },
        stats={"router_entropy": router_entropy(probs, pad_mask)},
    )
