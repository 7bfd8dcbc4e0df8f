"""The dense baseline's GLU FFN (Shazeer 2020, eq. 6: FFN_SwiGLU / FFN_GEGLU, with biases).

fairseq's layers compute their FFN as ``fc2(dropout(activation_fn(fc1(x))))``. With ``fc1`` a
:class:`GLUProjection` (``act(x w1 + b1) * (x w3 + b3)``) and ``activation_fn`` the identity,
that is the GLU FFN ``w2(dropout(act(x w1 + b1) * (x w3 + b3))) + b2`` with fairseq's own
``fc2`` and activation dropout: the same equation as a GLU expert of
:class:`~moe_mt.moe.ExpertBank`, whose activations this module shares
(:data:`~moe_mt.moe.experts.GLU_ACTIVATIONS`). The hidden width is ``ffn_embed_dim`` as given: a
GLU FFN has three matrices instead of two, and keeping its parameters equal to a ReLU FFN's
(Shazeer's ``d_ff * 2/3``) is the user's choice of width, not made here.
"""

from __future__ import annotations

from torch import Tensor, nn

from moe_mt.moe.experts import ACTIVATIONS, GLU_ACTIVATIONS


def identity(x: Tensor) -> Tensor:
    """The layer's ``activation_fn`` around a :class:`GLUProjection` (its gate holds the
    activation)."""
    return x


class GLUProjection(nn.Module):
    """``act(x w1 + b1) * (x w3 + b3)``: ``w1`` the gate, ``w3`` the up projection (Mixtral's
    and Llama's names), ``act`` the activation of ``activation`` in
    :data:`~moe_mt.moe.experts.GLU_ACTIVATIONS` (SiLU for ``swiglu``, exact GELU for
    ``geglu``).

    Args:
        w1: the gate ``d -> f`` (an ``nn.Linear``, possibly wrapped by fairseq's quant-noise).
        w3: the up projection ``d -> f``, of the same shape.
        activation: ``swiglu`` or ``geglu``.

    It has no ``weight`` of its own: code that reads ``fc1.weight`` (fairseq's pruning,
    CTranslate2's fairseq loader) fails instead of taking the gate for the whole FFN.
    """

    def __init__(self, w1: nn.Module, w3: nn.Module, activation: str) -> None:
        super().__init__()
        if activation not in GLU_ACTIVATIONS:
            raise ValueError(f"unknown GLU {activation!r}; known: {sorted(GLU_ACTIVATIONS)}")
        self.w1, self.w3, self.activation = w1, w3, activation
        self.act = ACTIVATIONS[GLU_ACTIVATIONS[activation]]

    def extra_repr(self) -> str:
        return f"activation={self.activation}"

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[..., d]`` -> ``[..., f]``."""
        return self.act(self.w1(x)) * self.w3(x)
