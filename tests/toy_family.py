"""A toy model family, registered only when imported: Switch top-k experts plus one always-on
shared expert (the "shared expert" of DeepSeekMoE, Dai et al. 2024), ``y = MoE(x) + S(x)`` with
``S`` a dense FFN of width ``model.moe.shared_dim``.

It proves that a family is one module: its option spec, block, fairseq model and architectures,
summary counter and registration are all here (the walk-through is docs/extending.md). Import it,
or name it in ``MOEMT_PLUGINS=tests.toy_family`` for a ``moemt`` subprocess.
"""

from __future__ import annotations

from torch import Tensor, nn

from moe_mt.models.families import BlockCount, Family, OptionSpec, register_family
from moe_mt.models.moe_layers import MoEDecoder, MoEEncoder, count_routed_block
from moe_mt.models.switch import CRITERION, SwitchTransformerModel, moe_defaults
from moe_mt.models.switch_options import SWITCH_OPTIONS
from moe_mt.models.transformer import register_model_again, register_sizes
from moe_mt.moe import MoEFeedForward, MoEOutput

MODEL_NAME = "moemt_toy_shared_expert_transformer"
SHARED_DIM = OptionSpec("shared_dim", int, 64, "toy shared expert: hidden width of the dense FFN")


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
class SharedExpertTransformerModel(SwitchTransformerModel):
    encoder_class = SharedExpertEncoder
    decoder_class = SharedExpertDecoder

    @staticmethod
    def add_args(parser):
        SwitchTransformerModel.add_args(parser)
        parser.add_argument("--moe-shared-dim", type=int, metavar="S", help=SHARED_DIM.help)


def count_shared_expert_block(block: SharedExpertMoE, sentence_tokens: int) -> BlockCount:
    """The routed experts' counts plus the shared expert's ``d s + s d`` MACs (always active)."""
    routed = count_routed_block(block.moe, sentence_tokens)
    shared = sum(m.weight.numel() for m in block.shared if isinstance(m, nn.Linear))
    return BlockCount(routed.macs + shared, routed.expert_parameters, routed.inactive_parameters)


ARCHITECTURES = register_sizes(
    MODEL_NAME,
    "toy_shared_expert_transformer",
    extra=lambda args: moe_defaults(args, moe_shared_dim=SHARED_DIM.default),
)
FAMILY = register_family(
    Family(
        "toy_shared_expert",
        ("toy_shared_expert_transformer",),
        SWITCH_OPTIONS + (SHARED_DIM,),
        CRITERION,
        {SharedExpertMoE: count_shared_expert_block},
    )
)
