"""The registry of moemt's model families: what adding a family touches, in one record.

A :class:`Family` names a model family (``switch``, ``thor``, ...; the name is its architecture
prefix without ``_transformer``, except ``dense``, whose architectures are
``moemt_transformer_<size>``), its registered fairseq architecture prefixes, its ``model.moe.*``
options (:class:`OptionSpec`: name, type, default, help), the criterion it trains with by default,
and one parameter/FLOP counter per MoE block class it builds (read by
:mod:`moe_mt.workflows.train.model_summary`). Each model file registers its own family with
:func:`register_family`; the recipe schema's ``model.moe`` section (``moe_mt.config.MoEConfig``)
is built from the options of every family, and rebuilt when one registers.

Why the options also live apart from the model files: the schema is read at every ``moemt``
command, and a model file imports fairseq (about 0.6 s more, and fairseq's import-time log
lines). So a built-in family states its options and their defaults (the single source of
them, read by its model file's architecture functions) in a light module beside its model file,
``moe_mt/models/<family>_options.py``, that imports no fairseq and no torch (it declares them
with :func:`declare_options`); :func:`option_specs` imports every such module (found on disk, no
list to keep). A family
registered later (a plugin, :data:`PLUGINS_ENV`) declares its options by registering.

Rules: an option shared by several families (``num_experts``) must have the same type and help
text everywhere (its default may differ: the schema's help lists each family's), and a block
class has one counter: a conflicting redeclaration raises :class:`ValueError` at registration.
Registering a family again under the same name (a re-imported module) replaces it.

Plugins: ``MOEMT_PLUGINS=pkg.module[,other.module]`` names modules that define and register
more families. :func:`load_plugins` imports them; ``moe_mt.config`` calls it before building
the schema and :func:`moe_mt.register` before fairseq parses arguments, so that the CLI, the
trainer and fairseq all see them. This module imports neither fairseq nor torch.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from moe_mt.errors import MoeMtError

#: Environment variable naming extra family modules to import (comma-separated module names).
PLUGINS_ENV = "MOEMT_PLUGINS"
#: The light option modules of the built-in families: ``moe_mt/models/<family>_options.py``.
OPTIONS_SUFFIX = "_options"
OPTION_TYPES = (int, float, bool, str)


@dataclass(frozen=True)
class OptionSpec:
    """One ``model.moe.<name>`` key, passed to fairseq as ``--moe-<name>`` when set.

    ``default`` is what the family's architectures fill in when the key is left null (None: the
    criterion's or the model's own fallback, said in ``help``).
    """

    name: str
    type: type
    default: Any
    help: str

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option {self.name}: type {self.type} is not one of {OPTION_TYPES}")


@dataclass(frozen=True)
class BlockCount:
    """What one MoE block adds to a model summary, for one token through the block.

    ``macs``: its multiply-accumulates per token; ``expert_parameters``: its expert weights;
    ``inactive_parameters``: the expert weights a token cannot reach; ``projection_parameters``:
    weights outside the experts reported apart (MH-MoE's projections).
    """

    macs: int
    expert_parameters: int = 0
    inactive_parameters: int = 0
    projection_parameters: int = 0


#: ``counter(block, sentence_tokens) -> BlockCount``; sentence_tokens: the tokens per sentence
#: the summary assumes (Soft MoE's slots are shared by a sentence's tokens).
BlockCounter = Callable[[Any, int], BlockCount]


@dataclass(frozen=True)
class Family:
    """A model family (see the module docstring)."""

    name: str
    arch_prefixes: tuple[str, ...]
    options: tuple[OptionSpec, ...] = ()
    criterion: str = "label_smoothed_cross_entropy"
    counters: Mapping[type, BlockCounter] = field(default_factory=dict)


_FAMILIES: dict[str, Family] = {}
_DECLARED: dict[str, dict[str, OptionSpec]] = {}  # family -> its options, by name
_LISTENERS: list[Callable[[], None]] = []
_loaded_builtin_options = False


def declare_options(family: str, options: Iterable[OptionSpec]) -> None:
    """Declare ``family``'s ``model.moe.*`` options (replacing its earlier declaration).

    Raises:
        ValueError: an option of the same name declared by another family with another type
            or help text.
    """
    _load_builtin_options()  # first, so that the schema's key order is the same in every process
    options = {o.name: o for o in options}
    for other, declared in _DECLARED.items():
        if other == family:
            continue
        for name, option in options.items():
            earlier = declared.get(name)
            if earlier is not None and (earlier.type, earlier.help) != (option.type, option.help):
                raise ValueError(
                    f"family {family}: option model.moe.{name} ({option.type.__name__}, "
                    f"{option.help!r}) conflicts with family {other}'s ({earlier.type.__name__}, "
                    f"{earlier.help!r}); a shared option is declared once"
                )
    if _DECLARED.get(family) == options:
        return
    _DECLARED[family] = options
    for listener in _LISTENERS:
        listener()


def register_family(family: Family) -> Family:
    """Register ``family`` (replacing one of the same name) and declare its options.

    Raises:
        ValueError: an option conflict (:func:`declare_options`), or a block class that another
            family counts with another function.
    """
    for other in _FAMILIES.values():
        if other.name == family.name:
            continue
        for block, counter in family.counters.items():
            if other.counters.get(block, counter) is not counter:
                raise ValueError(
                    f"family {family.name}: block {block.__name__} is already counted by family "
                    f"{other.name} with another function"
                )
    declare_options(family.name, family.options)
    _FAMILIES[family.name] = family
    return family


def families() -> list[Family]:
    """The registered families, in registration order."""
    return list(_FAMILIES.values())


def family_of_arch(arch: str) -> Family | None:
    """The family whose architecture prefix ``arch`` starts with (the longest such prefix)."""
    best, length = None, -1
    for family in _FAMILIES.values():
        for prefix in family.arch_prefixes:
            if (arch == prefix or arch.startswith(prefix + "_")) and len(prefix) > length:
                best, length = family, len(prefix)
    return best


def block_counter(block_type: type) -> tuple[Family, BlockCounter] | None:
    """The family and counter of the nearest class in ``block_type``'s MRO that one counts."""
    for cls in block_type.__mro__:
        for family in _FAMILIES.values():
            if cls in family.counters:
                return family, family.counters[cls]
    return None


def option_specs() -> dict[str, list[tuple[str, OptionSpec]]]:
    """Every declared ``model.moe.*`` option: name -> ``[(family, spec), ...]``.

    Imports the built-in families' option modules first (``moe_mt/models/*_options.py``).
    """
    _load_builtin_options()
    merged: dict[str, list[tuple[str, OptionSpec]]] = {}
    for family, options in _DECLARED.items():
        for name, option in options.items():
            merged.setdefault(name, []).append((family, option))
    return merged


def on_options_changed(listener: Callable[[], None]) -> None:
    """Call ``listener()`` whenever a family declares new or changed options."""
    _LISTENERS.append(listener)


def load_plugins(value: str | None = None) -> list[str]:
    """Import the modules named by ``$MOEMT_PLUGINS`` (or ``value``); return their names."""
    value = os.environ.get(PLUGINS_ENV, "") if value is None else value
    names = [name.strip() for name in value.split(",") if name.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise MoeMtError(f"{PLUGINS_ENV}: cannot import family module {name}: {exc}") from exc
    return names


def _load_builtin_options() -> None:
    global _loaded_builtin_options
    if _loaded_builtin_options:
        return
    _loaded_builtin_options = True
    import moe_mt.models as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name.endswith(OPTIONS_SUFFIX):
            importlib.import_module(f"{package.__name__}.{module.name}")


def parameter_count(parameters: Iterable) -> int:
    """Elements of ``parameters``, each tensor once (tied weights), meta tensors left out."""
    seen, total = set(), 0
    for p in parameters:
        if id(p) not in seen and not p.is_meta:
            seen.add(id(p))
            total += p.numel()
    return total
