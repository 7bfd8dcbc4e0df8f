"""Multi-Head Mixture-of-Experts (Wu et al. 2024, "Multi-Head Mixture-of-Experts") for translation.

The authors' code is decoder-only language modelling on tutel; this is a translation version on
the shared MoE core (:mod:`moe_mt.moe`) and layers (:mod:`moe_mt.models.moe_layers`).

Definition (one MH-MoE FFN on the flat tokens ``x`` ``[t, d]`` of a batch; ``h`` heads):

1. multi-head projection: ``u = x W_h^T + b_h`` with ``W_h`` ``[d, d]``;
2. split: token ``i`` becomes ``h`` sub-tokens of width ``d / h``; sub-token ``j`` of token ``i``
   is ``u[i, j*d/h : (j+1)*d/h]`` and sits at row ``i * h + j`` of the ``[t * h, d / h]`` sub-token
   batch (so the core's "sequence order" capacity priority keeps a token's sub-tokens together);
3. route the sub-tokens top-``k`` (``--moe-top-k``, ``--moe-router``) to ``E`` experts of input
   width ``d / h`` and hidden width ``ffn_embed_dim / k`` (so ``h * k`` sub-expert passes per
   token cost ``2 k d (f / k) = 2 d f`` multiply-accumulates: the dense FFN's), with the core's
   sort-based dispatch, capacity and combine (:class:`~moe_mt.moe.MoEFeedForward`);
4. merge: the sub-token outputs go back to rows ``i * h + j`` -> token ``i``, columns of head
   ``j``, in their original order (the exact inverse of step 2);
5. merge projection ``W_m`` ``[d, d]``, placed by ``--moe-merge-placement``:

   - ``before`` (default): inside the FFN branch, before the residual:
     ``out = r + dropout(merge(E(split(W_h LN(r)))))`` (pre-norm; post-norm applies LN after).
     This is the authors' code (torchscale ``tutel_moe_layer``), which their results come from.
     It is also a drop-in FFN replacement: the residual stream stays an identity path, as in
     every other layer of the model, so the dense-baseline initialisation and optimisation
     behaviour carry over.
   - ``after``: the paper's eq. 5-7 as read in the authors' issue #1 (yushuiwx/MH-MoE): the
     expert outputs are added to the residual first and the sum goes through the merge
     projection: ``out = merge(r + dropout(E(split(W_h LN(r)))))``. Every MH-MoE layer then
     passes the whole residual stream through a ``d x d`` matrix.

The two projections add ``2 d^2`` weights (and ``2 d^2`` multiply-accumulates per token) to each
MH-MoE layer; :mod:`moe_mt.workflows.train.model_summary` counts them.

Padding: a pad token's ``h`` sub-tokens are pads of the sub-token batch (the core's ``pad_mask``
repeated per head), so they take no expert capacity, enter neither the balance loss nor the
router statistics, and get zero expert output (zero after the merge too, in ``before``).

Statistics are the core's, over sub-tokens: ``tokens_per_expert`` counts sub-token assignments,
``activation_rate`` is the share of experts that received at least one sub-token in the batch
(logged as ``moe_active`` by ``moe_label_smoothed_cross_entropy`` and per layer as
``active_experts`` by :mod:`moe_mt.workflows.evaluate.expert_usage`).

Registered: model ``moemt_mhmoe_transformer``; architectures ``mhmoe_transformer_<size>`` for
the sizes of :data:`moe_mt.models.transformer.SIZES`. Options and their defaults (4 heads,
top-2, merge before the residual): :mod:`moe_mt.models.mhmoe_options`.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

from torch import Tensor, nn

from moe_mt.models import families
from moe_mt.models.families import BlockCount, parameter_count
from moe_mt.models.mhmoe_options import MERGE_PLACEMENTS, MHMOE
from moe_mt.models.moe_layers import (
    EXPERT_ACTIVATIONS,
    MoEDecoder,
    MoEDecoderLayer,
    MoEEncoder,
    MoEEncoderLayer,
    MoEOptions,
    MoETransformerModel,
    _activation_dropout,
    count_routed_block,
)
from moe_mt.models.switch import SwitchTransformerModel
from moe_mt.models.transformer import register_family_sizes, register_model_again
from moe_mt.moe import (
    ExpertBank,
    MoEFeedForward,
    MoEOutput,
    flatten_tbd,
    sentence_index_tbd,
    unflatten_tbd,
)
from moe_mt.moe.scoped import scoped_value

MODEL_NAME = "moemt_mhmoe_transformer"


def split_heads(x: Tensor, heads: int) -> Tensor:
    """``[t, d]`` -> ``[t * h, d / h]``: sub-token ``j`` of token ``i`` at row ``i * h + j``."""
    t, d = x.shape
    return x.reshape(t * heads, d // heads)


def merge_heads(x: Tensor, heads: int) -> Tensor:
    """``[t * h, d / h]`` -> ``[t, d]``, the inverse of :func:`split_heads`."""
    m, w = x.shape
    return x.reshape(m // heads, heads * w)


class MultiHeadMoE(nn.Module):
    """MH-MoE FFN: multi-head projection, split, top-k sub-token MoE, merge, merge projection.

    Args:
        d_model: token width ``d`` (divisible by ``heads``).
        heads: ``h``, sub-tokens per token.
        moe: the sub-token MoE layer; its router and experts take width ``d / h``.
        merge_placement: ``"before"`` (the merge projection is applied here) or ``"after"``
            (``forward`` returns the merged but unprojected output; the layer applies
            :attr:`merge` after its residual connection, see :class:`MHMoEEncoderLayer`).
    """

    def __init__(
        self, d_model: int, heads: int, moe: MoEFeedForward, merge_placement: str = "before"
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"moe_heads={heads} must divide the model width {d_model}")
        if merge_placement not in MERGE_PLACEMENTS:
            raise ValueError(f"moe_merge_placement={merge_placement!r}: one of {MERGE_PLACEMENTS}")
        self.d_model, self.heads, self.merge_placement = d_model, heads, merge_placement
        self.multi_head = nn.Linear(d_model, d_model)
        self.moe = moe
        self.merge = nn.Linear(d_model, d_model)
        for proj in (self.multi_head, self.merge):
            nn.init.xavier_uniform_(proj.weight, gain=2**-0.5)
            nn.init.zeros_(proj.bias)

    @property
    def num_experts(self) -> int:
        return self.moe.num_experts

    def forward(
        self, x: Tensor, pad_mask: Tensor | None = None, sentence_index: Tensor | None = None
    ) -> MoEOutput:
        """Apply the layer to flat tokens ``x`` ``[t, d]``, ``pad_mask`` ``[t]`` (True = pad).

        Returns:
            :class:`~moe_mt.moe.MoEOutput` with ``y`` ``[t, d]`` and the sub-token MoE's aux
            losses, statistics, routing and plan (over ``t * h`` sub-tokens).
        """
        h = self.heads
        sub = split_heads(self.multi_head(x), h)
        sub_mask = None if pad_mask is None else pad_mask.repeat_interleave(h)
        sub_sentence = None if sentence_index is None else sentence_index.repeat_interleave(h)
        out = self.moe(sub, sub_mask, sub_sentence)
        y = merge_heads(out.y, h)
        if self.merge_placement == "before":
            y = self.merge(y)
            if pad_mask is not None:
                y = y.masked_fill(pad_mask[:, None], 0.0)
        return MoEOutput(y, out.aux_losses, out.stats, out.routing, out.plan)

    def forward_tbd(self, x: Tensor, padding_mask: Tensor | None = None) -> MoEOutput:
        """fairseq's layout: ``x`` ``[n, b, d]``, ``padding_mask`` ``[b, n]`` -> ``[n, b, d]``."""
        n, b, _ = x.shape
        flat, flat_mask = flatten_tbd(x, padding_mask)
        out = self.forward(flat, flat_mask, sentence_index_tbd(n, b))
        out.y = unflatten_tbd(out.y, n, b)
        return out


