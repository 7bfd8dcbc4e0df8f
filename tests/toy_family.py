"""A toy model family, registered only when imported: Switch top-k experts plus one always-on
shared expert (the "shared expert" of DeepSeekMoE, Dai et al. 2024), ``y = MoE(x) + S(x)`` with
``S`` a dense FFN of width ``model.moe.shared_dim``.

It proves that a family is one module: its option (declared once: the schema, fairseq's argument
and the default come from it), family record with its criterion, block, fairseq model and
architectures, and summary counter are all here (the walk-through is docs/extending.md). Import
it, or name it in ``MOEMT_PLUGINS=tests.toy_family`` for a ``moemt`` subprocess.
"""

from __future__ import annotations

from torch import Tensor, nn

from moe_mt.bounds import AT_LEAST_1
from moe_mt.models import families
from moe_mt.models.families import BlockCount, Family, OptionSpec
from moe_mt.models.moe_layers import MoEDecoder, MoEEncoder, MoETransformerModel, count_routed_block
from moe_mt.models.switch_options import MOE_CRITERION, SWITCH_OPTIONS
from moe_mt.models.transformer import register_family_sizes, register_model_again
from moe_mt.moe import MoEFeedForward, MoEOutput

MODEL_NAME = "moemt_toy_shared_expert_transformer"
SHARED_DIM = OptionSpec(
    "shared_dim", int, 64, "toy shared expert: hidden width of the dense FFN", bound=AT_LEAST_1
)
FAMILY = families.register_family(
    Family(
        "toy_shared_expert",
        ("toy_shared_expert_transformer",),
        SWITCH_OPTIONS + (SHARED_DIM,),
        MOE_CRITERION,
    )
)


class SharedExpertMoE(nn.Module):
    """A routed MoE FFN (``moe``) plus a dense shared expert that every token goes through."""

    def __init__(self, moe: MoEFeedForward, shared_dim: int) -> None:
        super().__init__()
        d = moe.experts.d_model
        self.moe = moe
        self.shared = nn.Sequential(nn.Linear(d, shared_dim), nn.ReLU(), nn.Linear(shared_dim, d))

    def forward_tbd(self, x: Tensor, padding_mask: Tensor | None = None) -> MoEOutput:
        out = self.moe.forward_tbd(x, padding_mask)
        out.y = out.y + self.shared(x)
        return out


def _build_block(layers, cfg, options, d_model: int, d_ff: int) -> nn.Module:
    return SharedExpertMoE(
        MoEEncoder.build_block(layers, cfg, options, d_model, d_ff), cfg.moe_shared_dim
    )


class SharedExpertEncoder(MoEEncoder):
    build_block = _build_block


class SharedExpertDecoder(MoEDecoder):
    build_block = _build_block


@register_model_again(MODEL_NAME)
class SharedExpertTransformerModel(MoETransformerModel):
    encoder_class = SharedExpertEncoder
    decoder_class = SharedExpertDecoder

    @staticmethod
    def add_args(parser):
        MoETransformerModel.add_args(parser)
        families.add_arguments(parser, (FAMILY.name,), "toy shared expert")


def count_shared_expert_block(block: SharedExpertMoE, sentence_tokens: int) -> BlockCount:
    """The routed experts' counts plus the shared expert's ``d s + s d`` MACs (always active)."""
    routed = count_routed_block(block.moe, sentence_tokens)
    shared = sum(m.weight.numel() for m in block.shared if isinstance(m, nn.Linear))
    return BlockCount(routed.macs + shared, routed.expert_parameters, routed.inactive_parameters)


ARCHITECTURES = register_family_sizes(MODEL_NAME, FAMILY)
families.register_counter(SharedExpertMoE, count_shared_expert_block)
