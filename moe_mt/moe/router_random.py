"""Random assignment without a gate (THOR, Zuo et al. 2022): the pieces its layer needs.

Training draws one expert per batch, per sentence or per token, uniformly. Inference modes:
``"random"`` (draw, typically per sentence with a seeded generator), ``"fixed"`` (every token
to expert ``fixed_expert``) and ``"mean"`` (every token to all experts with weight ``1 / E``:
the average of all experts' outputs, through the same dispatch path, at ``E`` times the cost).
Axes: ``t`` tokens, ``e`` experts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from moe_mt.moe.batch_scope import draw_window, sentence_window
from moe_mt.moe.routing import Router, Routing, router_dtype

GRANULARITIES = ("batch", "sentence", "token")
MODES = ("random", "fixed", "mean")


class RandomRouter(Router):
    """Uniformly random expert assignment, with ``fixed`` and ``mean`` alternatives.

    Args:
        num_experts: ``e``.
        granularity: ``"batch"`` (one draw for all tokens), ``"sentence"`` (one per sentence,
            needs ``sentence_index``) or ``"token"``.
        mode: ``"random"``, ``"fixed"`` or ``"mean"`` (see the module docstring); an attribute,
            so inference can switch it.
        fixed_expert: the expert of ``"fixed"`` mode.
        seed: if given, draws come from a private generator seeded with it (advanced by every
            draw); otherwise from torch's global generator. ``forward(generator=...)`` overrides.

    ``k`` is 1, except in ``"mean"`` mode where it is ``e``. No auxiliary losses.
    """

    def __init__(
        self,
        num_experts: int,
        granularity: str = "batch",
        mode: str = "random",
        fixed_expert: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity {granularity!r} not in {GRANULARITIES}")
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} not in {MODES}")
        if not 0 <= fixed_expert < num_experts:
            raise ValueError(f"fixed_expert={fixed_expert} not in [0, {num_experts})")
        self.num_experts, self.granularity, self.mode = num_experts, granularity, mode
        self.fixed_expert = fixed_expert
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    @property
    def k(self) -> int:
        return self.num_experts if self.mode == "mean" else 1

    def draw(
        self,
        t: int,
        sentence_index: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``[t]`` long: uniformly drawn experts at this router's granularity (on the CPU).

        Under expert parallelism the draws are those of the layer's global batch (one draw
        for it; one per global sentence; one per global token) and this rank takes its part
        (:mod:`moe_mt.moe.batch_scope`), so that with a generator in the same state on every
        rank the experts are those of one process on the concatenated batch.
        """
        generator = generator if generator is not None else self.generator
        e = self.num_experts
        if self.granularity == "token":
            offset, total = draw_window(t)
            return torch.randint(e, (total,), generator=generator)[offset : offset + t]
        if self.granularity == "batch":
            return torch.randint(e, (1,), generator=generator).expand(t)
        if sentence_index is None:
            raise ValueError("granularity 'sentence' needs sentence_index [t]")
        offset, total = sentence_window(int(sentence_index.max()) + 1 if t else 0)
        per_sentence = torch.randint(e, (total,), generator=generator)
        return per_sentence[sentence_index.cpu() + offset]

    def forward(
        self,
        x: Tensor,
        pad_mask: Tensor | None = None,
        sentence_index: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Routing:
        """Assign the tokens of ``x`` ``[t, d]`` (only its length and device are used)."""
        t, e = x.shape[0], self.num_experts
        dtype = router_dtype(x)
        if self.mode == "mean":
            index = torch.arange(e, device=x.device).expand(t, e)
            weight = torch.full((t, e), 1.0 / e, dtype=dtype, device=x.device)
            entropy = math.log(e)
        else:
            if self.mode == "fixed":
                index = torch.full((t,), self.fixed_expert, dtype=torch.long, device=x.device)
                entropy = 0.0
            else:
                # Drawn on the CPU; a non-blocking copy does not make the GPU wait for the host.
                index = self.draw(t, sentence_index, generator).to(x.device, non_blocking=True)
                entropy = math.log(e)
            index = index.reshape(t, 1)
            weight = torch.ones(t, 1, dtype=dtype, device=x.device)
        if pad_mask is not None:
            weight = weight.masked_fill(pad_mask[:, None], 0.0)
        return Routing(
            expert_index=index,
            combine_weight=weight,
            stats={"router_entropy": torch.tensor(entropy)},
        )
