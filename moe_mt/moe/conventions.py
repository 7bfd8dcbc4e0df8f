"""Reference conventions of top-k routing and capacity, as options (moemt's own are the default).

moemt's math equals the reference implementations wherever their conventions agree; where they
differ, a researcher comparing with published fairseq-MoE or GShard numbers selects the
reference's. :class:`RoutingConventions` holds the choice; :class:`~moe_mt.moe.MoEFeedForward`
applies it around any token-choice router with a probability distribution (top-k, cosine), so
that the routers themselves stay convention-free. Axes: ``t`` tokens, ``k`` choices, ``e``
experts.

=========================  =========  ====================================================
convention                 moemt      reference option
=========================  =========  ====================================================
``balance_choices``        ``all``    ``first``: the balance loss counts first choices only
                                      (GShard eq. 4; fairseq ``top2gating``'s ``ce`` over
                                      ``mask1``; torchscale)
``renormalize``            ``before`` ``after``: top-k weights renormalised over the choices
                                      kept by capacity (fairseq's default,
                                      ``normalize_gate_prob_before_dropping=False``)
``second_expert_policy``   ``all``    ``sampling``: the second expert is the argmax of the
                                      logits plus Gumbel noise, first excluded (GShard's
                                      sampled second expert; fairseq's default);
                                      ``random``: the deterministic second expert is kept with
                                      probability ``min(1, 2 p2)`` (fairseq's ``random``,
                                      GShard Algorithm 1's ``2 * g2 > U``)
``capacity_formula``       ``moemt``  ``fairseq``: ``int(cf * k * ceil(S / E))`` over all
                                      ``S`` tokens, pads counted; eval ``ceil(f * S)`` with
                                      ``f`` = ``eval_capacity_token_fraction`` when ``> 0``
=========================  =========  ====================================================

Differences from the references, where they remain:

- fairseq's top-2 gate has no capacity factor (``2 * ceil(S / E)``); ours is
  ``int(cf * 2 * ceil(S / E))``, the same at ``cf = 1``. A factor ``<= 0`` or null keeps
  meaning "no dropping" here (fairseq would compute a capacity of 0).
- fairseq's balance loss averages over all ``S`` tokens, pads included (``me`` counts the pads'
  probabilities, ``ce`` their zeroed masks); ours averages over non-pad tokens. Equal on batches
  without pads.
- Under expert parallelism the fairseq formula's ``S`` is the group's global batch (moemt's
  one-process semantics), not fairseq's per-rank count padded to the largest rank's; every
  convention gives there what one process gives on the concatenated batch
  (``tests/test_expert_parallel.py``).
- ``random`` with ``balance_choices=all`` counts the second choice in the balance loss before the
  random drop (the router's decision); fairseq always balances first choices only.
- Draws (Gumbel noise, the ``random`` coin) come from the router's generator when it has one
  (expert parallelism's shared draws, drawn for the global batch), else torch's global one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from moe_mt.moe.batch_scope import draw_window
from moe_mt.moe.losses import load_balance_loss
from moe_mt.moe.routing import Routing

BALANCE_CHOICES = ("all", "first")
RENORMALIZE = ("before", "after")
SECOND_EXPERT_POLICIES = ("all", "sampling", "random")
CAPACITY_FORMULAS = ("moemt", "fairseq")


@dataclass(frozen=True)
class RoutingConventions:
    """Which convention each step follows (see the module docstring's table)."""

    balance_choices: str = "all"
    renormalize: str = "before"
    second_expert_policy: str = "all"
    capacity_formula: str = "moemt"
    eval_capacity_token_fraction: float | None = None

    def check(self, k: int) -> None:
        """Raise ValueError naming the ``moe_<field>`` option that is invalid for ``k``."""
        for name, allowed in (
            ("balance_choices", BALANCE_CHOICES),
            ("renormalize", RENORMALIZE),
            ("second_expert_policy", SECOND_EXPERT_POLICIES),
            ("capacity_formula", CAPACITY_FORMULAS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"moe_{name}={getattr(self, name)!r}: expected one of {allowed}")
        if self.second_expert_policy != "all" and k != 2:
            raise ValueError(
                f"moe_second_expert_policy={self.second_expert_policy} needs moe_top_k=2 "
                f"(GShard's top-2), not {k}"
            )

    @property
    def changes_routing(self) -> bool:
        return (self.balance_choices, self.renormalize, self.second_expert_policy) != (
            "all",
            "before",
            "all",
        )


def fairseq_capacity(
    num_tokens: int,
    num_experts: int,
    k: int,
    capacity_factor: float | None,
    eval_token_fraction: float | None,
    training: bool,
) -> int | None:
    """fairseq's capacity (``top1gating`` / ``top2gating``) for ``S = num_tokens``, pads in.

    Training, and eval without a token fraction: ``int(cf * k * ceil(S / E))`` (``None`` when
    ``cf`` is null or ``<= 0``: no dropping). Eval with ``eval_token_fraction > 0``:
    ``ceil(fraction * S)``.
    """
    if not training and eval_token_fraction is not None and eval_token_fraction > 0:
        return math.ceil(eval_token_fraction * num_tokens)
    if capacity_factor is None or capacity_factor <= 0:
        return None
    return int(capacity_factor * k * math.ceil(num_tokens / num_experts))


def _uniform(t: int, width: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """``[t, width]`` U(0, 1) draws, drawn for the layer's global batch (expert parallelism)."""
    offset, total = draw_window(t)
    device = like.device if generator is None else generator.device
    u = torch.rand(total, width, dtype=like.dtype, device=device, generator=generator)
    return u[offset : offset + t].to(like.device)


def gumbel_second_choice(probs: Tensor, first: Tensor, generator=None) -> Tensor:
    """``[t]`` second experts: argmax over ``e != first`` of ``log p + Gumbel`` (GShard's sample).

    ``log p`` differs from the logits by a per-token constant, so the argmax is that of
    fairseq's ``logits + gumbel``.
    """
    u = _uniform(probs.shape[0], probs.shape[1], probs.detach(), generator)
    eps = torch.finfo(u.dtype).eps
    gumbel = -torch.log(-torch.log(u.clamp(eps, 1 - eps)))
    scores = probs.detach().clamp_min(torch.finfo(probs.dtype).tiny).log() + gumbel
    scores = scores.scatter(1, first[:, None], float("-inf"))
    return scores.argmax(dim=1)


def renormalize_kept(weight: Tensor, kept: Tensor) -> Tensor:
    """``[t, k]`` weights renormalised over the kept choices (fairseq's "after dropping").

    ``weight`` ``[t, k]`` are the raw chosen probabilities, ``kept`` ``[t, k]`` bool (capacity,
    pads, inactive choices). A token with nothing kept gets zeros.
    """
    w = weight * kept.to(weight.dtype)
    return w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).eps)


def apply_routing_conventions(
    routing: Routing,
    conventions: RoutingConventions,
    pad_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Routing:
    """``routing`` (from :func:`~moe_mt.moe.routing.route_top_k`) under ``conventions``.

    Rebuilds the combine weights from ``routing.probs`` (raw chosen probabilities; normalised
    over the ``k`` choices here with ``renormalize=before``, left raw for the layer to
    renormalise over the kept ones with ``after``), applies the second-expert policy, and
    recomputes the balance loss over the choices the convention counts. Routers without
    probabilities (random routing) and the default conventions pass through unchanged.
    """
    if not conventions.changes_routing or routing.probs is None:
        return routing
    probs, index = routing.probs, routing.expert_index
    k = index.shape[1]
    active = routing.active
    if conventions.second_expert_policy == "sampling":
        index = torch.stack([index[:, 0], gumbel_second_choice(probs, index[:, 0], generator)], 1)
    weight = probs.gather(1, index)
    if k > 1 and conventions.renormalize == "before":
        weight = weight / weight.sum(dim=1, keepdim=True)
    if conventions.second_expert_policy == "random":
        # GShard Algorithm 1 / fairseq: keep the second choice iff 2 * g2 > U (g2 normalised
        # when the weights are normalised before dropping, raw otherwise).
        u = _uniform(index.shape[0], 1, weight.detach(), generator)[:, 0]
        keep_second = 2 * weight[:, 1].detach() > u
        active = torch.stack([torch.ones_like(keep_second), keep_second], 1)
        if routing.active is not None:
            active = active & routing.active
    if active is not None:
        weight = weight * active.to(weight.dtype)
    if pad_mask is not None:
        weight = weight.masked_fill(pad_mask[:, None], 0.0)
    counted = index[:, :1] if conventions.balance_choices == "first" else index
    aux = {**routing.aux_losses, "balance": load_balance_loss(probs, counted, pad_mask)}
    return replace(
        routing, expert_index=index, combine_weight=weight, active=active, aux_losses=aux
    )
