"""The registry of moemt's model families and their options: each declared once, here read by
the recipe schema, fairseq's argument parser, the architectures, the layers and ``moemt config``.

An :class:`OptionSpec` is the only declaration of a ``model.moe.<name>`` key (fairseq's
``--moe-<name>``): its type, default, help, choices and bound. From it come

- the recipe schema's ``model.moe`` section and its bounds and choices (``moe_mt.config``);
- fairseq's arguments of every MoE model (:func:`add_arguments`, one function for all families,
  plugins included) and the defaults an architecture fills in (:func:`fill_defaults`);
- the layers' option records (:func:`options_record`: ``MoEOptions``, ``ThorOptions``);
- the help that ``moemt config RECIPE model.moe`` prints, with each family's default;
- for a criterion's key (``criterion=True``), the default of the criterion's config field.

A :class:`Family` names a model family (``switch``, ``thor``, ...; the name is its architecture
prefix without ``_transformer``, except ``dense``, whose architectures are
``moemt_transformer_<size>``), its fairseq architecture prefixes, its options (an option shared
by several families is the same spec, with :meth:`OptionSpec.with_default` where a family's
default differs) and the criterion it trains with when ``train.criterion`` is not set.

Why a family is declared apart from its model file: the schema is read at every ``moemt``
command, and a model file imports fairseq (about 0.6 s more, and fairseq's import-time log
lines). So a built-in family declares its record in a light module beside its model file,
``moe_mt/models/<family>_options.py``, that imports neither fairseq nor torch and lists its
records in ``FAMILIES`` (and its routers in ``ROUTERS``); :func:`families` imports every such
module (found on disk, no list to keep) and registers them. The record names its model file
(``model_module``), which reads its options from there and registers one summary counter per
MoE block class it builds (:func:`register_counter`, read by
:mod:`moe_mt.workflows.train.model_summary`). A plugin (:data:`PLUGINS_ENV`) is one module that
does both, and calls :func:`register_family` itself.

Rules: an option shared by several families must be the same declaration everywhere but for its
default, and a block class has one counter: a conflicting registration raises
:class:`ValueError`. Registering a family again under the same name (a re-imported module)
replaces it.

Plugins: ``MOEMT_PLUGINS=pkg.module[,other.module]`` names modules that define and register
more families. :func:`load_plugins` imports them; ``moe_mt.config.load_config`` calls it before
it reads a recipe and :func:`moe_mt.register` before fairseq parses arguments, so that the CLI,
the trainer and fairseq all see them. This module imports neither fairseq nor torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from moe_mt.bounds import Bound
from moe_mt.errors import MoeMtError

#: Environment variable naming extra family modules to import (comma-separated module names).
PLUGINS_ENV = "MOEMT_PLUGINS"
#: The light declaration modules of the built-in families: ``moe_mt/models/<family>_options.py``.
OPTIONS_SUFFIX = "_options"
OPTION_TYPES = (int, float, bool, str)
#: The criterion a family trains with unless it names another (the dense baseline's).
DENSE_CRITERION = "label_smoothed_cross_entropy"


@dataclass(frozen=True)
class OptionSpec:
    """One ``model.moe.<name>`` key, passed to fairseq as ``--moe-<name>`` when set.

    ``default`` is what the family's architectures fill in when the key is left null (None: the
    model's own fallback, said in ``help``). ``choices`` and ``bound`` are checked when a recipe
    is loaded and when a model is built. ``criterion``: a key of the family's criterion, whose
    config field takes its default from here (fairseq gives it to the criterion, not the
    model). ``recipe=False``: a fairseq model argument that moemt sets itself (THOR's inference
    mode from ``eval.thor_inference``, ``--moe-expert-parallel-size`` from
    ``model.expert_parallel_size``), not a ``model.moe`` key.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | Callable[[], tuple] = ()  # a function: choices that registries extend
    bound: Bound | None = None
    criterion: bool = False
    recipe: bool = True

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option {self.name}: type {self.type} is not one of {OPTION_TYPES}")

    @property
    def flag(self) -> str:
        return "--moe-" + self.name.replace("_", "-")

    def allowed(self) -> tuple:
        """The choices, as they stand now (a registry's may grow when a plugin registers)."""
        return self.choices() if callable(self.choices) else self.choices

    def with_default(self, default: Any) -> OptionSpec:
        """The same option with another family's default."""
        return dataclasses.replace(self, default=default)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused (``expected one of ...``, ``must be ...``), or None."""
        if value is None:
            return None
        allowed = self.allowed()
        if allowed and value not in allowed:
            return f"expected one of {', '.join(map(str, allowed))}"
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.bound is not None and numeric and self.bound.refuses(value):
            return self.bound.describe()
        return None


def with_defaults(options: Iterable[OptionSpec], **defaults: Any) -> tuple[OptionSpec, ...]:
    """``options`` with a family's own defaults for some of them (``name=value``)."""
    options = tuple(options)
    unknown = set(defaults) - {o.name for o in options}
    if unknown:
        raise ValueError(f"defaults for options not in the list: {sorted(unknown)}")
    return tuple(o.with_default(defaults[o.name]) if o.name in defaults else o for o in options)


