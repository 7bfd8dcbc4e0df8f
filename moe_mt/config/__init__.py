"""The recipe schema (OmegaConf structured config) and recipe loading: one source of truth for
every key, its default and its help text (each field's ``metadata["help"]``, as fairseq's
dataclasses hold theirs; ``moemt config`` prints them).

A recipe is a YAML file; the CLI takes a recipe path (or a run directory holding the
``config.yaml`` an earlier command wrote) and ``key=value`` overrides. A misspelt or unknown key,
a value of the wrong type or a missing mandatory key is a :class:`MoeMtError` naming the key and
the file (or override) it came from.

Relative paths in a recipe are relative to the recipe file, so that a recipe works from any
working directory; relative paths given as overrides are relative to the working directory.

A recipe may compose shared pieces: ``include: [pieces/data/x.yaml, pieces/schedule/y.yaml]``
(paths relative to the including file) merges each piece in order (a piece may include others,
expanded first), later pieces over earlier ones, then the including file itself, then the pieces
named on the command line (``moemt train recipes/europarl/en_ro.yaml recipes/families/switch.yaml``,
each with its own includes), then the ``key=value`` overrides. An include cycle or a missing
piece is an error naming the file. ``model.arch`` left null is then named by ``model.family`` and
``model.size`` (:func:`resolve_architecture`), so a data set's recipe and a family's piece
compose into one run (``name: europarl_en_ro_${model.family}`` names the run after both).
Interpolations are resolved once the config is complete: commands see, compare, fingerprint and
write values; the text as written is provenance only (:func:`unresolved`).

The package, one job per module: :mod:`.schema` and :mod:`.data_schema` (the keys),
:mod:`.bounds` (their ranges), :mod:`.names` (architecture naming and the family's defaults),
:mod:`.load` (the loading path); this module re-exports what the commands use.
"""

from moe_mt.config.bounds import BOUNDS
from moe_mt.config.data_schema import BpeConfig, CleanConfig, DataConfig, SpmConfig
from moe_mt.config.load import (
    INCLUDE_KEY,
    NAMED_BY_ARCH,
    NAMED_BY_FAMILY_AND_SIZE,
    OVERRIDE_ORIGIN,
    PATH_KEYS,
    RUN_CONFIG,
    load_config,
    load_config_with_origins,
    run_config_text,
    to_yaml,
    unresolved,
)
from moe_mt.config.names import (
    architecture,
    family_default_origin,
    fill_family_defaults,
    resolve_architecture,
)
from moe_mt.config.schema import (
    DEFAULT_ORIGIN,
    DistillConfig,
    EvalConfig,
    ExperimentConfig,
    KeyDoc,
    ModelConfig,
    MoEConfig,
    TrainConfig,
    schema,
    schema_keys,
)

__all__ = [
    "BOUNDS", "DEFAULT_ORIGIN", "INCLUDE_KEY", "NAMED_BY_ARCH", "NAMED_BY_FAMILY_AND_SIZE",
    "OVERRIDE_ORIGIN", "PATH_KEYS", "RUN_CONFIG", "BpeConfig", "CleanConfig", "DataConfig",
    "DistillConfig", "EvalConfig", "ExperimentConfig", "KeyDoc", "ModelConfig", "MoEConfig",
    "SpmConfig", "TrainConfig", "architecture", "family_default_origin", "fill_family_defaults",
    "load_config", "load_config_with_origins", "resolve_architecture", "schema", "schema_keys",
    "run_config_text", "to_yaml", "unresolved",
]  # fmt: skip
