"""Options of Soft MoE (``soft_moe_transformer_*``): the routed families'
(:mod:`.switch_options`; the top-k ones shape the optional sparse decoder) with
:data:`SOFT_DEFAULTS` over Switch's (the defaults table of :mod:`moe_mt.models.soft_moe`), plus
slots per expert and the decoder kind."""

from __future__ import annotations

from moe_mt.models.families import OptionSpec, declare_options
from moe_mt.models.switch_options import LOSS_OPTIONS, MOE_DEFAULTS, routed_options

SOFT_DECODERS = ("dense", "sparse")
SOFT_DEFAULTS = {"moe_sides": "encoder", "moe_slots_per_expert": 1, "moe_soft_decoder": "dense"}

SOFT_MOE_OPTIONS = routed_options({**MOE_DEFAULTS, **SOFT_DEFAULTS}) + LOSS_OPTIONS + (
    OptionSpec(
        "slots_per_expert", int, SOFT_DEFAULTS["moe_slots_per_expert"],
        "Soft MoE: slots per expert",
    ),
    OptionSpec(
        "soft_decoder", str, SOFT_DEFAULTS["moe_soft_decoder"],
        "Soft MoE: dense | sparse (top-k MoE) decoder",
    ),
)  # fmt: skip

declare_options("soft_moe", SOFT_MOE_OPTIONS)
