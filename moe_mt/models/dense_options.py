"""The dense baseline's family record (``moemt_transformer_*``): fairseq's label-smoothed
cross-entropy, and one ``model.moe`` option, the FFN's activation, which the routed families'
experts share so that a dense control matches them (a GLU FFN, Shazeer 2020)."""

from __future__ import annotations

from moe_mt.models.families import Family, OptionSpec

EXPERT_ACTIVATION = OptionSpec(
    "expert_activation", str, "auto",
    "FFN and expert activation: auto (model.activation_fn) | swiglu | geglu "
    "(GLU, Shazeer 2020: w1, w3, w2)",
    choices=("auto", "swiglu", "geglu"),
)  # fmt: skip

DENSE = Family(
    "dense", ("moemt_transformer",), (EXPERT_ACTIVATION,),
    model_module="moe_mt.models.transformer",
)  # fmt: skip

#: Registered, in this order, when the built-in families load (moe_mt.models.families).
FAMILIES = (DENSE,)