@dataclass(frozen=True)
class Family:
    """A model family (see the module docstring)."""

    name: str
    arch_prefixes: tuple[str, ...]
    options: tuple[OptionSpec, ...] = ()
    criterion: str = DENSE_CRITERION
    #: The module that registers its fairseq model and architectures (imported by
    #: ``moe_mt.models.import_models``); None: the module that registered the family (a plugin).
    model_module: str | None = None
    #: ``(eval key, model option)``: the model arguments that ``moemt eval`` / ``translate`` /
    #: ``export`` / ``distill`` set from the eval config when they load a checkpoint (THOR's
    #: inference mode, expert and seed), checked against the option's choices and bound.
    eval_arguments: tuple[tuple[str, OptionSpec], ...] = ()
    #: Whether ``train.upcycle_from`` can start it from a dense checkpoint (its experts have the
    #: dense FFN's shape); ``upcycle_refusal``: why not, where there is more to say than "no
    #: experts".
    upcyclable: bool = False
    upcycle_refusal: str = ""
    #: The eval key holding how many random expert draws ``moemt eval`` compares for a model that
    #: draws its experts at random at inference (THOR's ``thor_draws``); the report's entry is
    #: named after the family. None: the family does not draw.
    draws_key: str | None = None
    #: The eval key of its inference mode (THOR's ``thor_inference``), which
    #: ``distill.teacher_inference`` sets for a teacher of this family.
    inference_key: str | None = None

    def all_options(self) -> tuple[OptionSpec, ...]:
        """Its options, and, for a family that takes ``router``, the options of every registered
        router (:class:`RouterKind`) that it does not declare already."""
        options = self.options
        if any(o.name == ROUTER_OPTION for o in options):
            names = {o.name for o in options}
            for kind in _ROUTERS.values():
                options += tuple(o for o in kind.options if o.name not in names)
                names.update(o.name for o in kind.options)
        return options

    def option(self, name: str) -> OptionSpec | None:
        return next((o for o in self.all_options() if o.name == name), None)

    def model_options(self) -> tuple[OptionSpec, ...]:
        """The options fairseq gives the model (the criterion's keys left out)."""
        return tuple(o for o in self.all_options() if not o.criterion)


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

#: The option that names a family's token-choice router (:class:`RouterKind`).
ROUTER_OPTION = "router"


@dataclass(frozen=True)
class RouterKind:
    """A token-choice router that ``model.moe.router`` can name.

    ``builder(d_in, options, cfg) -> moe_mt.moe.routing.Router`` builds one for rows of width
    ``d_in`` (MH-MoE's sub-tokens are narrower than the model); ``options`` is the layer's
    option record (``num_experts``, ``top_k`` and the router's own options as fields of
    ``MoEOptions``), ``cfg`` fairseq's args (``cfg.moe_<name>`` for a plugin router's own
    options). A built-in router names its builder as ``"module:function"``, imported when a
    model is built, so that this record stays free of torch. ``options``: the router's own
    options, added to every family that takes ``router``. Its multiply-accumulates per row are
    the router module's :meth:`~moe_mt.moe.routing.Router.macs_per_row`.
    """

    name: str
    builder: str | Callable
    options: tuple[OptionSpec, ...] = ()

    def build(self, d_in: int, options, cfg):
        builder = self.builder
        if isinstance(builder, str):
            module, _, function = builder.partition(":")
            builder = getattr(importlib.import_module(module), function)
        return builder(d_in, options, cfg)


_FAMILIES: dict[str, Family] = {}
_ROUTERS: dict[str, RouterKind] = {}
_COUNTERS: dict[type, BlockCounter] = {}
_LISTENERS: list[Callable[[], None]] = []
_loaded_builtin_families = False


def _declaration(option: OptionSpec) -> tuple:
    """What must agree between two families' option of the same name (all but the default)."""
    return dataclasses.astuple(dataclasses.replace(option, default=None))


def register_family(family: Family) -> Family:
    """Register ``family`` (replacing one of the same name).

    Raises:
        ValueError: an option declared by another family with another type, help, choices,
            bound or role.
    """
    _load_builtin_families()  # first, so that the schema's key order is the same in every process
    for other in _FAMILIES.values():
        if other.name == family.name:
            continue
        for option in family.all_options():
            earlier = other.option(option.name)
            if earlier is not None and _declaration(earlier) != _declaration(option):
                raise ValueError(
                    f"family {family.name}: option model.moe.{option.name} ({option}) conflicts "
                    f"with family {other.name}'s ({earlier}); a shared option is declared once"
                )
    return _store(_FAMILIES, family.name, family)


