"""The ``model.moe.*`` options of the built-in families, one light module per family.

Each module states its family's options (:class:`~moe_mt.models.families.OptionSpec`) and
their defaults, the single source of both: the model file's architecture functions fill unset
fairseq args from the same table, and the recipe schema (``moe_mt.config.MoEConfig``) is built
from the specs. These modules import neither fairseq nor torch, so that reading the schema stays
cheap; :func:`moe_mt.models.families.option_specs` imports every module of this package.
"""
