"""Soft MoE slot routing (Puigcerver et al. 2024, "From Sparse to Soft Mixtures of Experts").

Per sentence: each of the ``e * s`` slots is a softmax-weighted mixture of the sentence's tokens
(dispatch weights, softmax over tokens ``n``), each expert processes its ``s`` slots, and each
token's output is a softmax-weighted mixture of all slot outputs (combine weights, softmax over
slots ``e * s``). Inputs and slot parameters are L2-normalised, with a learnable scale (init 1),
as in §2.3 of the paper. Pads are masked out of both softmaxes and get zero output.
It mixes positions, so it is for encoders only (never a causal decoder).

Axes: ``b`` sentences, ``n`` tokens, ``d`` width, ``e`` experts, ``s`` slots per expert,
``o`` expert output width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_mt.moe.routing import router_dtype
from moe_mt.moe.stats import router_entropy


@dataclass
class SoftRouting:
    """Soft slot routing of ``[b, n, d]`` tokens.

    Attributes:
        dispatch_weight: ``[b, n, e, s]``, sums to 1 over ``n`` (real tokens) for each slot.
        combine_weight: ``[b, n, e, s]``, sums to 1 over ``(e, s)`` for each real token; 0 on pads.
        aux_losses: empty (Soft MoE needs none); present for the common interface.
        stats: ``"router_entropy"``: mean entropy of the combine distribution over slots.
    """

    dispatch_weight: Tensor
    combine_weight: Tensor
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)


class SoftSlotRouter(nn.Module):
    """Slot router with parameters ``phi`` ``[e, s, d]`` and a learnable scale.

    Args:
        d_model: token width ``d``.
        num_experts: ``e``.
        slots_per_expert: ``s``.
    """

    def __init__(self, d_model: int, num_experts: int, slots_per_expert: int = 1) -> None:
        super().__init__()
        self.num_experts, self.slots_per_expert = num_experts, slots_per_expert
        self.slot_embed = nn.Parameter(torch.randn(num_experts, slots_per_expert, d_model))
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> SoftRouting:
        """Route ``x`` ``[b, n, d]`` with ``pad_mask`` ``[b, n]`` (True = pad)."""
        b, n, _ = x.shape
        e, s = self.num_experts, self.slots_per_expert
        dtype = router_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            tokens = F.normalize(x.to(dtype), dim=-1)
            slots = F.normalize(self.slot_embed.to(dtype), dim=-1)
            logits = torch.einsum("bnd,esd->bnes", tokens, slots) * self.scale.to(dtype)
            if pad_mask is not None:
                pad = pad_mask[:, :, None, None]
                logits_d = logits.masked_fill(pad, torch.finfo(dtype).min)
            else:
                logits_d = logits
            dispatch_w = logits_d.softmax(dim=1)  # normalises over the tokens n of a sentence
            combine_w = logits.reshape(b, n, e * s).softmax(dim=-1)  # normalises over slots e*s
            combine_w = combine_w.view(b, n, e, s)
            if pad_mask is not None:
                dispatch_w = dispatch_w.masked_fill(pad, 0.0)  # an all-pad sentence: no input
                combine_w = combine_w.masked_fill(pad, 0.0)
            flat_mask = None if pad_mask is None else pad_mask.reshape(b * n)
            entropy = router_entropy(combine_w.reshape(b * n, e * s), flat_mask)
        return SoftRouting(dispatch_w, combine_w, stats={"router_entropy": entropy})


def soft_dispatch(x: Tensor, routing: SoftRouting) -> Tensor:
    """Slots from tokens: ``x`` ``[b, n, d]`` -> ``[e * b * s, d]``, grouped per expert
    (``b * s`` rows each, ready for :class:`~moe_mt.moe.experts.ExpertBank` with those counts)."""
    w = routing.dispatch_weight.to(x.dtype)
    slots = torch.einsum("bnd,bnes->ebsd", x, w)
    return slots.reshape(-1, x.shape[-1])


def soft_combine(grouped: Tensor, routing: SoftRouting) -> Tensor:
    """Tokens from slot outputs: ``[e * b * s, o]`` -> ``[b, n, o]``."""
    b, n, e, s = routing.combine_weight.shape
    out = grouped.view(e, b, s, -1)
    return torch.einsum("ebso,bnes->bno", out, routing.combine_weight.to(grouped.dtype))


def soft_counts(routing: SoftRouting) -> list[int]:
    """Rows per expert of :func:`soft_dispatch`'s output: ``b * s`` for each of the ``e``."""
    b, _, e, s = routing.dispatch_weight.shape
    return [b * s] * e