def register_router(kind: RouterKind) -> RouterKind:
    """Register a router that ``model.moe.router`` can name (replacing one of the same name);
    its options join every family that takes ``router``.

    Raises:
        ValueError: a router option that another family or router declares otherwise.
    """
    for option in kind.options:
        for fam in _FAMILIES.values():
            earlier = next((o for o in fam.options if o.name == option.name), None)
            if earlier is not None and _declaration(earlier) != _declaration(option):
                raise ValueError(
                    f"router {kind.name}: option model.moe.{option.name} conflicts with family "
                    f"{fam.name}'s; a shared option is declared once"
                )
    return _store(_ROUTERS, kind.name, kind)


def _store(registry: dict, name: str, record):
    """Put ``record`` under ``name`` (a re-imported module's replaces the earlier one) and tell
    the listeners (the schema) when it changed anything; return it."""
    changed = registry.get(name) != record
    registry[name] = record
    if changed:
        for listener in _LISTENERS:
            listener()
    return record


def router_names() -> tuple[str, ...]:
    """The registered routers' names, in registration order (``model.moe.router``'s choices)."""
    _load_builtin_families()
    return tuple(_ROUTERS)


def router_kind(name: str) -> RouterKind:
    """The registered router ``name`` (ValueError naming the choices if none)."""
    _load_builtin_families()
    if name not in _ROUTERS:
        raise ValueError(f"moe_router={name!r}: expected one of {', '.join(_ROUTERS)}")
    return _ROUTERS[name]


def register_counter(block_type: type, counter: BlockCounter) -> None:
    """Count ``block_type`` (and its subclasses without a counter) with ``counter`` in model
    summaries.

    Raises:
        ValueError: ``block_type`` already counted by another function.
    """
    if _COUNTERS.get(block_type, counter) is not counter:
        raise ValueError(f"block {block_type.__name__} is already counted by another function")
    _COUNTERS[block_type] = counter


def family(name: str) -> Family:
    """The registered family ``name`` (KeyError if none)."""
    _load_builtin_families()
    return _FAMILIES[name]


def families() -> list[Family]:
    """The registered families, in registration order."""
    _load_builtin_families()
    return list(_FAMILIES.values())


def eval_overrides(eval_cfg, arch: str | None = None) -> dict:
    """The model arguments the eval config sets at load time (:attr:`Family.eval_arguments`):
    those of ``arch``'s family, or of every family (a model ignores arguments it does not read).

    Raises:
        MoeMtError: a value outside its option's choices or bound (``eval.<key>=...: ...``).
    """
    chosen = [family_of_arch(arch)] if arch is not None else families()
    overrides = {}
    for fam in chosen:
        for key, option in fam.eval_arguments if fam is not None else ():
            value = eval_cfg[key]
            problem = option.problem(value)
            if problem:
                raise MoeMtError(f"eval.{key}={value}: {problem}")
            overrides[f"moe_{option.name}"] = value
    return overrides


def model_modules() -> list[str]:
    """The modules that register the families' fairseq models, in family registration order."""
    modules = [f.model_module for f in families() if f.model_module]
    return list(dict.fromkeys(modules))


def family_of_arch(arch: str) -> Family | None:
    """The family whose architecture prefix ``arch`` starts with (the longest such prefix)."""
    best, length = None, -1
    for candidate in families():
        for prefix in candidate.arch_prefixes:
            if (arch == prefix or arch.startswith(prefix + "_")) and len(prefix) > length:
                best, length = candidate, len(prefix)
    return best


def block_counter(block_type: type) -> BlockCounter | None:
    """The counter of the nearest class in ``block_type``'s MRO that has one."""
    return next((_COUNTERS[c] for c in block_type.__mro__ if c in _COUNTERS), None)


def option_specs() -> dict[str, list[tuple[str, OptionSpec]]]:
    """Every ``model.moe.*`` key of a recipe: name -> ``[(family, spec), ...]``."""
    merged: dict[str, list[tuple[str, OptionSpec]]] = {}
    for fam in families():
        for option in fam.all_options():
            if option.recipe:
                merged.setdefault(option.name, []).append((fam.name, option))
    return merged


def on_options_changed(listener: Callable[[], None]) -> None:
    """Call ``listener()`` whenever a family is registered or changed."""
    _LISTENERS.append(listener)


# -- what fairseq sees --------------------------------------------------------------------------


