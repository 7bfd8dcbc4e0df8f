"""Shared experts beside the routed ones (DeepSeekMoE, Dai et al. 2024, arXiv 2401.06066, eq. 9;
Qwen2-MoE's ``shared_expert`` with its ``shared_expert_gate``).

Every token passes through ``N_s`` shared experts, and the routed block adds its experts::

    y = sum_{j <= N_s} FFN_j(x) + MoE(x)                 # DeepSeekMoE eq. 9 (without the residual)
    y = sigmoid(x w_g) * FFN_shared(x) + MoE(x)          # Qwen2-MoE, with the gate

The ``N_s`` shared experts are held as one FFN of ``N_s`` times an expert's width: a sum of FFNs
``sum_j W2_j act(W1_j x)`` is the FFN whose hidden units are all of theirs, so the two are the
same function class and cost (the biases ``b2`` of the ``N_s`` experts sum to one bias).

How this differs from CMR (:mod:`moe_mt.moe.cmr`, NLLB-MoE's Conditional MoE Routing): CMR mixes
one shared FFN and the MoE block *convexly*, ``(1 - g) FFN(x) + g MoE(x)``, with dropout on the
gate, so a token can turn the experts off; shared experts *add* the shared FFN to the routed
output, gated (Qwen2) or not (DeepSeekMoE), and every token always receives its routed
experts. The two are not combined.

Axes: ``t`` flat tokens, ``d`` model width, ``f`` hidden width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_mt.moe.experts import ExpertBank
from moe_mt.moe.layer import MoEFeedForward, MoEOutput
from moe_mt.moe.routing import router_dtype


class SharedExpertMoE(nn.Module):
    """``y = [sigmoid(x w_g)] * FFN_shared(x) + MoE(x)`` (module docstring).

    Args:
        moe: the routed block (router, experts, capacity, conventions unchanged).
        shared: the shared experts as one :class:`~moe_mt.moe.ExpertBank` with one expert of
            ``N_s`` times the routed experts' width.
        gate: add Qwen2-MoE's per-token sigmoid gate ``Linear(d, 1, bias=False)`` on the shared
            branch (computed in fp32, as the routers); its mean over non-pad tokens is reported
            as aux ``"shared_gate"`` (logged, not optimised).
    """

    def __init__(self, moe: MoEFeedForward, shared: ExpertBank, gate: bool = False) -> None:
        super().__init__()
        if shared.num_experts != 1:
            raise ValueError(f"the shared experts are one FFN, not a bank of {shared.num_experts}")
        self.moe, self.shared = moe, shared
        self.gate = nn.Linear(shared.d_model, 1, bias=False) if gate else None

    @property
    def num_experts(self) -> int:
        return self.moe.num_experts

    def gate_values(self, x: Tensor) -> Tensor:
        """``[t]`` gates ``sigmoid(x w_g)`` in fp32 or wider."""
        dtype = router_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return torch.sigmoid(F.linear(x.to(dtype), self.gate.weight.to(dtype))[:, 0])

    def forward(
        self, x: Tensor, pad_mask: Tensor | None = None, sentence_index: Tensor | None = None
    ) -> MoEOutput:
        """``x`` ``[t, d]`` -> :class:`~moe_mt.moe.MoEOutput` with ``y`` ``[t, d]`` (zero on pads)
        and the routed block's routing, plan and statistics."""
        out = self.moe(x, pad_mask, sentence_index)
        shared = self.shared(x, [x.shape[0]])
        aux = out.aux_losses
        if self.gate is not None:
            g = self.gate_values(x)
            shared = shared * g[:, None].to(shared.dtype)
            w = torch.ones_like(g) if pad_mask is None else (~pad_mask).to(g.dtype)
            aux = {**aux, "shared_gate": (g.detach() * w).sum() / w.sum().clamp_min(1.0)}
        if pad_mask is not None:
            shared = shared.masked_fill(pad_mask[:, None], 0.0)
        y = out.y + shared.to(out.y.dtype)
        return MoEOutput(y=y, aux_losses=aux, stats=out.stats, routing=out.routing, plan=out.plan)

    forward_tbd = MoEFeedForward.forward_tbd
