"""The dense Transformer baseline (Vaswani et al. 2017), as the one code path MoE models share.

``moemt_transformer`` is fairseq's Transformer with one change: its encoder layers do not
register the BetterTransformer copies of their attention and FFN weights. fairseq 0.12.2 adds
those (about 2.4M never-trained parameters at the demo size) for a fused inference kernel that
moemt does not use (see :mod:`moe_mt.compat`), so without them the parameter count, the optimizer
state and the checkpoints hold only what is trained. MoE families subclass this model and swap
layers through :meth:`MoeMtEncoder.build_encoder_layer` / :meth:`MoeMtDecoder.build_decoder_layer`.

Sizes (``moemt_transformer_<size>``), layers per side / width / FFN width / heads:

=========  ======  =====  ====  =====  ========================================
size       layers  d      FFN   heads  as in
=========  ======  =====  ====  =====  ========================================
tiny       4       128    256   4      Wu et al. 2021's ``transformer_tiny`` (Multi30k)
demo       3       256    1024  4      the 2-core calibration (docs/train.md)
iwslt      6       512    1024  4      fairseq ``transformer_iwslt_de_en``
wmt        6       512    2048  8      Transformer-base (Vaswani et al. 2017)
wmt_big    6       1024   4096  16     Transformer-big (dropout 0.3 in recipes)
=========  ======  =====  ====  =====  ========================================
"""

from __future__ import annotations

from fairseq.distributed import fsdp_wrap
from fairseq.models import (
    ARCH_CONFIG_REGISTRY,
    ARCH_MODEL_INV_REGISTRY,
    ARCH_MODEL_NAME_REGISTRY,
    ARCH_MODEL_REGISTRY,
    MODEL_REGISTRY,
    register_model,
    register_model_architecture,
)
from fairseq.models.transformer import (
    TransformerConfig,
    TransformerDecoderBase,
    TransformerEncoderBase,
    TransformerModel,
    base_architecture,
)
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.transformer_layer import (
    TransformerDecoderLayerBase,
    TransformerEncoderLayerBase,
)
from torch import nn

import moe_mt  # noqa: F401  (compat patches before fairseq is imported)
from moe_mt.models import families

MODEL_NAME = "moemt_transformer"

#: The tensors fairseq's encoder layer keeps only for the fused BetterTransformer kernel: copies
#: of its attention and FFN weights, never trained (also left out of parameter counts).
BETTERTRANSFORMER_PARAMS = (
    "in_proj_weight",
    "in_proj_bias",
    "out_proj_weight",
    "out_proj_bias",
    "fc1_weight",
    "fc1_bias",
    "fc2_weight",
    "fc2_bias",
)

SIZES = {
    # size: (layers, embed_dim, ffn_embed_dim, attention_heads)
    "tiny": (4, 128, 256, 4),
    "demo": (3, 256, 1024, 4),
    "iwslt": (6, 512, 1024, 4),
    "wmt": (6, 512, 2048, 8),
    "wmt_big": (6, 1024, 4096, 16),
}


class MoeMtEncoderLayer(TransformerEncoderLayerBase):
    """fairseq's encoder layer without the unused BetterTransformer weight copies."""

    def __init__(self, cfg, return_fc: bool = False):
        super().__init__(cfg, return_fc=return_fc)
        for name in BETTERTRANSFORMER_PARAMS:
            delattr(self, name)
        self.can_use_fastpath = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # fairseq's version writes the fused copies into state_dict; we load the plain weights.
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)


def _wrap_layer(layer: nn.Module, cfg) -> nn.Module:
    """Activation checkpointing and FSDP wrapping, as fairseq applies them to every layer."""
    checkpoint = cfg.checkpoint_activations
    if checkpoint:
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
    # With checkpointing, FSDP must wrap the checkpointed layer whatever its size.
    return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap if not checkpoint else 0)


