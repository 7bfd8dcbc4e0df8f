"""The dense baseline's family record (``moemt_transformer_*``): no ``model.moe`` options, fairseq's
label-smoothed cross-entropy."""

from __future__ import annotations

from moe_mt.models.families import Family

DENSE = Family("dense", ("moemt_transformer",), model_module="moe_mt.models.transformer")

#: Registered, in this order, when the built-in families load (moe_mt.models.families).
FAMILIES = (DENSE,)
