"""X-MoE cosine router: routing scores in a low-dimensional space (Chi et al. 2022, §3).

``s_e = cos(W x, e_e) / tau`` with a projection ``W`` ``[d_route, d]``, expert embeddings
``[e, d_route]`` and a learnable temperature ``tau``; then softmax over experts and top-k, as in
:class:`~moe_mt.moe.router_topk.TopKRouter`. Axes: ``t`` tokens, ``d`` model width, ``r`` routing
width, ``e`` experts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_mt.moe.routing import Router, Routing, route_top_k, router_dtype


class CosineRouter(Router):
    """Cosine-similarity top-k router in a ``d_route``-dimensional space.

    Args:
        d_model: input width ``d``.
        num_experts: ``e``.
        k: experts per token.
        d_route: routing width ``r`` (X-MoE: much smaller than ``d``, e.g. 16).
        init_temperature: initial ``tau``; it is learned as ``log(1 / tau)``.
        min_temperature: ``tau`` is clamped from below (scores stay bounded by ``1 / tau``).
        learn_temperature: make ``tau`` a trainable parameter.
        normalize_top_k: renormalise the top-k weights to sum to 1 when ``k > 1``.

    Numerics: projection, cosine and softmax run in fp32 (or wider) with autocast disabled.
    """

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        k: int = 1,
        d_route: int = 16,
        init_temperature: float = 0.07,
        min_temperature: float = 0.01,
        learn_temperature: bool = True,
        normalize_top_k: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"k={k} must be in [1, num_experts={num_experts}]")
        self.num_experts, self.k = num_experts, k
        self.normalize_top_k = normalize_top_k
        self.max_inv_temperature = 1.0 / min_temperature
        self.proj = nn.Parameter(torch.empty(d_route, d_model))
        nn.init.uniform_(self.proj, -1.0 / math.sqrt(d_model), 1.0 / math.sqrt(d_model))
        self.expert_embed = nn.Parameter(torch.empty(num_experts, d_route))
        nn.init.orthogonal_(self.expert_embed)
        log_inv_t = torch.tensor(math.log(1.0 / init_temperature))
        self.log_inv_temperature = nn.Parameter(log_inv_t, requires_grad=learn_temperature)

    def logits(self, x: Tensor) -> Tensor:
        """``[t, e]`` scores ``cos(W x, e_e) / tau`` in fp32 or wider."""
        dtype = router_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = F.normalize(F.linear(x.to(dtype), self.proj.to(dtype)), dim=-1)  # [t, r]
            experts = F.normalize(self.expert_embed.to(dtype), dim=-1)  # [e, r]
            inv_t = self.log_inv_temperature.to(dtype).exp().clamp(max=self.max_inv_temperature)
            return F.linear(h, experts) * inv_t

    def forward(
        self, x: Tensor, pad_mask: Tensor | None = None, sentence_index: Tensor | None = None
    ) -> Routing:
        """Route ``x`` ``[t, d]``; ``pad_mask`` ``[t]`` (True = pad) keeps pads out of losses."""
        logits = self.logits(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return route_top_k(logits, self.k, pad_mask, self.normalize_top_k)
