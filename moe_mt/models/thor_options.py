"""Options of THOR (``thor_transformer_*``): :data:`THOR_DEFAULTS` is the defaults table of
:mod:`moe_mt.models.thor`; placement keys are the routed families' (:mod:`.switch_options`),
the draw and inference keys THOR's. ``consistency_alpha`` is the criterion's
(``thor_label_smoothed_cross_entropy``, default in its config dataclass)."""

from __future__ import annotations

from moe_mt.models.families import OptionSpec, declare_options
from moe_mt.models.switch_options import routed_options

THOR_DEFAULTS = {
    "moe_num_experts": 2,
    "moe_freq": 2,
    "moe_offset": 0,
    "moe_sides": "both",
    "moe_granularity": "batch",
    "moe_inference": "random",
    "moe_inference_expert": 0,
    "moe_inference_seed": 1,
    "moe_expert_dropout": None,
}

THOR_OPTIONS = routed_options(
    THOR_DEFAULTS, ("num_experts", "freq", "offset", "sides", "expert_dropout")
) + (
    OptionSpec(
        "granularity", str, THOR_DEFAULTS["moe_granularity"],
        "THOR: training expert draw: batch | sentence | token",
    ),
    OptionSpec(
        "consistency_alpha", float, None, "THOR criterion: weight of the consistency loss"
    ),
)  # fmt: skip

declare_options("thor", THOR_OPTIONS)
