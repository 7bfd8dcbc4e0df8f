"""Top-k softmax router (Switch for k = 1, GShard-style for k = 2).

Axes: ``t`` tokens, ``d`` model width, ``e`` experts, ``k`` choices per token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_mt.moe.batch_scope import draw_window
from moe_mt.moe.routing import Router, Routing, route_top_k, router_dtype


class TopKRouter(Router):
    """Linear gate ``logits = x W`` (no bias), softmax over experts, top-k.

    Args:
        d_model: input width ``d``.
        num_experts: ``e``.
        k: experts per token.
        jitter: multiplicative input noise in training, ``x * U(1 - jitter, 1 + jitter)``
            (Switch §2.4); 0 disables it.
        init_scale: weights drawn from a truncated normal with std ``sqrt(init_scale / d)``
            (Switch §2.4 uses a 10x smaller scale than usual, 0.1).
        normalize_top_k: renormalise the top-k weights to sum to 1 when ``k > 1``.

    Numerics: the logits, softmax and losses run in fp32 (or wider) with autocast disabled
    (selective precision, Switch §2.4).

    Jitter noise comes from ``generator`` when one is set (a CPU ``torch.Generator``; the
    models set a shared, per-update seeded one, :class:`~moe_mt.moe.expert_parallel.SharedDraws`),
    else from torch's global generator. Under expert parallelism the noise is drawn for the
    layer's whole global batch and this rank keeps its rows
    (:func:`~moe_mt.moe.batch_scope.draw_window`), as one process on that batch would draw it.
    """

    generator: torch.Generator | None = None

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        k: int = 1,
        jitter: float = 0.0,
        init_scale: float = 0.1,
        normalize_top_k: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"k={k} must be in [1, num_experts={num_experts}]")
        self.num_experts, self.k = num_experts, k
        self.jitter, self.normalize_top_k = jitter, normalize_top_k
        self.weight = nn.Parameter(torch.empty(num_experts, d_model))
        std = math.sqrt(init_scale / d_model)
        nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std)

    def logits(self, x: Tensor) -> Tensor:
        """``[t, e]`` router logits in fp32 or wider (jitter applied in training)."""
        dtype = router_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = x.to(dtype)
            if self.training and self.jitter > 0:
                h = h * self.jitter_noise(h)
            return F.linear(h, self.weight.to(dtype))

    def jitter_noise(self, h: Tensor) -> Tensor:
        """``[t, d]`` multiplicative noise ``U(1 - jitter, 1 + jitter)`` for ``h`` ``[t, d]``."""
        lo, hi = 1.0 - self.jitter, 1.0 + self.jitter
        t = h.shape[0]
        offset, total = draw_window(t)
        if self.generator is None and total == t:
            return torch.empty_like(h).uniform_(lo, hi)
        device = h.device if self.generator is None else self.generator.device
        noise = torch.empty(total, h.shape[1], dtype=h.dtype, device=device)
        noise.uniform_(lo, hi, generator=self.generator)
        return noise[offset : offset + t].to(h.device)

    def forward(
        self, x: Tensor, pad_mask: Tensor | None = None, sentence_index: Tensor | None = None
    ) -> Routing:
        """Route ``x`` ``[t, d]``; ``pad_mask`` ``[t]`` (True = pad) keeps pads out of losses."""
        logits = self.logits(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return route_top_k(logits, self.k, pad_mask, self.normalize_top_k)
