"""Top-k router: softmax scores (Switch for k = 1, GShard-style for k = 2) or sigmoid scores
(DeepSeek-V3, Llama 4), optionally with auxiliary-loss-free bias balancing.

Axes: ``t`` tokens, ``d`` model width, ``e`` experts, ``k`` choices per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from moe_mt.moe.balance import BiasBalancer
from moe_mt.moe.batch_scope import draw_window
from moe_mt.moe.routing import (
    SCORE_FUNCS,
    Router,
    Routing,
    linear_gate,
    route_top_k,
    router_dtype,
)


class TopKRouter(Router):
    """Linear gate ``logits = x W`` (no bias), scores and top-k
    (:func:`~moe_mt.moe.routing.route_top_k`).

    Args:
        d_model: input width ``d``.
        num_experts: ``e``.
        k: experts per token.
        jitter: multiplicative input noise in training, ``x * U(1 - jitter, 1 + jitter)``
            (Switch §2.4); 0 disables it.
        init_scale: weights drawn from a truncated normal with std ``sqrt(init_scale / d)``
            (Switch §2.4 uses a 10x smaller scale than usual, 0.1).
        normalize_top_k: renormalise the top-k weights to sum to 1 when ``k > 1``.
        score_func: ``"softmax"`` over experts or ``"sigmoid"`` per expert.
        route_scale: factor on the combine weights (DeepSeek-V3's routed scaling factor).
        bias_update_rate: ``u`` > 0 turns on auxiliary-loss-free balancing
            (:class:`~moe_mt.moe.balance.BiasBalancer`, ``self.balancer``): a per-expert bias on
            the scores for selection, updated by ``u * sign(mean_load - load_i)`` per update.

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
        score_func: str = "softmax",
        route_scale: float = 1.0,
        bias_update_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"k={k} must be in [1, num_experts={num_experts}]")
        if score_func not in SCORE_FUNCS:
            raise ValueError(f"unknown score_func {score_func!r}; known: {SCORE_FUNCS}")
        self.num_experts, self.k = num_experts, k
        self.jitter, self.normalize_top_k = jitter, normalize_top_k
        self.score_func, self.route_scale = score_func, route_scale
        self.balancer = BiasBalancer(num_experts, bias_update_rate) if bias_update_rate else None
        self.weight = linear_gate(d_model, num_experts, init_scale)

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
        bias = None if self.balancer is None else self.balancer.bias
        with torch.autocast(device_type=x.device.type, enabled=False):
            routing = route_top_k(
                logits, self.k, pad_mask, self.normalize_top_k, self.score_func, bias,
                self.route_scale,
            )  # fmt: skip
        if self.balancer is not None and self.training:
            self.balancer.record(routing.expert_index, pad_mask)
        return routing

    def takes_conventions(self) -> bool:
        """The conventions rebuild the weights from softmax probabilities over unbiased choices:
        only for the plain softmax gate."""
        plain = self.score_func == "softmax" and self.route_scale == 1.0
        return plain and self.normalize_top_k and self.balancer is None
