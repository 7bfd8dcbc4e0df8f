"""Soft MoE (Puigcerver et al. 2024, "From Sparse to Soft Mixtures of Experts") in the encoder.

Per sentence of ``n`` tokens, with ``E`` experts of ``s`` slots each (``--moe-num-experts``,
``--moe-slots-per-expert``, default 1), on the core's :class:`~moe_mt.moe.SoftSlotRouter`:

- logits ``l[n, e, s] = scale * <x_n / |x_n|, phi_es / |phi_es|>``: tokens and slot parameters
  L2-normalised, one learnable scale initialised to 1 (§2.3 of the paper);
- dispatch weights: softmax of ``l`` over the tokens ``n`` of the sentence, per slot; each slot's
  input is the weighted sum of the sentence's tokens;
- each expert (an FFN of the dense FFN's size) processes its ``s`` slots;
- combine weights: softmax of ``l`` over the ``e * s`` slots, per token; each token's output is
  the weighted sum of the slot outputs.

Pad tokens are masked out of both softmaxes: they never enter a slot and get zero output. Since
every softmax runs inside one sentence, a sentence's encoding does not depend on what else is in
the batch (per-sentence determinism; tested by translating a sentence alone and in a batch).

Scope: **encoder only**. Soft MoE mixes positions (every slot sees every token), so in a causal
decoder a token would see the tokens after it: ``--moe-sides decoder`` or ``both`` is refused
with a :class:`~moe_mt.errors.MoeMtError` before any model is built. The decoder is dense
(``--moe-soft-decoder dense``, the default) or has top-k MoE FFNs (``sparse``: Switch/X-MoE
layers at the same ``moe_freq`` / ``moe_offset``, with the Switch options).

Statistics: Soft MoE drops nothing and every expert processes its slots, so
``tokens_per_expert`` counts slots (``b * s`` each), ``fraction_dropped`` is 0 and the activation
rate is 1.0 by construction; ``router_entropy`` is the mean entropy of the combine weights.
There are no auxiliary losses.

Registered: model ``moemt_soft_moe_transformer``; architectures ``soft_moe_transformer_<size>``.
Options and their defaults (the encoder as MoE side, 1 slot per expert, a dense decoder):
:mod:`moe_mt.models.soft_moe_options`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from moe_mt.errors import MoeMtError
from moe_mt.models import families
from moe_mt.models.families import BlockCount, parameter_count
from moe_mt.models.moe_layers import (
    EXPERT_ACTIVATIONS,
    MoEDecoder,
    MoEEncoder,
    MoEOptions,
    MoETransformerModel,
    _activation_dropout,
)
from moe_mt.models.soft_moe_options import SLOTS_PER_EXPERT, SOFT_DECODER, SOFT_MOE
from moe_mt.models.switch import SwitchTransformerModel
from moe_mt.models.transformer import MoeMtDecoder, register_model_again, register_sizes
from moe_mt.moe import (
    DispatchPlan,
    ExpertBank,
    MoEOutput,
    SoftSlotRouter,
    dispatch_stats,
    soft_combine,
    soft_counts,
    soft_dispatch,
)

MODEL_NAME = "moemt_soft_moe_transformer"


def check_soft_moe_args(args) -> None:
    """Refuse a Soft MoE configuration that cannot work, before anything is built."""
    sides = getattr(args, "moe_sides", None)
    if sides not in (None, "encoder"):
        raise MoeMtError(
            f"model.moe.sides={sides}: Soft MoE cannot sit in the decoder: each slot mixes all "
            "positions of a sentence, so a causal decoder's token would see later tokens; use "
            "model.moe.sides=encoder (model.moe.soft_decoder=sparse for a sparse decoder)"
        )
    for option in (SOFT_DECODER, SLOTS_PER_EXPERT):
        value = getattr(args, f"moe_{option.name}", None)
        problem = option.problem(value)
        if problem:
            raise MoeMtError(f"model.moe.{option.name}={value}: {problem}")


class SoftMoEFeedForward(nn.Module):
    """Soft MoE FFN: slot router, expert bank over slots (see the module docstring).

    Args:
        router: :class:`~moe_mt.moe.SoftSlotRouter` of width ``d``.
        experts: :class:`~moe_mt.moe.ExpertBank` with the router's ``num_experts``.
    """

    def __init__(self, router: SoftSlotRouter, experts: ExpertBank) -> None:
        super().__init__()
        if router.num_experts != experts.num_experts:
            raise ValueError(f"router has {router.num_experts} experts, bank {experts.num_experts}")
        self.router, self.experts = router, experts

    @property
    def num_experts(self) -> int:
        return self.experts.num_experts

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> MoEOutput:
        """Apply the layer to sentences: ``x`` ``[b, n, d]``, ``pad_mask`` ``[b, n]`` (True = pad).

        Returns:
            :class:`~moe_mt.moe.MoEOutput` with ``y`` ``[b, n, o]`` (zero on pads), no aux
            losses, and slot counts as the plan (no discrete assignment exists).
        """
        routing = self.router(x, pad_mask)
        slots = soft_dispatch(x, routing)  # [e * b * s, d], grouped per expert
        counts = soft_counts(routing)
        y = soft_combine(self.experts(slots, counts), routing)
        plan = _slot_plan(torch.tensor(counts).to(x.device, non_blocking=True))
        stats = dispatch_stats(plan.counts, plan.num_assignments, routing.stats["router_entropy"])
        return MoEOutput(y=y, aux_losses={}, stats=stats, routing=routing, plan=plan)

    def forward_tbd(self, x: Tensor, padding_mask: Tensor | None = None) -> MoEOutput:
        """fairseq's layout: ``x`` ``[n, b, d]``, ``padding_mask`` ``[b, n]`` -> ``[n, b, o]``."""
        out = self.forward(x.transpose(0, 1), padding_mask)
        out.y = out.y.transpose(0, 1)
        return out


