"""Conditional MoE Routing (CMR; NLLB Team 2022, §6.2; Elbayad et al. 2023).

A token-level gate mixes a shared dense FFN with the MoE layer::

    g = dropout(sigmoid(x w + b))                  # [t], one scalar per token
    y = (1 - g) * FFN_shared(x) + g * MoE(x)

so that the model learns which tokens need the experts' extra capacity. As in fairseq's ``nllb``
branch (``--moe-cmr --cmr-gate-drop p``, ``CMRGate`` / ``CMRLayer``): the gate is a linear map
with a bias followed by a sigmoid, computed for every token; dropout on the gate is torch's
(inverted: a kept gate is scaled by ``1 / (1 - p)``, so in training ``g`` may exceed 1 and
``1 - g`` be negative, as in the reference); pads get ``g = 0``; the shared FFN has the width and
activation of one expert. Gate numerics run in fp32 (as the routers, Switch §2.4).

Differences from the reference:

- fairseq applies the layer's output dropout inside its shared-FFN branch only; here the fairseq
  layer around the block applies its dropout to the mixed output (to both branches).
- fairseq's CMR budget loss (``--cmr-gate-loss-wt``, ``|mean g - p|``, default weight 0) is not
  implemented; the mean gate over non-pad tokens is reported (aux name ``"cmr_gate"``, logged as
  ``moe_cmr_gate``, not optimised).
- Hugging Face's ``NllbMoe`` has no CMR.

Axes: ``t`` flat tokens, ``d`` model width, ``f`` hidden width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_mt.moe.experts import ExpertBank
from moe_mt.moe.layer import MoEFeedForward, MoEOutput
from moe_mt.moe.routing import router_dtype


class ConditionalMoE(nn.Module):
    """``y = (1 - g) FFN_shared(x) + g MoE(x)`` with a per-token gate ``g`` (module docstring).

    Args:
        moe: the MoE block (its router, experts, capacity, conventions and EOM unchanged).
        shared: the shared dense FFN, an :class:`~moe_mt.moe.ExpertBank` with one expert.
        gate_dropout: dropout probability on the gate (fairseq's ``--cmr-gate-drop``).
    """

    def __init__(self, moe: MoEFeedForward, shared: ExpertBank, gate_dropout: float = 0.0):
        super().__init__()
        if shared.num_experts != 1:
            raise ValueError(f"the shared FFN is one expert, not {shared.num_experts}")
        self.moe, self.shared = moe, shared
        self.gate = nn.Linear(shared.d_model, 1)
        self.gate_dropout = nn.Dropout(gate_dropout)

    @property
    def num_experts(self) -> int:
        return self.moe.num_experts

    def gate_values(self, x: Tensor, pad_mask: Tensor | None) -> Tensor:
        """``[t]`` gates ``dropout(sigmoid(x w + b))`` in fp32 or wider; 0 on pads."""
        dtype = router_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            logit = F.linear(x.to(dtype), self.gate.weight.to(dtype), self.gate.bias.to(dtype))
            g = self.gate_dropout(torch.sigmoid(logit[:, 0]))
        return g if pad_mask is None else g.masked_fill(pad_mask, 0.0)

    def forward(
        self, x: Tensor, pad_mask: Tensor | None = None, sentence_index: Tensor | None = None
    ) -> MoEOutput:
        """``x`` ``[t, d]`` -> :class:`~moe_mt.moe.MoEOutput` with the mixed ``y`` ``[t, d]``
        (zero on pads) and the MoE block's routing, plan and statistics."""
        out = self.moe(x, pad_mask, sentence_index)
        g = self.gate_values(x, pad_mask)
        shared = self.shared(x, [x.shape[0]])
        y = torch.lerp(shared, out.y, g[:, None].to(shared.dtype))  # (1 - g) shared + g moe
        real = None if pad_mask is None else ~pad_mask
        if real is not None:
            y = y * real[:, None].to(y.dtype)
        w = torch.ones_like(g) if real is None else real.to(g.dtype)
        mean_gate = (g.detach() * w).sum() / w.sum().clamp_min(1.0)
        aux = {**out.aux_losses, "cmr_gate": mean_gate}
        return MoEOutput(y=y, aux_losses=aux, stats=out.stats, routing=out.routing, plan=out.plan)

    forward_tbd = MoEFeedForward.forward_tbd
