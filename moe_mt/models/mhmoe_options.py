"""Options of MH-MoE (``mhmoe_transformer_*``): the routed families' (:mod:`.switch_options`) with
:data:`MHMOE_DEFAULTS` over Switch's (the defaults table of :mod:`moe_mt.models.mhmoe`), plus
the sub-token count and the merge projection's placement."""

from __future__ import annotations

from moe_mt.models.families import OptionSpec, declare_options
from moe_mt.models.switch_options import LOSS_OPTIONS, MOE_DEFAULTS, routed_options

MHMOE_DEFAULTS = {"moe_heads": 4, "moe_top_k": 2, "moe_merge_placement": "before"}

MHMOE_OPTIONS = routed_options({**MOE_DEFAULTS, **MHMOE_DEFAULTS}) + LOSS_OPTIONS + (
    OptionSpec(
        "heads", int, MHMOE_DEFAULTS["moe_heads"],
        "MH-MoE: sub-tokens per token (divides model.embed_dim)",
    ),
    OptionSpec(
        "merge_placement", str, MHMOE_DEFAULTS["moe_merge_placement"],
        "MH-MoE: merge projection before | after the residual",
    ),
)  # fmt: skip

declare_options("mhmoe", MHMOE_OPTIONS)