def add_arguments(parser, family_names: Iterable[str], title: str) -> None:
    """Add ``--moe-<name>`` for every model option of the families (one fairseq model class may
    serve several: Switch and X-MoE) to ``parser`` (an argparse parser), in declaration order.

    Every argument defaults to None, so that :func:`fill_defaults` can tell "not given" apart.
    """
    group = parser.add_argument_group(title)
    added = set()
    for name in family_names:
        for option in family(name).model_options():
            if option.name in added:
                continue
            added.add(option.name)
            if option.type is bool:
                group.add_argument(option.flag, action="store_true", default=None, help=option.help)
            elif option.allowed():
                group.add_argument(option.flag, choices=option.allowed(), help=option.help)
            else:
                group.add_argument(option.flag, type=option.type, help=option.help)


def fill_defaults(args, family_name: str) -> None:
    """Set every model option of ``family_name`` left unset (None) on fairseq's ``args`` to the
    family's default (an architecture function's job)."""
    for option in family(family_name).model_options():
        key = f"moe_{option.name}"
        # An argument moemt sets itself without a default stays absent when not given.
        unset_internal = not option.recipe and option.default is None
        if getattr(args, key, None) is None and not unset_internal:
            setattr(args, key, option.default)


def criterion_field(option: OptionSpec):
    """A fairseq criterion config's ``moe_<name>`` field for one of the criterion's options:
    its default and help are the option's."""
    return dataclasses.field(default=option.default, metadata={"help": option.help})


def options_record(options: Iterable[OptionSpec]):
    """Make the decorated class a frozen dataclass with one field per option (its default the
    option's) and ``from_cfg(cfg)``, which reads ``cfg.moe_<name>`` and calls the class's
    ``check()`` (which starts with :func:`check_declared`, then checks what lies between options).

    A field absent (or None) in ``cfg`` takes the option's default: checkpoints written before
    an option existed do not hold it.
    """
    options = tuple(options)

    def decorate(cls):
        cls.__annotations__ = {o.name: o.type for o in options}
        for o in options:
            setattr(cls, o.name, o.default)
        cls.OPTIONS = options
        cls.from_cfg = classmethod(_record_from_cfg)
        return dataclass(frozen=True)(cls)

    return decorate


def _record_from_cfg(cls, cfg):
    values = {}
    for option in cls.OPTIONS:
        value = getattr(cfg, f"moe_{option.name}", None)
        values[option.name] = option.default if value is None else value
    record = cls(**values)
    record.check()
    return record


def check_declared(record) -> None:
    """Refuse the first field of an :func:`options_record` outside its option's choices or
    bound: ``ValueError("moe_<name>=<value>: expected one of ... | must be ...")``."""
    for option in record.OPTIONS:
        value = getattr(record, option.name)
        problem = option.problem(value)
        if problem:
            raise ValueError(f"moe_{option.name}={value!r}: {problem}")


# -- plugins and the built-in declarations ------------------------------------------------------


def load_plugins(value: str | None = None) -> list[str]:
    """Import the modules named by ``$MOEMT_PLUGINS`` (or ``value``); return their names."""
    value = os.environ.get(PLUGINS_ENV, "") if value is None else value
    names = [name.strip() for name in value.split(",") if name.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise MoeMtError(f"{PLUGINS_ENV}: cannot import family module {name}: {exc}") from exc
        except SyntaxError as exc:
            where = f"{exc.filename}:{exc.lineno}"
            raise MoeMtError(f"{PLUGINS_ENV}: family module {name}: {where}: {exc.msg}") from exc
        except Exception as exc:  # the plugin's own code failed while importing
            raise MoeMtError(
                f"{PLUGINS_ENV}: cannot import family module {name}: {_where(exc)}"
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return names


def _where(exc: BaseException) -> str:
    """``file:line: `` of the innermost frame of ``exc``'s traceback, or nothing."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}: " if tb is not None else ""


def _load_builtin_families() -> None:
    global _loaded_builtin_families
    if _loaded_builtin_families:
        return
    _loaded_builtin_families = True
    import moe_mt.models as package

    # Registered here, in the modules' name order, not when each is imported: the order (the
    # schema's key order, `moemt ls`) is then the same whichever module a process imports first.
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__))
    for name in names:
        if name.endswith(OPTIONS_SUFFIX):
            module = importlib.import_module(f"{package.__name__}.{name}")
            for kind in getattr(module, "ROUTERS", ()):
                register_router(kind)
            for record in getattr(module, "FAMILIES", ()):
                register_family(record)


def parameter_count(parameters: Iterable) -> int:
    """Elements of ``parameters``, each tensor once (tied weights), meta tensors left out."""
    seen, total = set(), 0
    for p in parameters:
        if id(p) not in seen and not p.is_meta:
            seen.add(id(p))
            total += p.numel()
    return total
