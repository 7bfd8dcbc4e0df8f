"""Switch Transformer (Fedus et al. 2022) and X-MoE (Chi et al. 2022) translation models.

One registered model, ``moemt_moe_transformer`` (:class:`SwitchTransformerModel`): the dense
baseline whose every ``moe_freq``-th layer has an MoE FFN (:mod:`moe_mt.models.moe_layers`).
Architectures, for each size of :data:`moe_mt.models.transformer.SIZES` (demo, iwslt, wmt,
wmt_big; the backbone is the dense baseline's of the same size):

- ``switch_transformer_<size>``: softmax top-k router (top-1 by default, ``--moe-top-k 2``
  for GShard-style top-2), Switch's load-balancing loss, capacity, jitter, optional z-loss;
- ``xmoe_transformer_<size>``: the same with X-MoE's cosine router in a ``--moe-router-dim``
  space with a learned temperature (``--moe-router cosine``).

Defaults (:data:`MOE_DEFAULTS`, stated once in :mod:`moe_mt.models.switch_options` with the
options' help; an option left unset takes it):

=========================  ==========  ===================================================
option                     default     meaning
=========================  ==========  ===================================================
moe_num_experts            8           experts per MoE layer
moe_top_k                  1           experts per token (1: Switch; 2: GShard-style)
moe_freq                   2           every moe_freq-th layer is MoE ...
moe_offset                 1           ... those with index % freq == offset % freq
                                       (0-based: layers 1, 3, 5 as in Switch and GShard)
moe_sides                  both        encoder | decoder | both
moe_router                 topk        topk (switch_*) | cosine (xmoe_*)
moe_router_dim             16          cosine router's routing width (X-MoE)
moe_router_init_scale      0.1         top-k gate init std sqrt(scale / d) (Switch §2.4;
                                       top-k router only)
moe_jitter                 0.0         multiplicative input noise of the top-k gate in
                                       training (top-k router only)
moe_capacity_factor        1.25        training capacity factor (<= 0: no dropping)
moe_eval_capacity_factor   None        eval capacity factor (None or <= 0: no dropping)
moe_expert_dropout         None        dropout inside experts (None: --activation-dropout)
moe_expert_parallel_size   None        experts spread over this many ranks (expert
                                       parallelism, :mod:`moe_mt.moe.expert_parallel`;
                                       set, even to 1, routers draw from shared generators)
=========================  ==========  ===================================================

Reference conventions (:mod:`moe_mt.moe.conventions`; moemt's own by default):
``moe_balance_choices`` all | first, ``moe_renormalize`` before | after,
``moe_second_expert_policy`` all | sampling | random, ``moe_capacity_formula`` moemt | fairseq
with ``moe_eval_capacity_token_fraction``. NLLB-MoE's regularisers (off by default):
``moe_eom`` (Expert Output Masking, :mod:`moe_mt.moe.eom`), ``moe_cmr`` and
``moe_cmr_gate_dropout`` (Conditional MoE Routing, :mod:`moe_mt.moe.cmr`).

The auxiliary-loss weights are the criterion's (``moe_label_smoothed_cross_entropy``).
fairseq saves these args in every checkpoint, so a model reloads from its checkpoint alone.
"""

from __future__ import annotations

from moe_mt.models.families import Family, register_family
from moe_mt.models.moe_layers import (
    ROUTERS,
    SIDES,
    MoETransformerModel,
    count_cmr_block,
    count_routed_block,
)
from moe_mt.models.switch_options import (
    MOE_DEFAULTS,
    SWITCH_OPTIONS,
    XMOE_DEFAULTS,
    XMOE_OPTIONS,
)
from moe_mt.models.transformer import register_model_again, register_sizes
from moe_mt.moe import ConditionalMoE, MoEFeedForward
from moe_mt.moe.conventions import (
    BALANCE_CHOICES,
    CAPACITY_FORMULAS,
    RENORMALIZE,
    SECOND_EXPERT_POLICIES,
)

MODEL_NAME = "moemt_moe_transformer"
CRITERION = "moe_label_smoothed_cross_entropy"


@register_model_again(MODEL_NAME)
class SwitchTransformerModel(MoETransformerModel):
    """The dense baseline with MoE FFNs in every ``moe_freq``-th layer (see the module doc)."""

    @staticmethod
    def add_args(parser):
        MoETransformerModel.add_args(parser)
        group = parser.add_argument_group("Mixture of Experts (moemt)")
        add = group.add_argument
        add("--moe-num-experts", type=int, metavar="N", help="experts per MoE layer")
        add("--moe-top-k", type=int, metavar="K", help="experts per token")
        add("--moe-freq", type=int, metavar="N", help="every N-th layer is an MoE layer")
        add("--moe-offset", type=int, metavar="I", help="MoE layers: index %% freq == I %% freq")
        add("--moe-sides", choices=SIDES, help="MoE layers in the encoder, decoder or both")
        add("--moe-router", choices=ROUTERS, help="topk (Switch) or cosine (X-MoE)")
        add("--moe-router-dim", type=int, metavar="R", help="cosine router's routing width")
        add("--moe-router-init-scale", type=float, help="top-k gate init std sqrt(scale / d)")
        add("--moe-jitter", type=float, help="top-k gate input noise x * U(1-j, 1+j) in training")
        add("--moe-capacity-factor", type=float, help="training capacity factor (<=0: none)")
        add("--moe-eval-capacity-factor", type=float, help="eval capacity factor (<=0: none)")
        add("--moe-expert-dropout", type=float, help="dropout inside the experts")
        add("--moe-balance-choices", choices=BALANCE_CHOICES, help="balance loss over all|first")
        add("--moe-renormalize", choices=RENORMALIZE, help="top-k renormalised before|after drops")
        add("--moe-second-expert-policy", choices=SECOND_EXPERT_POLICIES, help="top-2's 2nd expert")
        add("--moe-capacity-formula", choices=CAPACITY_FORMULAS, help="moemt | fairseq")
        add(
            "--moe-eval-capacity-token-fraction", type=float, help="fairseq formula: eval ceil(f S)"
        )
        add("--moe-eom", type=float, help="Expert Output Masking probability")
        add("--moe-cmr", action="store_true", default=None, help="Conditional MoE Routing")
        add("--moe-cmr-gate-dropout", type=float, help="dropout on the CMR gate")
        add(
            "--moe-expert-parallel-size", type=int, metavar="P",
            help="experts of every MoE layer spread over P ranks (model.expert_parallel_size)",
        )  # fmt: skip


def moe_defaults(args, **overrides) -> None:
    """Fill every ``moe_*`` option left unset (None) from :data:`MOE_DEFAULTS` / ``overrides``."""
    for name, value in {**MOE_DEFAULTS, **overrides}.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def _xmoe_defaults(args) -> None:
    moe_defaults(args, **XMOE_DEFAULTS)


ARCHITECTURES = register_sizes(MODEL_NAME, "switch_transformer", extra=moe_defaults) + (
    register_sizes(MODEL_NAME, "xmoe_transformer", extra=_xmoe_defaults)
)
SWITCH = register_family(
    Family(
        "switch", ("switch_transformer",), SWITCH_OPTIONS, CRITERION,
        {MoEFeedForward: count_routed_block, ConditionalMoE: count_cmr_block},
    )
)  # fmt: skip
XMOE = register_family(
    Family(
        "xmoe", ("xmoe_transformer",), XMOE_OPTIONS, CRITERION,
        {MoEFeedForward: count_routed_block, ConditionalMoE: count_cmr_block},
    )
)  # fmt: skip
