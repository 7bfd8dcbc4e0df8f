"""Options of Switch (``switch_transformer_*``) and X-MoE (``xmoe_transformer_*``), the routed
families; MH-MoE, Soft MoE and THOR reuse the placement and routing ones declared here
(:data:`ROUTED`). The reference conventions (:mod:`moe_mt.moe.conventions`) and NLLB-MoE's
regularisers (EOM, CMR) are Switch's and X-MoE's only.

:data:`MOE_DEFAULTS` is the defaults table of :mod:`moe_mt.models.switch` (X-MoE: the same with
the cosine router). The loss keys default to None: the criterion's own defaults apply
(``moe_label_smoothed_cross_entropy``, :mod:`moe_mt.criterions.moe_criterion`).

Like every ``moe_mt/models/<family>_options.py``, this module imports neither fairseq nor torch:
the recipe schema reads it at every ``moemt`` command (:mod:`moe_mt.models.families`).
"""

from __future__ import annotations

from moe_mt.models.families import OptionSpec, declare_options

MOE_DEFAULTS = {
    "moe_num_experts": 8,
    "moe_top_k": 1,
    "moe_freq": 2,
    "moe_offset": 1,
    "moe_sides": "both",
    "moe_router": "topk",
    "moe_router_dim": 16,
    "moe_router_init_scale": 0.1,
    "moe_jitter": 0.0,
    "moe_capacity_factor": 1.25,
    "moe_eval_capacity_factor": None,
    "moe_expert_dropout": None,
    # Reference conventions (moe_mt/moe/conventions.py): moemt's own by default.
    "moe_balance_choices": "all",
    "moe_renormalize": "before",
    "moe_second_expert_policy": "all",
    "moe_capacity_formula": "moemt",
    "moe_eval_capacity_token_fraction": None,
    # NLLB-MoE's regularisers (moe_mt/moe/eom.py, cmr.py): off by default.
    "moe_eom": 0.0,
    "moe_cmr": False,
    "moe_cmr_gate_dropout": 0.0,
}
XMOE_DEFAULTS = {**MOE_DEFAULTS, "moe_router": "cosine"}

#: (type, help) of every routed family's option, in the order recipes list them.
HELP = {
    "num_experts": (int, "experts per MoE layer"),
    "top_k": (int, "experts per token: 1 = Switch, 2 = GShard-style"),
    "freq": (int, "every freq-th layer of a side is an MoE layer ..."),
    "offset": (int, "... the layers with index % freq == offset % freq (0-based)"),
    "sides": (str, "encoder | decoder | both"),
    "router": (str, "topk (Switch) | cosine (X-MoE)"),
    "router_dim": (int, "cosine router's routing width"),
    "router_init_scale": (float, "top-k gate init std sqrt(scale / d)"),
    "jitter": (float, "top-k gate input noise x * U(1 - j, 1 + j) in training"),
    "capacity_factor": (float, "training capacity factor (<= 0: no dropping)"),
    "eval_capacity_factor": (float, "eval capacity factor (null or <= 0: no dropping)"),
    "expert_dropout": (float, "dropout inside experts (null: model.activation_dropout)"),
    "balance_choices": (str, "balance loss over all | first (GShard, fairseq) choices"),
    "renormalize": (str, "top-k weights renormalised before | after (fairseq) capacity drops"),
    "second_expert_policy": (
        str,
        "top-2's second expert: all (argmax) | sampling (GShard, fairseq) | random",
    ),
    "capacity_formula": (
        str,
        "moemt: ceil(cf k T / E), T non-pad | fairseq: int(cf k ceil(S / E)), S with pads",
    ),
    "eval_capacity_token_fraction": (
        float,
        "capacity_formula=fairseq: eval capacity ceil(f S) when > 0 (fairseq: 0.25)",
    ),
    "eom": (float, "Expert Output Masking: drop a token's expert output with this probability"),
    "cmr": (bool, "Conditional MoE Routing: y = (1 - g) FFN_shared(x) + g MoE(x)"),
    "cmr_gate_dropout": (float, "dropout on CMR's gate g (fairseq --cmr-gate-drop)"),
}
#: The options every routed family shares (MH-MoE and Soft MoE take these only).
ROUTED = tuple(HELP)[: tuple(HELP).index("expert_dropout") + 1]
#: Reference conventions and NLLB-MoE's regularisers: Switch and X-MoE.
CONVENTIONS = ("balance_choices", "renormalize", "second_expert_policy", "capacity_formula",
               "eval_capacity_token_fraction")  # fmt: skip
REGULARISERS = ("eom", "cmr", "cmr_gate_dropout")
#: The criterion's keys (moe_label_smoothed_cross_entropy), defaults in its config dataclass.
LOSS_OPTIONS = (
    OptionSpec("balance_weight", float, None, "criterion: weight of the load-balancing loss"),
    OptionSpec("z_loss", bool, None, "criterion: add the router z-loss"),
    OptionSpec("z_loss_weight", float, None, "criterion: weight of the router z-loss"),
)


def routed_options(defaults: dict, names=ROUTED) -> tuple[OptionSpec, ...]:
    """The specs of ``names`` (keys of :data:`HELP`) with their defaults from ``defaults``."""
    return tuple(
        OptionSpec(name, HELP[name][0], defaults.get(f"moe_{name}"), HELP[name][1])
        for name in names
    )


SWITCH_OPTIONS = (
    routed_options(MOE_DEFAULTS) + LOSS_OPTIONS
    + routed_options(MOE_DEFAULTS, CONVENTIONS + REGULARISERS)
)  # fmt: skip
XMOE_OPTIONS = (
    routed_options(XMOE_DEFAULTS) + LOSS_OPTIONS
    + routed_options(XMOE_DEFAULTS, CONVENTIONS + REGULARISERS)
)  # fmt: skip

declare_options("switch", SWITCH_OPTIONS)
declare_options("xmoe", XMOE_OPTIONS)
