"""Per-layer routing statistics, the same for every method.

Axes: ``t`` tokens, ``e`` experts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class MoEStats:
    """Statistics of one MoE layer on one batch (all detached).

    Attributes:
        tokens_per_expert: ``[e]`` float, token assignments each expert processed (after capacity).
        fraction_dropped: scalar, share of the non-pad assignments dropped by capacity.
        activation_rate: scalar, share of experts that received at least one token in this batch
            (``mean_e [tokens_per_expert_e > 0]``); 1.0 means every expert was used.
        router_entropy: scalar, mean over non-pad tokens of the entropy (nats) of the router's
            distribution over experts; ``log E`` for a uniform router, 0 for a one-hot one. NaN for
            routers without a distribution.
    """

    tokens_per_expert: Tensor
    fraction_dropped: Tensor
    activation_rate: Tensor
    router_entropy: Tensor

    def as_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def router_entropy(probs: Tensor, pad_mask: Tensor | None = None) -> Tensor:
    """Mean entropy (nats) of ``probs`` ``[t, e]`` (distribution over ``e``) over non-pad tokens."""
    probs = probs.detach()
    ent = -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()).sum(-1)
    if pad_mask is None:
        return ent.mean()
    w = (~pad_mask).to(ent.dtype)
    return (ent * w).sum() / w.sum().clamp_min(1.0)


def dispatch_stats(
    counts: Tensor, num_assignments: Tensor, entropy: Tensor | None = None
) -> MoEStats:
    """Build :class:`MoEStats` from the kept ``counts`` ``[e]`` and the non-pad assignment count."""
    counts = counts.detach().float()
    total = num_assignments.detach().float()
    dropped = (total - counts.sum()) / total.clamp_min(1.0)
    entropy = torch.tensor(float("nan")) if entropy is None else entropy.detach().float()
    return MoEStats(
        tokens_per_expert=counts,
        fraction_dropped=dropped,
        activation_rate=(counts > 0).float().mean(),
        router_entropy=entropy,
    )


def mean_stats(per_layer: Sequence[MoEStats]) -> MoEStats:
    """Average statistics over layers (element-wise; ``tokens_per_expert`` needs equal ``e``)."""
    return MoEStats(
        **{
            f.name: torch.stack([getattr(s, f.name) for s in per_layer]).mean(0)
            for f in fields(MoEStats)
        }
    )
