"""Soft MoE's family record (``soft_moe_transformer_*``): the routed families' options
(:mod:`.switch_options`; the top-k ones shape the optional sparse decoder) with the encoder as
the MoE side by default, plus slots per expert and the decoder kind."""

from __future__ import annotations

from moe_mt.bounds import AT_LEAST_1
from moe_mt.models.families import Family, OptionSpec, with_defaults
from moe_mt.models.switch_options import EXPERT_PARALLEL_SIZE, LOSSES, MOE_CRITERION, ROUTED

SOFT_DECODERS = ("dense", "sparse")
SLOTS_PER_EXPERT = OptionSpec(
    "slots_per_expert", int, 1, "Soft MoE: slots per expert", bound=AT_LEAST_1
)
SOFT_DECODER = OptionSpec(
    "soft_decoder", str, "dense", "Soft MoE: dense | sparse (top-k MoE) decoder",
    choices=SOFT_DECODERS,
)  # fmt: skip

SOFT_MOE = Family(
    "soft_moe", ("soft_moe_transformer",),
    with_defaults(ROUTED, sides="encoder") + LOSSES
    + (SLOTS_PER_EXPERT, SOFT_DECODER, EXPERT_PARALLEL_SIZE),
    MOE_CRITERION,
    model_module="moe_mt.models.soft_moe",
    upcyclable=True,
)  # fmt: skip

#: Registered, in this order, when the built-in families load (moe_mt.models.families).
FAMILIES = (SOFT_MOE,)
