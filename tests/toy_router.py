"""A toy router, registered only when imported: hash routing, a fixed assignment that is never
learned (in the spirit of Roller et al. 2021, "Hash Layers For Large Sparse Models").

Roller et al. hash the token id; an MoE layer sees hidden states, so this router hashes the
state itself with random hyperplanes (locality-sensitive hashing): ``b = ceil(log2 E)`` fixed
directions ``R [d, b]`` (a buffer drawn from ``model.moe.hash_seed``), the bits ``x R > 0`` read
as a binary number, modulo ``E``. Top-1, combine weight 1, no auxiliary loss (nothing to
balance: the assignment is not trained). Its cost per token is the projection, ``d b``
multiply-accumulates, which :meth:`HashRouter.macs_per_row` reports (the router has no
parameters, so the default count, over weight matrices, would say 0).

It proves that a router is one module: its option, its builder and its FLOP count are all here,
and every family that takes ``model.moe.router`` accepts ``router=hash`` once it is imported
(``MOEMT_PLUGINS=tests.toy_router`` for a ``moemt`` subprocess).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from moe_mt.bounds import AT_LEAST_0
from moe_mt.models.families import OptionSpec, RouterKind, register_router
from moe_mt.moe.routing import Router, Routing

HASH_SEED = OptionSpec(
    "hash_seed", int, 0, "hash router: seed of its fixed hyperplanes", bound=AT_LEAST_0
)


class HashRouter(Router):
    """Top-1 expert ``(sum_i [x r_i > 0] 2^i) mod E`` for fixed random ``r_i``."""

    def __init__(self, d_model: int, num_experts: int, seed: int) -> None:
        super().__init__()
        self.num_experts, self.k = num_experts, 1
        bits = max(1, math.ceil(math.log2(num_experts)))
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("planes", torch.randn(d_model, bits, generator=generator))
        self.register_buffer("powers", 2 ** torch.arange(bits))

    def forward(
        self, x: Tensor, pad_mask: Tensor | None = None, sentence_index: Tensor | None = None
    ) -> Routing:
        bits = (x.detach().float() @ self.planes) > 0
        expert = (bits.long() * self.powers).sum(dim=-1) % self.num_experts
        weight = torch.ones(x.shape[0], 1, dtype=torch.float32, device=x.device)
        if pad_mask is not None:
            weight = weight.masked_fill(pad_mask[:, None], 0.0)
        return Routing(expert_index=expert[:, None], combine_weight=weight)

    def macs_per_row(self) -> int:
        return self.planes.numel()


def build_hash_router(d_in: int, options, cfg) -> HashRouter:
    if options.top_k != 1:
        raise ValueError(f"moe_top_k={options.top_k}: the hash router routes top-1 only")
    seed = getattr(cfg, "moe_hash_seed", None)
    return HashRouter(d_in, options.num_experts, HASH_SEED.default if seed is None else seed)


HASH = register_router(RouterKind("hash", build_hash_router, (HASH_SEED,)))
