"""fairseq encoder/decoder layers whose FFN is an MoE block, shared by every MoE family.

An MoE layer is fairseq's own layer (the dense baseline's, :mod:`moe_mt.models.transformer`)
with its FFN swapped through the construction hooks: ``build_fc1`` / ``build_fc2`` build no dense
weights, and the layer's FFN step (``fc2(dropout(act(fc1(x))))`` in fairseq's ``forward``) runs
the MoE block as ``fc1`` with the other three steps set to identities (the hidden activation and
its dropout live inside the experts). Attention, residuals and layer norms are fairseq's code.

Two values cross the layer boundary without being stored on a module, through context variables
that live exactly as long as one call:

- the padding mask: the layer's ``forward`` scopes the mask it receives (``encoder_padding_mask``
  in the encoder, ``self_attn_padding_mask`` in the decoder; ``None`` when the batch has no pads)
  around fairseq's ``forward``, and the block reads it, so pads take no capacity and stay out of
  losses and statistics (during incremental decoding ``x`` and the mask are one step long);
- the block's :class:`~moe_mt.moe.MoEOutput` (aux losses, stats): every MoE layer reports it,
  under its name (``"encoder.layers.1"``), to the observers active at that moment
  (:func:`observe_moe`). :meth:`MoETransformerModel.forward` opens one with
  :func:`collect_moe_outputs` around each forward pass and returns the list as
  ``extra["moe"]`` (encoder layers first, then decoder layers, in call order). Outside any
  observer (generation without a tracker, activation checkpointing's recomputation in backward)
  the outputs are dropped.

:class:`MoEOptions` holds the routing configuration read from fairseq's (legacy) args; the
options are declared in :mod:`moe_mt.models.switch_options` and the families' model files
(``moe_mt/models/switch.py``) build the block.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import NamedTuple

import torch.distributed as dist
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from torch import Tensor, nn

from moe_mt.errors import MoeMtError
from moe_mt.models import families
from moe_mt.models.families import BlockCount, check_declared, options_record, parameter_count
from moe_mt.models.switch_options import (
    CONVENTIONS,
    EXPERT_CHOICE_ROUTER,
    EXPERT_FORMS,
    REGULARISERS,
    ROUTED,
    TOP_K_SCORES,
    TOPK_ROUTER,
)
from moe_mt.models.transformer import (
    MoeMtDecoder,
    MoeMtEncoder,
    MoeMtEncoderLayer,
    MoeMtTransformerModel,
)
from moe_mt.moe import (
    ConditionalMoE,
    CosineRouter,
    ExpertBank,
    ExpertChoiceRouter,
    MoEFeedForward,
    MoEOutput,
    RoutingConventions,
    SharedExpertMoE,
    TopKRouter,
)
from moe_mt.moe.balance import end_update
from moe_mt.moe.expert_parallel import (
    SOFT_MOE_REFUSAL,
    ExpertParallelMoE,
    ShardedExpertBank,
    SharedDraws,
    ddp_ignore_expert_params,
    expert_parallel_groups,
    reduce_expert_grads,
)
from moe_mt.moe.router_expert_choice import DECODER_REFUSAL, EXPERT_PARALLEL_REFUSAL
from moe_mt.moe.scoped import scoped_value

#: fairseq ``--activation-fn`` -> the expert bank's activation of the same function.
EXPERT_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_accurate": "gelu_tanh", "swish": "silu"}


class MoELayerOutput(NamedTuple):
    """One MoE layer's result in one forward pass: its name and the block's output."""

    name: str
    output: MoEOutput


Observer = Callable[[str, MoEOutput], None]
_OBSERVERS: ContextVar[tuple[Observer, ...]] = ContextVar("moemt_moe_observers", default=())
_PADDING_MASK: ContextVar[Tensor | None] = ContextVar("moemt_moe_padding_mask", default=None)


def observe_moe(observer: Observer) -> contextlib.AbstractContextManager[None]:
    """Call ``observer(layer_name, moe_output)`` for every MoE layer run inside the block."""
    return scoped_value(_OBSERVERS, _OBSERVERS.get() + (observer,))


@contextlib.contextmanager
def collect_moe_outputs() -> Iterator[list[MoELayerOutput]]:
    """Collect the :class:`MoELayerOutput` of every MoE layer run inside the block, in order."""
    collected: list[MoELayerOutput] = []
    with observe_moe(lambda name, out: collected.append(MoELayerOutput(name, out))):
        yield collected


def _padding_scope(mask: Tensor | None) -> contextlib.AbstractContextManager[None]:
    return scoped_value(_PADDING_MASK, mask)


@options_record(ROUTED + EXPERT_FORMS + CONVENTIONS + REGULARISERS)
class MoEOptions:
    """Where the MoE layers are and how they route: the routed families' model options
    (:mod:`moe_mt.models.switch_options`, one field each), read from fairseq's (legacy) args.

    Layer ``i`` (0-based) of a side in ``sides`` is an MoE layer iff ``i % freq == offset % freq``.
    ``expert_dropout`` None: the model's activation dropout. :meth:`check` checks choices and
    bounds (the options'), then what lies between options.
    """

    def check(self) -> None:
        check_declared(self)
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"moe_top_k={self.top_k} must be in [1, {self.num_experts}]")
        self.conventions().check(self.top_k)
        if self.router != TOPK_ROUTER.name:
            for option in TOP_K_SCORES:
                if getattr(self, option.name) != option.default:
                    raise ValueError(
                        f"moe_{option.name}={getattr(self, option.name)!r} applies to the topk "
                        f"router, not moe_router={self.router}"
                    )
        if self.router == EXPERT_CHOICE_ROUTER.name and self.sides != "encoder":
            raise ValueError(
                f"moe_router=expert_choice with moe_sides={self.sides}: {DECODER_REFUSAL}"
            )
        if self.num_shared_experts and self.cmr:
            raise ValueError(
                f"moe_num_shared_experts={self.num_shared_experts} with moe_cmr=True: both put a "
                "dense FFN beside the experts (added, or mixed by CMR's gate); choose one"
            )
        if self.shared_expert_gate and not self.num_shared_experts:
            raise ValueError("moe_shared_expert_gate=True needs moe_num_shared_experts >= 1")

    def routed(self) -> MoEOptions:
        """These options with fine-grained segmentation applied (DeepSeekMoE §3.1): ``m``
        times the experts and the choices per token (the width is :meth:`expert_width`'s)."""
        m = self.expert_segments
        if m == 1:
            return self
        return dataclasses.replace(
            self, num_experts=m * self.num_experts, top_k=m * self.top_k, expert_segments=1
        )

    def expert_width(self, d_ff: int) -> int:
        """A routed (and a shared) expert's hidden width: ``expert_ffn_dim`` or the model's FFN
        width, divided by ``expert_segments``."""
        width = self.expert_ffn_dim or d_ff
        if width % self.expert_segments:
            raise ValueError(
                f"moe_expert_segments={self.expert_segments} must divide the expert width {width} "
                "(model.moe.expert_ffn_dim, else the model's FFN width)"
            )
        return width // self.expert_segments

    def bank_activation(self, activation_fn: str) -> str:
        """The experts' activation: ``expert_activation`` (a GLU), else the equivalent of
        fairseq's ``--activation-fn``."""
        if self.expert_activation != "auto":
            return self.expert_activation
        if activation_fn not in EXPERT_ACTIVATIONS:
            raise ValueError(
                f"--activation-fn {activation_fn} has no MoE expert equivalent; "
                f"use one of {sorted(EXPERT_ACTIVATIONS)}"
            )
        return EXPERT_ACTIVATIONS[activation_fn]

    def conventions(self) -> RoutingConventions:
        return RoutingConventions(
            self.balance_choices, self.renormalize, self.second_expert_policy,
            self.capacity_formula, self.eval_capacity_token_fraction,
        )  # fmt: skip

    def is_moe_layer(self, side: str, index: int) -> bool:
        return self.sides in (side, "both") and index % self.freq == self.offset % self.freq

    def build_block(
        self, d_model: int, d_ff: int, activation_fn: str, activation_dropout: float, cfg=None
    ) -> MoEFeedForward | ConditionalMoE | SharedExpertMoE:
        """The MoE FFN: router (``model.moe.router``, :class:`~moe_mt.models.families.RouterKind`;
        ``cfg``: fairseq's args, for a plugin router's own options), the experts
        (:meth:`routed`, :meth:`expert_width`, :meth:`bank_activation`), capacity factors (none
        for expert choice, whose router picks exactly its tokens), conventions, EOM and the
        balance scope; with ``num_shared_experts``, inside :class:`~moe_mt.moe.SharedExpertMoE`
        with one FFN of that many experts' width; with ``cmr``, inside
        :class:`~moe_mt.moe.ConditionalMoE` with a shared FFN of the experts' width (hidden
        dropout: the model's activation dropout)."""
        activation = self.bank_activation(activation_fn)
        routed, width = self.routed(), self.expert_width(d_ff)
        router = families.router_kind(self.router).build(d_model, routed, cfg)
        dropout = activation_dropout if self.expert_dropout is None else self.expert_dropout
        experts = ExpertBank(
            routed.num_experts, d_model, width, activation=activation, dropout=dropout
        )
        chooses_tokens = self.router == EXPERT_CHOICE_ROUTER.name
        block = MoEFeedForward(
            router, experts,
            None if chooses_tokens else self.capacity_factor,
            None if chooses_tokens else self.eval_capacity_factor,
            self.conventions(), self.eom, balance_scope=self.balance_scope,
        )  # fmt: skip
        if self.num_shared_experts:
            shared_width = self.num_shared_experts * width
            shared = ExpertBank(
                1, d_model, shared_width, activation=activation, dropout=activation_dropout
            )
            return SharedExpertMoE(block, shared, gate=self.shared_expert_gate)
        if not self.cmr:
            return block
        shared = ExpertBank(1, d_model, width, activation=activation, dropout=activation_dropout)
        return ConditionalMoE(block, shared, self.cmr_gate_dropout)


def build_topk_router(d_in: int, options: MoEOptions, cfg) -> TopKRouter:
    """The top-k gate (:class:`~moe_mt.moe.TopKRouter`): ``router_init_scale``, ``jitter``,
    ``score_func``, ``route_norm``, ``route_scale`` and, with ``bias_balance``, the bias's
    ``bias_update_rate``."""
    return TopKRouter(
        d_in, options.num_experts, options.top_k, options.jitter, options.router_init_scale,
        normalize_top_k=options.route_norm, score_func=options.score_func,
        route_scale=options.route_scale,
        bias_update_rate=options.bias_update_rate if options.bias_balance else 0.0,
    )  # fmt: skip


def build_expert_choice_router(d_in: int, options: MoEOptions, cfg) -> ExpertChoiceRouter:
    """Expert-choice routing (:class:`~moe_mt.moe.ExpertChoiceRouter`): each expert takes
    ``ceil(ec_capacity_factor * T / E)`` tokens."""
    return ExpertChoiceRouter(
        d_in, options.num_experts, options.ec_capacity_factor, options.router_init_scale
    )


def build_cosine_router(d_in: int, options: MoEOptions, cfg) -> CosineRouter:
    """X-MoE's cosine router in a ``router_dim`` space (:class:`~moe_mt.moe.CosineRouter`)."""
    return CosineRouter(d_in, options.num_experts, options.top_k, d_route=options.router_dim)


def count_cmr_block(block: ConditionalMoE, sentence_tokens: int) -> BlockCount:
    """:func:`count_routed_block` of the MoE block plus the shared FFN and the gate per token."""
    inner = count_routed_block(block.moe, sentence_tokens)
    return BlockCount(
        macs=inner.macs + expert_macs(block.shared) + block.shared.d_model,
        expert_parameters=inner.expert_parameters,
        inactive_parameters=inner.inactive_parameters,
    )


def count_shared_block(block: SharedExpertMoE, sentence_tokens: int) -> BlockCount:
    """:func:`count_routed_block` of the routed block plus the shared experts (always active,
    so not counted as expert weights) and their gate per token."""
    inner = count_routed_block(block.moe, sentence_tokens)
    gate = 0 if block.gate is None else block.shared.d_model
    return BlockCount(
        macs=inner.macs + expert_macs(block.shared) + gate,
        expert_parameters=inner.expert_parameters,
        inactive_parameters=inner.inactive_parameters,
    )


def expert_macs(bank: ExpertBank) -> int:
    """Multiply-accumulates of one expert on one row: one per element of its weight matrices
    (``d f + f o``; a GLU expert's third matrix ``w3`` adds ``d f``)."""
    return sum(p.numel() for p in bank.parameters() if p.dim() == 3) // bank.num_experts


def count_routed_block(
    block: MoEFeedForward, sentence_tokens: int, reach: int | None = None
) -> BlockCount:
    """Summary counts of a routed MoE FFN per routed row (token or sub-token).

    MACs: the router's own (:meth:`~moe_mt.moe.routing.Router.macs_per_row`: ``d E``; cosine
    ``d r + r E``; none for THOR) plus the experts a row uses
    (:meth:`~moe_mt.moe.routing.Router.choices_per_row`: ``k``; ``c`` on average for expert
    choice), each :func:`expert_macs`. Fine-grained experts (``m E`` experts of width ``f / m``,
    top ``m k``) therefore cost ``d m E + 2 k d f``: the dense FFN's expert cost at ``m k``
    experts of a ``1 / m`` width. ``reach`` (default: the choices per row, rounded): experts one
    token can use; the others' weights are inactive (MH-MoE's ``h`` sub-tokens reach
    ``min(E, h k)``).
    """
    bank, choices = block.experts, block.router.choices_per_row()
    reach = round(choices) if reach is None else reach
    per_expert = parameter_count(bank.parameters()) // bank.num_experts
    return BlockCount(
        macs=block.router.macs_per_row() + round(choices * expert_macs(bank)),
        expert_parameters=per_expert * bank.num_experts,
        inactive_parameters=per_expert * max(bank.num_experts - reach, 0),
    )


def expert_parallel_size(cfg) -> int | None:
    """``--moe-expert-parallel-size`` (``model.expert_parallel_size``); None when not set
    (checkpoints written before it existed do not hold it)."""
    return getattr(cfg, "moe_expert_parallel_size", None)


def prepare_block(block: nn.Module, cfg, name: str) -> nn.Module:
    """Expert parallelism for one MoE block (see :mod:`moe_mt.moe.expert_parallel`).

    With ``model.expert_parallel_size`` set (any value, 1 included, so that a one-rank run
    draws as a ``P``-rank one): the router draws from a :class:`SharedDraws` generator (seeded
    from ``--seed``, the layer name and the update), and the expert parameters carry
    ``expert = True`` (left out of fairseq's gradient-norm, scaled by its clip coefficient).
    With ``P > 1`` and torch.distributed initialised with more than one rank, the block keeps
    only this rank's ``E / P`` experts (:class:`ExpertParallelMoE`); in one process (``moemt
    eval`` / ``translate`` of an expert-parallel run) it keeps all of them.
    """
    size = expert_parallel_size(cfg)
    if size is None:
        return block
    inner = block if isinstance(block, MoEFeedForward) else getattr(block, "moe", None)
    if not isinstance(inner, MoEFeedForward):
        if size > 1:
            raise MoeMtError(f"model.expert_parallel_size={size}: {SOFT_MOE_REFUSAL}")
        return block
    if size > 1 and isinstance(inner.router, ExpertChoiceRouter):
        raise MoeMtError(f"model.expert_parallel_size={size}: {EXPERT_PARALLEL_REFUSAL}")
    if size < 1 or inner.num_experts % size:
        raise MoeMtError(
            f"model.expert_parallel_size={size} must divide the number of experts "
            f"{inner.num_experts} (model.moe.num_experts)"
        )
    if hasattr(inner.router, "generator"):
        inner.shared_draws = SharedDraws(int(getattr(cfg, "seed", 1)), name)
        inner.router.generator = inner.shared_draws.generator
    if size > 1 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        if world % size:
            raise MoeMtError(
                f"model.expert_parallel_size={size} must divide the number of processes {world} "
                "(train.distributed_world_size)"
            )
        sharded = ExpertParallelMoE.from_layer(inner, expert_parallel_groups(size))
        if hasattr(inner, "shared_draws"):
            sharded.shared_draws = inner.shared_draws
        if inner is block:
            block = sharded
        else:
            block.moe = sharded
        inner = sharded
    for param in inner.experts.parameters():
        param.expert = True
    return block


class _MoEFFNMixin:
    """Swaps a fairseq layer's FFN for ``self.moe`` (see the module docstring)."""

    # fairseq's __init__ reads the dense FFN's shapes; meta tensors give them without memory.
    def build_fc1(self, input_dim, output_dim, q_noise, qn_block_size):
        return nn.Linear(input_dim, output_dim, device="meta")

    def build_fc2(self, input_dim, output_dim, q_noise, qn_block_size):
        return nn.Linear(input_dim, output_dim, device="meta")

    def _install_moe(self, block: MoEFeedForward, name: str) -> None:
        self.moe = block
        self.moe_name = name
        # Expert hidden dropout is the experts' own; the FFN steps around fc1 become identities.
        self.activation_dropout_module = nn.Identity()
        self.activation_fn = _identity
        self.fc2 = nn.Identity()
        # fc1 is an alias of the block's call, not a registered module: the block's weights
        # appear once in the state dict, under `moe.`.
        del self._modules["fc1"]
        object.__setattr__(self, "fc1", self._moe_ffn)

    def _moe_ffn(self, x: Tensor) -> Tensor:
        out = self.moe.forward_tbd(x, _PADDING_MASK.get())
        for observer in _OBSERVERS.get():
            observer(self.moe_name, out)
        return out.y


def _identity(x: Tensor) -> Tensor:
    return x


def _activation_dropout(cfg) -> float:
    # fairseq's layers fall back to relu_dropout when activation_dropout is 0.
    return float(cfg.activation_dropout or getattr(cfg, "relu_dropout", 0) or 0)


class MoEEncoderLayer(_MoEFFNMixin, MoeMtEncoderLayer):
    """The baseline's encoder layer with an MoE FFN (``block``), reporting as ``name``."""

    def __init__(self, cfg, block: MoEFeedForward, name: str, return_fc: bool = False):
        super().__init__(cfg, return_fc=return_fc)
        self._install_moe(prepare_block(block, cfg, name), name)

    def forward(self, x, encoder_padding_mask: Tensor | None, attn_mask: Tensor | None = None):
        with _padding_scope(encoder_padding_mask):
            return super().forward(x, encoder_padding_mask, attn_mask)


class MoEDecoderLayer(_MoEFFNMixin, TransformerDecoderLayerBase):
    """fairseq's decoder layer with an MoE FFN (``block``), reporting as ``name``."""

    def __init__(self, cfg, block: MoEFeedForward, name: str, no_encoder_attn: bool = False):
        if getattr(cfg, "scale_fc", False):
            raise ValueError("--scale-fc (a LayerNorm on the FFN's hidden layer) is not supported")
        super().__init__(cfg, no_encoder_attn)
        self._install_moe(prepare_block(block, cfg, name), name)

    def forward(
        self,
        x,
        encoder_out: Tensor | None = None,
        encoder_padding_mask: Tensor | None = None,
        incremental_state=None,
        prev_self_attn_state=None,
        prev_attn_state=None,
        self_attn_mask: Tensor | None = None,
        self_attn_padding_mask: Tensor | None = None,
        need_attn: bool = False,
        need_head_weights: bool = False,
    ):
        with _padding_scope(self_attn_padding_mask):
            return super().forward(
                x, encoder_out, encoder_padding_mask, incremental_state, prev_self_attn_state,
                prev_attn_state, self_attn_mask, self_attn_padding_mask, need_attn,
                need_head_weights,
            )  # fmt: skip


class MoEEncoder(MoeMtEncoder):
    """The baseline encoder; layers chosen by :meth:`MoEOptions.is_moe_layer` are MoE layers.

    ``options_class`` reads the family's options and builds its block (a family without a
    router, THOR, brings its own: ``from_cfg``, ``is_moe_layer`` and ``build_block``). A family
    with another block or layer overrides :meth:`build_block` and ``layer_class`` only.
    """

    options_class = MoEOptions
    layer_class = MoEEncoderLayer

    def moe_options(self, cfg):
        return self.options_class.from_cfg(cfg)

    def build_block(self, cfg, options, d_model: int, d_ff: int) -> nn.Module:
        return options.build_block(
            d_model, d_ff, cfg.activation_fn, _activation_dropout(cfg), cfg=cfg
        )

    def make_layer(self, cfg, index: int) -> nn.Module:
        options = self.moe_options(cfg)
        if not options.is_moe_layer("encoder", index):
            return super().make_layer(cfg, index)
        block = self.build_block(cfg, options, cfg.encoder.embed_dim, cfg.encoder.ffn_embed_dim)
        name = f"encoder.layers.{index}"
        return self.layer_class(cfg, block, name, return_fc=self.return_fc)


class MoEDecoder(MoeMtDecoder):
    """The baseline decoder; layers chosen by :meth:`MoEOptions.is_moe_layer` are MoE layers
    (``options_class``, ``layer_class`` and :meth:`build_block` as in :class:`MoEEncoder`)."""

    options_class = MoEOptions
    layer_class = MoEDecoderLayer

    moe_options = MoEEncoder.moe_options
    build_block = MoEEncoder.build_block

    def make_layer(self, cfg, index: int, no_encoder_attn: bool) -> nn.Module:
        options = self.moe_options(cfg)
        if not options.is_moe_layer("decoder", index):
            return super().make_layer(cfg, index, no_encoder_attn)
        block = self.build_block(cfg, options, cfg.decoder.embed_dim, cfg.decoder.ffn_embed_dim)
        return self.layer_class(cfg, block, f"decoder.layers.{index}", no_encoder_attn)


class MoETransformerModel(MoeMtTransformerModel):
    """The baseline model with MoE encoder/decoder; ``forward`` adds ``extra["moe"]``.

    ``extra["moe"]`` is the list of :class:`MoELayerOutput` of this forward pass (encoder layers,
    then decoder layers); nothing is kept on the modules afterwards. Families register a
    subclass with their ``add_args`` and architectures.
    """

    encoder_class = MoEEncoder
    decoder_class = MoEDecoder

    def forward(self, *args, **kwargs):
        with collect_moe_outputs() as collected:
            x, extra = super().forward(*args, **kwargs)
        extra["moe"] = collected
        return x, extra

    def moe_layers(self) -> list[tuple[str, MoEFeedForward]]:
        """``(name, block)`` of every MoE layer, encoder first."""
        return [(m.moe_name, m.moe) for m in self.modules() if isinstance(m, _MoEFFNMixin)]

    def single_expert(self) -> int | None:
        """The expert that every token goes through in every MoE layer at inference, when there
        is one: the model is then the dense network whose FFN there is that expert (export
        makes it one). None: it routes (the routed families)."""
        return None

    def draws_experts(self) -> bool:
        """Whether its inference can draw experts at random (:meth:`random_draws`)."""
        return False

    def draw_seed(self) -> int | None:
        """The seed of its random expert draws now, or None when it does not draw now."""
        return None

    def random_draws(self, seed: int) -> contextlib.AbstractContextManager[None]:
        """Inside the block, inference draws experts at random with ``seed``; the model's own
        inference settings are restored after it."""
        raise NotImplementedError(f"{type(self).__name__} does not draw experts at random")

    def not_dense_because(self) -> str:
        """Why the model is no dense network at inference, and the way out (one line, after the
        checkpoint and architecture)."""
        return (
            "routes each token to experts, which CTranslate2 cannot run (dense Transformers "
            "only); distil it into a dense model with `moemt distill` and export the student, "
            "or export its experts merged with eval.merge_experts=most_used | usage_average (a "
            "different model: score it)"
        )

    @classmethod
    def build_model(cls, args, task):
        """fairseq's build; with sharded experts (expert parallelism on ``P > 1`` ranks) also
        leave them out of DDP's all-reduce and make checkpoints hold all ``E`` experts."""
        model = super().build_model(args, task)
        if any(isinstance(m, ShardedExpertBank) for m in model.modules()):
            backend = getattr(args, "ddp_backend", "c10d")
            if backend not in ("c10d", "pytorch_ddp"):
                raise MoeMtError(
                    f"model.expert_parallel_size needs the c10d ddp backend (torch's "
                    f"DistributedDataParallel), not {backend}: only it can leave the sharded "
                    "experts out of the gradient all-reduce"
                )
            half = getattr(args, "fp16", False) or getattr(args, "bf16", False)
            efficient = getattr(args, "memory_efficient_fp16", False) or getattr(
                args, "memory_efficient_bf16", False
            )
            if half and not efficient:
                raise MoeMtError(
                    "model.expert_parallel_size with train.fp16/bf16 needs fairseq's "
                    "--memory-efficient-fp16/bf16 (train.fairseq_args): its other fp16 optimizer "
                    "keeps one flattened fp32 copy whose state cannot be split per expert"
                )
            from moe_mt.models import checkpoint_sharding

            ddp_ignore_expert_params(model)
            checkpoint_sharding.install()
        return model

    def all_reduce_grads(self) -> None:
        """Called by fairseq's optimizer after DDP averaged the shared gradients, once per update
        before the optimizer step (DDP has no method of this name, so its proxy forwards the
        call here): sum and scale the sharded expert gradients
        (:func:`~moe_mt.moe.expert_parallel.reduce_expert_grads`), and move the bias of bias
        balancing by the update's load (:func:`~moe_mt.moe.balance.end_update`)."""
        reduce_expert_grads(self)
        end_update(self)
