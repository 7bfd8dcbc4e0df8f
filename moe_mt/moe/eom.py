"""Expert Output Masking (EOM; NLLB Team 2022, §6.2; Elbayad et al. 2023).

In training, each token's expert output is dropped with probability ``p`` so that the residual
alone carries the token; at inference every expert output is scaled by ``1 - p``, the mean of
the training mask (not inverted dropout: training outputs are not rescaled). As fairseq's
``nllb`` branch (``--moe-eom``, ``MOELayer``'s ``tok_dropout``), the mask is drawn per dispatched
assignment, so the two experts of a top-2 token are masked independently; for top-1 routing that
is "the MoE output of a fraction ``p`` of tokens is dropped". Masking the combine weight is the
same as masking the expert's output row (the output enters ``y`` only through it), without an
extra pass over the hidden width. The draws come from torch's global generator, like dropout.

Difference from Hugging Face's ``NllbMoe`` (``moe_token_dropout``): it applies ``nn.Dropout``
element-wise to the expert outputs (inverted, rescaled by ``1 / (1 - p)``) and still scales them
by ``1 - p`` at inference. Axes: ``t`` tokens, ``k`` choices.
"""

from __future__ import annotations

import torch
from torch import Tensor


def expert_output_mask(weight: Tensor, p: float, training: bool) -> Tensor:
    """``weight`` ``[t, k]`` combine weights with EOM applied (see the module docstring)."""
    if p <= 0:
        return weight
    if not training:
        return weight * (1.0 - p)
    keep = torch.rand(weight.shape, device=weight.device) >= p
    return weight * keep.to(weight.dtype)