class MoeMtEncoder(TransformerEncoderBase):
    """Encoder whose layers are built by :meth:`make_layer` (index-aware, for MoE families)."""

    def build_encoder_layer(self, cfg):
        index = self.__dict__.get("_layers_built", 0)
        self.__dict__["_layers_built"] = index + 1
        return _wrap_layer(self.make_layer(cfg, index), cfg)

    def make_layer(self, cfg, index: int) -> nn.Module:
        return MoeMtEncoderLayer(cfg, return_fc=self.return_fc)


class MoeMtDecoder(TransformerDecoderBase):
    """Decoder whose layers are built by :meth:`make_layer` (index-aware, for MoE families)."""

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        index = self.__dict__.get("_layers_built", 0)
        self.__dict__["_layers_built"] = index + 1
        return _wrap_layer(self.make_layer(cfg, index, no_encoder_attn), cfg)

    def make_layer(self, cfg, index: int, no_encoder_attn: bool) -> nn.Module:
        return TransformerDecoderLayerBase(cfg, no_encoder_attn)


def register_model_again(name: str):
    """fairseq's ``register_model``, except that the same class imported again (same class name,
    same module file name: ``importlib.reload``, or a plugin module reached under two package
    paths) replaces the earlier registration and its architectures instead of failing."""

    def register(cls):
        earlier = MODEL_REGISTRY.get(name)
        if earlier is not None and _definition(earlier) == _definition(cls):
            for arch in ARCH_MODEL_INV_REGISTRY.pop(name, []):
                for registry in (ARCH_MODEL_REGISTRY, ARCH_MODEL_NAME_REGISTRY):
                    registry.pop(arch, None)
                ARCH_CONFIG_REGISTRY.pop(arch, None)
            del MODEL_REGISTRY[name]
        return register_model(name)(cls)

    return register


def _definition(cls) -> tuple[str, str]:
    return cls.__module__.rpartition(".")[2], cls.__qualname__


@register_model_again(MODEL_NAME)
class MoeMtTransformerModel(TransformerModel):
    """The dense baseline; MoE families override :attr:`encoder_class` / :attr:`decoder_class`."""

    encoder_class = MoeMtEncoder
    decoder_class = MoeMtDecoder

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return cls.encoder_class(TransformerConfig.from_namespace(args), src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        cfg = TransformerConfig.from_namespace(args)
        return cls.decoder_class(
            cfg, tgt_dict, embed_tokens, no_encoder_attn=cfg.no_cross_attention
        )


def set_size(args, layers: int, embed_dim: int, ffn_embed_dim: int, heads: int) -> None:
    """Fill the size options the user left unset (fairseq's architecture-function contract)."""
    defaults = {
        "encoder_layers": layers,
        "decoder_layers": layers,
        "encoder_embed_dim": embed_dim,
        "decoder_embed_dim": embed_dim,
        "encoder_ffn_embed_dim": ffn_embed_dim,
        "decoder_ffn_embed_dim": ffn_embed_dim,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
    }
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    base_architecture(args)


def register_sizes(model_name: str, prefix: str, extra=None) -> list[str]:
    """Register ``<prefix>_<size>`` for every size in :data:`SIZES`; return the names."""
    names = []
    for size, dims in SIZES.items():
        name = f"{prefix}_{size}"

        def architecture(args, dims=dims):
            if extra is not None:
                extra(args)
            set_size(args, *dims)

        register_model_architecture(model_name, name)(architecture)
        names.append(name)
    return names


def register_family_sizes(model_name: str, family: families.Family) -> list[str]:
    """Register ``<family's prefix>_<size>`` for every size, each filling in the family's
    option defaults (:func:`~moe_mt.models.families.fill_defaults`); return the names."""
    return register_sizes(
        model_name, family.arch_prefixes[0],
        extra=lambda args: families.fill_defaults(args, family.name),
    )  # fmt: skip


ARCHITECTURES = register_sizes(MODEL_NAME, MODEL_NAME)
