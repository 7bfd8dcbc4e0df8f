"""THOR, Transformer with stochastic experts (Zuo et al., ICLR 2022).

One registered model, ``moemt_thor_transformer`` (:class:`ThorTransformerModel`): the dense
baseline whose chosen layers (``moe_freq`` / ``moe_offset`` / ``moe_sides``, as the other MoE
families) hold ``moe_num_experts`` FFN experts and no gate. Architectures
``thor_transformer_<size>`` for each size of :data:`moe_mt.models.transformer.SIZES`.

- Training: each expert layer draws its expert uniformly at random at every forward pass, from
  torch's global generator (fairseq seeds it with ``seed + update``), for the whole batch (as
  the authors' code) or per sentence (``moe_granularity``). The two passes per update and the
  consistency loss are the criterion's (``thor_label_smoothed_cross_entropy``).
- Inference (``moe_inference``, set from ``eval.thor_inference`` when ``moemt eval`` /
  ``moemt translate`` load a checkpoint, or by :meth:`ThorTransformerModel.set_inference`):

  - ``random``: one expert per layer per sentence, a function of ``moe_inference_seed``, the
    layer's name and a hash of the sentence's non-pad source tokens (:func:`source_keys`). The
    key travels with the sentence (``encoder_out["thor_sentence_key"]``, reordered with the
    beams), so a sentence gets the same experts at every beam step, for every hypothesis, alone
    or in any batch. The authors' script (``--inference-level 1``, their "sentence level")
    draws instead one expert per time step, shared by every sentence of the batch (and so by
    every hypothesis of a beam): a fresh draw at each decoding step and at each source position,
    not one per sentence or per hypothesis (``--inference-level 0`` draws per token).
  - ``fixed``: expert ``moe_inference_expert`` in every expert layer (the dense model's cost);
  - ``mean``: the average of all experts' outputs (``E`` times the FFN cost of those layers).

Options and their defaults (2 experts in every other layer from the first, as the authors'
code; batch-level draws; ``random`` inference): :mod:`moe_mt.models.thor_options`, each declared
once (``moemt config RECIPE model.moe`` lists them).

``moe_expert_parallel_size`` (default None): the experts of every expert layer spread over that
many ranks (:mod:`moe_mt.moe.expert_parallel`). Once set, even to 1, the training draws come from
a generator seeded from ``--seed``, the layer name and the update, the same on every rank and at
every world size, instead of torch's global generator; per-sentence and per-token draws are those
of the whole global batch, of which each rank takes its sentences' / tokens' part.

fairseq saves these args in every checkpoint, so a model reloads from its checkpoint alone.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import Tensor, nn

from moe_mt.models import families
from moe_mt.models.moe_layers import (
    EXPERT_ACTIVATIONS,
    MoEDecoder,
    MoEEncoder,
    MoEOptions,
    MoETransformerModel,
    count_routed_block,
)
from moe_mt.models.thor_options import LAYER_OPTIONS, THOR
from moe_mt.models.transformer import register_family_sizes, register_model_again
from moe_mt.moe import ExpertBank, MoEFeedForward, RandomRouter
from moe_mt.moe.router_random import MODES
from moe_mt.moe.scoped import scoped_value

MODEL_NAME = "moemt_thor_transformer"
#: The encoder-output entry holding each sentence's key ([b] long), reordered with the beams.
SENTENCE_KEY = "thor_sentence_key"

# Keys and hashes live in [0, 2^31 - 1): products of two of them fit in int64.
_PRIME = 2**31 - 1
_SENTENCE_KEYS: ContextVar[Tensor | None] = ContextVar("moemt_thor_sentence_keys", default=None)


# -- keys: which expert a sentence gets in `random` inference ---------------------------------


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") % _PRIME


def source_keys(src_tokens: Tensor, pad: int) -> Tensor:
    """``[b]`` long: a hash of each row's non-pad tokens of ``src_tokens`` ``[b, n]``.

    Independent of the padding (side and amount) and of the other sentences of the batch.
    """
    rows = src_tokens.detach().cpu().numpy()
    keys = [_digest(row[row != pad].astype("<i8").tobytes()) for row in rows]
    return torch.tensor(keys, dtype=torch.long, device=src_tokens.device)


def layer_salt(seed: int, name: str) -> int:
    """The per-layer, per-seed constant mixed into the sentence keys."""
    return _digest(f"{seed}/{name}".encode())


def keyed_experts(keys: Tensor, salt: int, num_experts: int) -> Tensor:
    """``[b]`` long in ``[0, num_experts)``: a hash of each key with ``salt``.

    Two multiply-mod-prime rounds with xor-shifts in between (a hash finaliser), so that
    layers (different salts) choose independently of one another.
    """
    h = keys ^ salt
    h = (h * 0x5BD1E995) % _PRIME
    h = h ^ (h >> 15)
    h = (h * 0x27D4EB2F) % _PRIME
    h = h ^ (h >> 13)
    return h % num_experts


def sentence_key_scope(keys: Tensor | None) -> contextlib.AbstractContextManager[None]:
    """Make ``keys`` ``[b]`` (one per batch column) visible to the routers run in the block."""
    return scoped_value(_SENTENCE_KEYS, keys)


# -- the router -------------------------------------------------------------------------------


class ThorRouter(RandomRouter):
    """THOR's gate-free router: random draws in training, the inference mode in eval.

    Args:
        num_experts: ``e``.
        granularity: training draw, ``"batch"`` / ``"sentence"`` / ``"token"``.
        inference: ``"random"`` (keyed per sentence, see the module docstring), ``"fixed"``
            or ``"mean"``.
        inference_expert: the expert of ``"fixed"``.
        seed: the seed of ``"random"`` inference.

    ``mode`` (read by :class:`~moe_mt.moe.RandomRouter`) is ``"random"`` in training and
    ``inference`` in eval; ``name`` (the layer's, set by the model) salts the keyed draws.
    """

    def __init__(
        self,
        num_experts: int,
        granularity: str = "batch",
        inference: str = "random",
        inference_expert: int = 0,
        seed: int = 1,
    ) -> None:
        super().__init__(num_experts, granularity, "random", inference_expert)
        self.inference = inference
        self.seed = seed
        self.name = ""

    @property
    def mode(self) -> str:
        return "random" if self.training else self.inference

    @mode.setter
    def mode(self, value: str) -> None:  # RandomRouter's constructor assigns it
        self.inference = value

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, granularity={self.granularity}, "
            f"inference={self.inference}, expert={self.fixed_expert}, seed={self.seed}"
        )

    def draw(
        self,
        t: int,
        sentence_index: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if self.training:
            return super().draw(t, sentence_index, generator)
        keys = _SENTENCE_KEYS.get()
        if keys is None or sentence_index is None:
            raise ValueError(
                "THOR random inference needs the sentence keys of the encoder "
                "(run the model's encoder, or use sentence_key_scope)"
            )
        experts = keyed_experts(keys, layer_salt(self.seed, self.name), self.num_experts)
        return experts[sentence_index.to(experts.device, non_blocking=True)]


# -- options, layers, model -------------------------------------------------------------------


@families.options_record(LAYER_OPTIONS)
class ThorOptions:
    """Where THOR's expert layers are and how they draw (:data:`.thor_options.LAYER_OPTIONS`,
    read from fairseq's ``--moe-*`` model args; choices and bounds checked by ``from_cfg``)."""

    # The same placement rule as the routed families.
    is_moe_layer = MoEOptions.is_moe_layer

    def check(self) -> None:
        families.check_declared(self)
        if not 0 <= self.inference_expert < self.num_experts:
            raise ValueError(
                f"moe_inference_expert={self.inference_expert} not in [0, {self.num_experts})"
            )

    def build_block(
        self, d_model: int, d_ff: int, activation_fn: str, activation_dropout: float, cfg=None
    ) -> MoEFeedForward:
        """``num_experts`` experts of width ``d_ff`` behind a :class:`ThorRouter`; no capacity
        limit (a batch-level draw sends every token to one expert)."""
        if activation_fn not in EXPERT_ACTIVATIONS:
            raise ValueError(
                f"--activation-fn {activation_fn} has no expert equivalent; "
                f"use one of {sorted(EXPERT_ACTIVATIONS)}"
            )
        router = ThorRouter(
            self.num_experts, self.granularity, self.inference, self.inference_expert,
            self.inference_seed,
        )  # fmt: skip
        dropout = activation_dropout if self.expert_dropout is None else self.expert_dropout
        experts = ExpertBank(
            self.num_experts, d_model, d_ff, activation=EXPERT_ACTIVATIONS[activation_fn],
            dropout=dropout,
        )  # fmt: skip
        return MoEFeedForward(router, experts, capacity_factor=None, eval_capacity_factor=None)


def _name_router(layer: nn.Module) -> nn.Module:
    if hasattr(layer, "moe"):
        layer.moe.router.name = layer.moe_name
    return layer


class ThorEncoder(MoEEncoder):
    """The MoE encoder with THOR's layers; in eval mode it computes and returns each sentence's
    key (training draws experts at random and needs none)."""

    options_class = ThorOptions

    def make_layer(self, cfg, index: int) -> nn.Module:
        return _name_router(super().make_layer(cfg, index))

    def forward(
        self, src_tokens, src_lengths=None, return_all_hiddens: bool = False, token_embeddings=None
    ):
        # Training draws at random and reads no key: hashing the tokens on the host would make
        # every step wait for the GPU.
        keys = None if self.training else source_keys(src_tokens, self.padding_idx)
        with sentence_key_scope(keys):
            out = super().forward(src_tokens, src_lengths, return_all_hiddens, token_embeddings)
        out[SENTENCE_KEY] = [keys]
        return out

    def reorder_encoder_out(self, encoder_out, new_order):
        reordered = super().reorder_encoder_out(encoder_out, new_order)
        keys = (encoder_out.get(SENTENCE_KEY) or [None])[0]
        if keys is not None:
            reordered[SENTENCE_KEY] = [keys.index_select(0, new_order)]
        return reordered


class ThorDecoder(MoEDecoder):
    """The MoE decoder with THOR's layers; its routers read the keys of ``encoder_out``."""

    options_class = ThorOptions

    def make_layer(self, cfg, index: int, no_encoder_attn: bool) -> nn.Module:
        return _name_router(super().make_layer(cfg, index, no_encoder_attn))

    def extract_features(self, prev_output_tokens, encoder_out=None, *args, **kwargs):
        keys = (encoder_out or {}).get(SENTENCE_KEY) or [None]
        with sentence_key_scope(keys[0]):
            return super().extract_features(prev_output_tokens, encoder_out, *args, **kwargs)


@register_model_again(MODEL_NAME)
class ThorTransformerModel(MoETransformerModel):
    """The dense baseline with THOR's stochastic expert layers (see the module docstring)."""

    encoder_class = ThorEncoder
    decoder_class = ThorDecoder

    @staticmethod
    def add_args(parser):
        MoETransformerModel.add_args(parser)
        families.add_arguments(parser, (THOR.name,), "THOR stochastic experts (moemt)")

    def routers(self) -> list[ThorRouter]:
        return [block.router for _, block in self.moe_layers()]

    def single_expert(self) -> int | None:
        """With ``fixed`` inference, expert ``moe_inference_expert`` in every expert layer and no
        gate (Zuo et al. 2022): structurally the dense model whose FFN is that expert."""
        routers = self.routers()
        if {r.inference for r in routers} != {"fixed"}:
            return None
        (expert,) = {r.fixed_expert for r in routers}  # set_inference gives every layer one
        return expert

    def draws_experts(self) -> bool:
        return True

    def draw_seed(self) -> int | None:
        routers = self.routers()
        if {r.inference for r in routers} != {"random"} or len({r.seed for r in routers}) != 1:
            return None
        return routers[0].seed

    @contextlib.contextmanager
    def random_draws(self, seed: int) -> Iterator[None]:
        saved = [(r.inference, r.fixed_expert, r.seed) for r in self.routers()]
        self.set_inference("random", seed=seed)
        try:
            yield
        finally:
            for router, (mode, expert, old_seed) in zip(self.routers(), saved, strict=True):
                router.inference, router.fixed_expert, router.seed = mode, expert, old_seed

    def not_dense_because(self) -> str:
        modes = "/".join(sorted({r.inference for r in self.routers()}))
        return (
            f"with eval.thor_inference={modes} uses several experts per layer, which CTranslate2 "
            "cannot run; export it with eval.thor_inference=fixed (one expert per layer, "
            "eval.thor_expert) or distil it into a dense model with `moemt distill`"
        )

    def set_inference(self, mode: str, expert: int | None = None, seed: int | None = None) -> None:
        """Switch every expert layer's inference mode (and ``fixed`` expert, ``random`` seed)."""
        if mode not in MODES:
            raise ValueError(f"THOR inference {mode!r}: expected one of {MODES}")
        for router in self.routers():
            if expert is not None and not 0 <= expert < router.num_experts:
                raise ValueError(f"THOR expert {expert} not in [0, {router.num_experts})")
            router.inference = mode
            router.fixed_expert = router.fixed_expert if expert is None else expert
            router.seed = router.seed if seed is None else seed


ARCHITECTURES = register_family_sizes(MODEL_NAME, THOR)
families.register_counter(MoEFeedForward, count_routed_block)