def _slot_plan(counts: Tensor) -> DispatchPlan:
    """A plan holding only slot counts (what expert-usage tracking reads); nothing is dropped."""
    empty = counts.new_zeros(0)
    return DispatchPlan(
        token_index=empty, choice_index=empty, row_index=counts.new_zeros(0, 1),
        counts=counts, kept=empty.bool(), num_assignments=counts.sum(), capacity=None,
    )  # fmt: skip


def build_soft_block(cfg, options: MoEOptions, d_model: int, d_ff: int) -> SoftMoEFeedForward:
    if cfg.activation_fn not in EXPERT_ACTIVATIONS:
        raise ValueError(f"--activation-fn {cfg.activation_fn} has no MoE expert equivalent")
    dropout = _activation_dropout(cfg) if options.expert_dropout is None else options.expert_dropout
    router = SoftSlotRouter(d_model, options.num_experts, cfg.moe_slots_per_expert)
    experts = ExpertBank(
        options.num_experts, d_model, d_ff, activation=EXPERT_ACTIVATIONS[cfg.activation_fn],
        dropout=dropout,
    )  # fmt: skip
    return SoftMoEFeedForward(router, experts)


class SoftMoEEncoder(MoEEncoder):
    """Encoder whose MoE layers (``moe_freq`` / ``moe_offset``) are Soft MoE layers."""

    def build_block(self, cfg, options, d_model: int, d_ff: int) -> nn.Module:
        return build_soft_block(cfg, options, d_model, d_ff)


class SoftMoEDecoder(MoEDecoder):
    """Dense decoder, or top-k MoE layers at the same placement (``--moe-soft-decoder sparse``)."""

    def moe_options(self, cfg):
        # --moe-sides is the Soft MoE side (the encoder); the sparse decoder takes its placement.
        return replace(super().moe_options(cfg), sides="decoder")

    def make_layer(self, cfg, index: int, no_encoder_attn: bool) -> nn.Module:
        if cfg.moe_soft_decoder != "sparse":
            return MoeMtDecoder.make_layer(self, cfg, index, no_encoder_attn)
        return super().make_layer(cfg, index, no_encoder_attn)


@register_model_again(MODEL_NAME)
class SoftMoETransformerModel(SwitchTransformerModel):
    """Soft MoE encoder, dense or top-k MoE decoder (see the module docstring)."""

    encoder_class = SoftMoEEncoder
    decoder_class = SoftMoEDecoder

    @staticmethod
    def add_args(parser):
        MoETransformerModel.add_args(parser)
        families.add_arguments(parser, (SOFT_MOE.name,), "Soft MoE (moemt)")

    @classmethod
    def build_model(cls, args, task):
        check_soft_moe_args(args)
        return super().build_model(args, task)


def soft_moe_defaults(args) -> None:
    check_soft_moe_args(args)  # before the defaults hide what the user set
    families.fill_defaults(args, SOFT_MOE.name)


def count_soft_block(block: SoftMoEFeedForward, sentence_tokens: int) -> BlockCount:
    """Summary counts of a Soft MoE FFN for sentences of ``sentence_tokens`` tokens: logits,
    dispatch and combine (``E s (2 d + o)``) plus the experts' ``E s`` slots shared by the
    sentence's tokens; every expert is active (every token feeds every slot)."""
    bank, router = block.experts, block.router
    slots = router.num_experts * router.slots_per_expert
    expert = bank.d_model * bank.d_ff + bank.d_ff * bank.d_out
    routing = slots * (2 * bank.d_model + bank.d_out)
    return BlockCount(
        macs=routing + round(slots * expert / sentence_tokens),
        expert_parameters=parameter_count(bank.parameters()),
    )


ARCHITECTURES = register_sizes(MODEL_NAME, SOFT_MOE.arch_prefixes[0], extra=soft_moe_defaults)
families.register_counter(SoftMoEFeedForward, count_soft_block)
