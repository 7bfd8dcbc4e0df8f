"""The dense Transformer baseline (Vaswani et al. 2017), as the one code path MoE models share.

``moemt_transformer`` is fairseq's Transformer with one change: its encoder layers do not
register the BetterTransformer copies of their attention and FFN weights. fairseq 0.12.2 adds
those (about 2.4M never-trained parameters at the demo size) for a fused inference kernel that
moemt does not use (see :mod:`moe_mt.compat`), so without them the parameter count, the optimizer
state and the checkpoints hold only what is trained. MoE families subclass this model and swap
layers through :meth:`MoeMtEncoder.build_encoder_layer` / :meth:`MoeMtDecoder.build_decoder_layer`.

``--moe-expert-activation swiglu | geglu`` (``model.moe.expert_activation``, the dense family's
one option) makes every layer's FFN a GLU FFN (:mod:`moe_mt.models.glu`, Shazeer 2020): ``fc1``
holds the gate ``w1`` and the up projection ``w3``, ``fc2`` is the down projection, at the
``ffn_embed_dim`` given (not shrunk to 2/3: choose the width). The MoE layers keep their own FFN.

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
from fairseq.modules.quant_noise import quant_noise
from fairseq.modules.transformer_layer import (
    TransformerDecoderLayerBase,
    TransformerEncoderLayerBase,
)
from torch import nn

import moe_mt  # noqa: F401  (compat patches before fairseq is imported)
from moe_mt.models import families
from moe_mt.models.dense_options import DENSE, EXPERT_ACTIVATION
from moe_mt.models.glu import GLUProjection, identity
from moe_mt.moe.experts import GLU_ACTIVATIONS

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


def glu_activation(cfg) -> str | None:
    """The GLU (``swiglu`` | ``geglu``) that ``--moe-expert-activation`` names for the FFN, or
    None: fairseq's FFN with ``--activation-fn`` (``auto``, or args saved before the option)."""
    name = getattr(cfg, "moe_expert_activation", None) or EXPERT_ACTIVATION.default
    problem = EXPERT_ACTIVATION.problem(name)
    if problem:
        raise ValueError(f"moe_expert_activation={name!r}: {problem}")
    return name if name in GLU_ACTIVATIONS else None


class _GLUFFN:
    """A fairseq layer whose FFN is a GLU FFN when the args ask for one (:func:`glu_activation`).

    :meth:`build_fc1` builds the :class:`~moe_mt.models.glu.GLUProjection`, but hands fairseq's
    ``__init__`` a meta ``nn.Linear`` of fc1's shape, because the encoder layer's ``__init__``
    reads ``fc1.weight`` (for its BetterTransformer copies); :meth:`_install_glu`, called once
    fairseq's ``__init__`` has returned, puts the projection in ``fc1`` and makes
    ``activation_fn`` the identity. A class earlier in the MRO whose ``build_fc1`` replaces the
    FFN (the MoE layers') builds no projection and keeps its own FFN.
    """

    def _expect_glu(self, cfg) -> None:
        # In __dict__: build_fc1 reads it inside fairseq's __init__, before nn.Module's own.
        self.__dict__["_glu_activation"] = glu_activation(cfg)

    def build_fc1(self, input_dim, output_dim, q_noise, qn_block_size):
        activation = self.__dict__.get("_glu_activation")
        if activation is None:
            return super().build_fc1(input_dim, output_dim, q_noise, qn_block_size)

        def linear() -> nn.Module:
            return quant_noise(nn.Linear(input_dim, output_dim), q_noise, qn_block_size)

        self.__dict__["_glu_fc1"] = GLUProjection(linear(), linear(), activation)  # w1, w3
        return nn.Linear(input_dim, output_dim, device="meta")

    def _install_glu(self) -> None:
        self.__dict__.pop("_glu_activation", None)
        glu = self.__dict__.pop("_glu_fc1", None)
        if glu is not None:
            self.fc1 = glu  # replaces the placeholder in place: fc1 stays before fc2
            self.activation_fn = identity


class MoeMtEncoderLayer(_GLUFFN, TransformerEncoderLayerBase):
    """fairseq's encoder layer without the unused BetterTransformer weight copies (and with a
    GLU FFN when the args ask for one)."""

    def __init__(self, cfg, return_fc: bool = False):
        self._expect_glu(cfg)
        super().__init__(cfg, return_fc=return_fc)
        for name in BETTERTRANSFORMER_PARAMS:
            delattr(self, name)
        self.can_use_fastpath = False
        self._install_glu()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # fairseq's version writes the fused copies into state_dict; we load the plain weights.
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)


class MoeMtDecoderLayer(_GLUFFN, TransformerDecoderLayerBase):
    """fairseq's decoder layer, with a GLU FFN when the args ask for one."""

    def __init__(self, cfg, no_encoder_attn=False, add_bias_kv=False, add_zero_attn=False):
        self._expect_glu(cfg)
        super().__init__(cfg, no_encoder_attn, add_bias_kv, add_zero_attn)
        self._install_glu()


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
        return MoeMtDecoderLayer(cfg, no_encoder_attn)


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
    def add_args(cls, parser):
        """fairseq's Transformer arguments, and for the dense model itself the dense family's
        options (``--moe-expert-activation``). An MoE family's model calls this through its
        base class and adds its family's options, which hold the shared ones (argparse takes a
        flag once)."""
        super().add_args(parser)
        if cls is MoeMtTransformerModel:
            families.add_arguments(parser, (DENSE.name,), "dense baseline (moemt)")

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


ARCHITECTURES = register_family_sizes(MODEL_NAME, DENSE)
