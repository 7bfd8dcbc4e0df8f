"""MH-MoE's family record (``mhmoe_transformer_*``): the routed families' options
(:mod:`.switch_options`) with top-2 routing by default, plus the sub-token count and the merge
projection's placement."""

from __future__ import annotations

from moe_mt.bounds import AT_LEAST_1
from moe_mt.models.families import Family, OptionSpec, with_defaults
from moe_mt.models.switch_options import EXPERT_PARALLEL_SIZE, LOSSES, MOE_CRITERION, ROUTED

MERGE_PLACEMENTS = ("before", "after")
UPCYCLE_REFUSAL = (
    "MH-MoE cannot be upcycled: its experts take d/h-wide sub-tokens behind multi-head and "
    "merge projections that the dense model lacks, so no expert can copy the dense FFN; "
    "upcycle a Switch, X-MoE or THOR model instead"
)
HEADS = OptionSpec(
    "heads", int, 4, "MH-MoE: sub-tokens per token (divides model.embed_dim)", bound=AT_LEAST_1
)
MERGE_PLACEMENT = OptionSpec(
    "merge_placement", str, "before", "MH-MoE: merge projection before | after the residual",
    choices=MERGE_PLACEMENTS,
)  # fmt: skip

MHMOE = Family(
    "mhmoe", ("mhmoe_transformer",),
    with_defaults(ROUTED, top_k=2) + LOSSES + (HEADS, MERGE_PLACEMENT, EXPERT_PARALLEL_SIZE),
    MOE_CRITERION,
    model_module="moe_mt.models.mhmoe",
    upcycle_refusal=UPCYCLE_REFUSAL,
)  # fmt: skip

#: Registered, in this order, when the built-in families load (moe_mt.models.families).
FAMILIES = (MHMOE,)