def build_mhmoe_block(cfg, options: MoEOptions, d_model: int, d_ff: int) -> MultiHeadMoE:
    """The MH-MoE FFN of one layer from fairseq's config (``cfg.moe_heads`` etc.)."""
    heads = cfg.moe_heads
    if d_model % heads:
        raise ValueError(f"--moe-heads {heads} must divide the model width {d_model}")
    if cfg.activation_fn not in EXPERT_ACTIVATIONS:
        raise ValueError(f"--activation-fn {cfg.activation_fn} has no MoE expert equivalent")
    d_sub, k = d_model // heads, options.top_k
    router = families.router_kind(options.router).build(d_sub, options, cfg)
    dropout = _activation_dropout(cfg) if options.expert_dropout is None else options.expert_dropout
    experts = ExpertBank(
        options.num_experts, d_sub, max(1, d_ff // k),
        activation=EXPERT_ACTIVATIONS[cfg.activation_fn], dropout=dropout,
    )  # fmt: skip
    moe = MoEFeedForward(router, experts, options.capacity_factor, options.eval_capacity_factor)
    return MultiHeadMoE(d_model, heads, moe, cfg.moe_merge_placement)


# The FFN branch of the current layer call ran and waits for its merge projection ("after").
_AWAITING_MERGE: ContextVar[list | None] = ContextVar("moemt_mhmoe_awaiting_merge", default=None)


def _layer_scope() -> contextlib.AbstractContextManager[None]:
    return scoped_value(_AWAITING_MERGE, [])  # a fresh list per layer call


class _MergeAfterResidualMixin:
    """With ``merge_placement="after"``, the FFN's residual sum goes through ``moe.merge``.

    The FFN branch marks the current layer call (a context variable scoped to ``forward``,
    nothing stored on the module); the residual connection that follows it, the layer's last,
    applies the merge projection to ``residual + branch``.
    """

    def forward(self, *args, **kwargs):
        with _layer_scope():
            return super().forward(*args, **kwargs)

    def _moe_ffn(self, x: Tensor) -> Tensor:
        y = super()._moe_ffn(x)
        pending = _AWAITING_MERGE.get()
        if self.moe.merge_placement == "after" and pending is not None:
            pending.append(True)
        return y

    def residual_connection(self, x: Tensor, residual: Tensor) -> Tensor:
        out = residual + x
        pending = _AWAITING_MERGE.get()
        if pending:
            pending.clear()
            out = self.moe.merge(out)
        return out


class MHMoEEncoderLayer(_MergeAfterResidualMixin, MoEEncoderLayer):
    """Encoder layer with an MH-MoE FFN."""


class MHMoEDecoderLayer(_MergeAfterResidualMixin, MoEDecoderLayer):
    """Decoder layer with an MH-MoE FFN."""


class MHMoEEncoder(MoEEncoder):
    layer_class = MHMoEEncoderLayer

    def build_block(self, cfg, options, d_model: int, d_ff: int) -> nn.Module:
        return build_mhmoe_block(cfg, options, d_model, d_ff)


class MHMoEDecoder(MoEDecoder):
    layer_class = MHMoEDecoderLayer
    build_block = MHMoEEncoder.build_block


@register_model_again(MODEL_NAME)
class MHMoETransformerModel(SwitchTransformerModel):
    """The dense baseline with MH-MoE FFNs in every ``moe_freq``-th layer (see the module doc)."""

    encoder_class = MHMoEEncoder
    decoder_class = MHMoEDecoder

    @staticmethod
    def add_args(parser):
        MoETransformerModel.add_args(parser)
        families.add_arguments(parser, (MHMOE.name,), "Multi-Head MoE (moemt)")


def count_mhmoe_block(block: MultiHeadMoE, sentence_tokens: int) -> BlockCount:
    """Summary counts of an MH-MoE FFN: the two ``d x d`` projections (``2 d^2`` MACs, their
    ``2 d^2 + 2 d`` weights reported as projections) and ``h`` routed sub-tokens, which reach
    at most ``min(E, h k)`` experts."""
    d, h = block.d_model, block.heads
    reach = min(block.num_experts, h * block.moe.router.k)
    inner = count_routed_block(block.moe, sentence_tokens, reach)
    projections = parameter_count([*block.multi_head.parameters(), *block.merge.parameters()])
    return BlockCount(
        macs=2 * d * d + h * inner.macs,
        expert_parameters=inner.expert_parameters,
        inactive_parameters=inner.inactive_parameters,
        projection_parameters=projections,
    )


ARCHITECTURES = register_family_sizes(MODEL_NAME, MHMOE)
families.register_counter(MultiHeadMoE, count_mhmoe_block)
