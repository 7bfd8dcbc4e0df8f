"""Recipe loading: includes, pieces named on the command line, overrides, origins, paths; the
one loading path of every command (see :mod:`moe_mt.config`)."""

import re
from pathlib import Path
from typing import Dict, Optional

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from moe_mt.config.bounds import check_bounds
from moe_mt.config.names import (
    fill_family_defaults,
    latest_names_architecture,
    resolve_architecture,
)
from moe_mt.config.schema import DEFAULT_ORIGIN, schema, schema_keys
from moe_mt.errors import MoeMtError
from moe_mt.models import families

# Keys whose values are filesystem paths (resolved to absolute paths on load).
PATH_KEYS = (
    "run_dir",
    "data.train",
    "data.valid",
    "data.test",
    "data.cache_dir",
    "data.bpe.codes",
    "train.tensorboard_logdir",
    "train.upcycle_from",
    "eval.source",
    "eval.reference",
    "eval.bootstrap_baseline",
    "distill.teacher",
    "distill.baseline",
)


RUN_CONFIG = "config.yaml"


INCLUDE_KEY = "include"  # a recipe's list of pieces merged before it


def load_config(source: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load a recipe (or a run directory's ``config.yaml``), apply overrides, validate.

    Returns a fully resolved config with absolute paths and ``run_dir`` set.
    """
    return _load(source, overrides, origins=None)


#: The origin of a value set on the command line.
OVERRIDE_ORIGIN = "override"


#: The origins of model.arch / family / size that the others named (:func:`resolve_architecture`).
NAMED_BY_ARCH = "named by model.arch"


NAMED_BY_FAMILY_AND_SIZE = "named by model.family and model.size"


def load_config_with_origins(
    source: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[DictConfig, Dict[str, str]]:
    """:func:`load_config`, plus where each leaf key's value came from: the file that set it
    last (the recipe, an included piece, a run directory's ``config.yaml``), ``override``, or
    ``default`` (the schema's); keys in :func:`schema_keys` order (``moemt config`` prints them).
    """
    origins: Dict[str, str] = {}
    cfg = _load(source, overrides, origins)
    leaves = [key for key, doc in schema_keys().items() if not doc.section]
    return cfg, {key: origins.get(key, DEFAULT_ORIGIN) for key in leaves}


def _load(source: str | Path, overrides, origins: Optional[Dict[str, str]]) -> DictConfig:
    """The one loading path of :func:`load_config`; records each value's origin in ``origins``
    when given (a later file or the overrides replace an earlier one's)."""
    origins = {} if origins is None else origins  # bound errors name where a value was set
    families.load_plugins()  # $MOEMT_PLUGINS: families defined outside moemt, and their keys
    source = Path(source)
    from_run_dir = source.is_dir()
    path = source / RUN_CONFIG if from_run_dir else source
    if not path.is_file():
        if from_run_dir:
            raise MoeMtError(f"{source}: not a run directory (no {RUN_CONFIG})")
        raise MoeMtError(f"{path}: no such recipe file")

    loaded = _without_meta(_read_yaml(path))
    if from_run_dir:
        # The directory given is the run directory, wherever config.yaml says it was written
        # (a copied or moved run directory works on itself).
        loaded.run_dir = str(source.resolve())
    cfg = schema()
    sections = {key for key, doc in schema_keys().items() if doc.section}

    def apply(piece: DictConfig, origin: str) -> None:
        nonlocal cfg
        cfg = _merge(cfg, piece, origin=origin)
        derived = latest_names_architecture(cfg.model, piece)
        origins.update(dict.fromkeys(_leaves_set(piece, sections), origin))
        for key in derived:  # no longer what that file said, but what the others imply
            origins.pop(f"model.{key}", None)

    for piece_path, piece in _with_includes(path, loaded, chain=()):
        _resolve_paths(piece, base=piece_path.parent)  # relative to the file that says it
        apply(piece, str(piece_path))

    pieces, dotlist = _split_arguments(overrides)
    for piece_path in pieces:  # recipe pieces named on the command line, in order
        for part_path, part in _with_includes(piece_path, _read_yaml(piece_path), chain=()):
            _resolve_paths(part, base=part_path.parent)
            apply(part, str(part_path))

    if dotlist:
        override_cfg = OmegaConf.from_dotlist(dotlist)
        _resolve_paths(override_cfg, base=Path.cwd())
        apply(override_cfg, OVERRIDE_ORIGIN)

    resolve_architecture(cfg.model, origin=origins.get("model.family", str(path)))
    fill_family_defaults(cfg, origins)
    # What no source set was named by the others (or is a default).
    if "model.arch" in origins:
        origins.setdefault("model.family", NAMED_BY_ARCH)
        origins.setdefault("model.size", NAMED_BY_ARCH)
    origins.setdefault("model.arch", NAMED_BY_FAMILY_AND_SIZE)
    if not OmegaConf.is_missing(cfg, "name"):
        cfg.name = cfg.name  # resolved: `europarl_en_ro_${model.family}` becomes the run's name
    _check_name(cfg, origins.get("name", str(path)))
    if cfg.run_dir is None:
        cfg.run_dir = _default_run_dir(cfg)
    _check_mandatory(cfg, origin=str(path))
    check_bounds(cfg, origins, default_origin=str(path))
    return cfg


def _leaves_set(node: DictConfig, sections: set, prefix: str = ""):
    """The schema leaves a piece sets (a dict-valued leaf such as ``model.args`` is one key)."""
    for key in node:
        full = f"{prefix}{key}"
        if full in sections and isinstance(node[key], DictConfig):
            yield from _leaves_set(node[key], sections, prefix=f"{full}.")
        else:
            yield full


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def _read_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except yaml.MarkedYAMLError as exc:  # a syntax error: PyYAML knows where (0-based)
        raise MoeMtError(_yaml_syntax_error(path, exc)) from exc
    except (OSError, UnicodeDecodeError, ValueError, OmegaConfBaseException, yaml.YAMLError) as exc:
        raise MoeMtError(f"{path}: cannot read YAML: {_first_line(exc)}") from exc
    if not isinstance(loaded, DictConfig):
        raise MoeMtError(f"{path}: a recipe must be a mapping of keys to values")
    return loaded


def _yaml_syntax_error(path: Path, exc) -> str:
    """``file:line:column: YAML syntax error: problem (context)``, 1-based as editors count."""
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    what = exc.problem or "invalid YAML"
    if exc.context:
        what += f" ({exc.context})"
    return f"{where}: YAML syntax error: {what}"


def _with_includes(path: Path, loaded: DictConfig, chain: tuple) -> list:
    """``[(file, config)]`` in merge order: the pieces ``loaded`` includes (each expanded the
    same way, depth first), then ``loaded`` itself without its ``include`` key."""
    if INCLUDE_KEY not in loaded:
        return [(path, loaded)]
    entries = loaded[INCLUDE_KEY]
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, (list, ListConfig)) or not all(isinstance(e, str) for e in entries):
        raise MoeMtError(f"{path}: '{INCLUDE_KEY}' must be a list of YAML paths")
    chain = (*chain, path.resolve())
    pieces = []
    for entry in entries:
        target = (path.parent / Path(entry).expanduser()).resolve()
        if target in chain:
            cycle = " -> ".join(str(p) for p in (*chain[chain.index(target) :], target))
            raise MoeMtError(f"{path}: include cycle: {cycle}")
        if not target.is_file():
            raise MoeMtError(f"{path}: include '{entry}': no such file {target}")
        pieces += _with_includes(target, _read_yaml(target), chain)
    own = OmegaConf.masked_copy(loaded, [k for k in loaded if k != INCLUDE_KEY])
    return [*pieces, (path, own)]


def _check_name(cfg: DictConfig, origin: str) -> None:
    """A run's name is one directory name under ``runs/``: ``name=../../x`` wrote a run two
    levels above it."""
    if OmegaConf.is_missing(cfg, "name"):
        return
    name = str(cfg.name)
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise MoeMtError(
            f"{origin}: name={name!r}: a run's name is one directory name under runs/ (no '/', "
            "'..'); give run_dir=PATH for a run elsewhere"
        )


def _default_run_dir(cfg: DictConfig) -> str:
    if OmegaConf.is_missing(cfg, "name"):
        return ""  # reported as a missing 'name' by _check_mandatory
    return str((Path.cwd() / "runs" / cfg.name).resolve())


def _without_meta(loaded: DictConfig) -> DictConfig:
    # A run directory's config.yaml carries provenance (versions, git commit) under `meta`.
    if "meta" in loaded:
        loaded = OmegaConf.masked_copy(loaded, [k for k in loaded if k != "meta"])
    return loaded


def _split_arguments(arguments) -> tuple:
    """(recipe pieces, ``key=value`` overrides) of the command line's arguments after the
    recipe: an argument without ``=`` that ends in ``.yaml`` / ``.yml`` names a piece (relative
    to the working directory), merged after the recipe, before the overrides."""
    pieces, dotlist = [], []
    for item in arguments:
        key, sep, _ = item.partition("=")
        if not sep and item.endswith((".yaml", ".yml")):
            path = (Path.cwd() / Path(item).expanduser()).resolve()
            if not path.is_file():
                raise MoeMtError(f"{item}: no such recipe piece")
            pieces.append(path)
        elif not sep or not key.strip():
            raise MoeMtError(
                f"override '{item}' is not of the form key=value (nor a recipe piece, *.yaml)"
            )
        else:
            dotlist.append(item)
    return pieces, dotlist


def _merge(base: DictConfig, extra: DictConfig, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, extra)
    except ConfigKeyError as exc:
        key = str(_full_key(exc))
        if not re.fullmatch(r"[A-Za-z_][\w.\-]{0,99}", key):
            # Not a key a recipe could mean (another kind of file read as YAML): its text is not
            # quoted back, it may be anything (`include: [/etc/passwd]`).
            raise MoeMtError(f"{origin}: not a recipe (its entries are not recipe keys)") from exc
        raise MoeMtError(f"{origin}: unknown key '{key}'") from exc
    except ValidationError as exc:
        raise MoeMtError(f"{origin}: {_full_key(exc)}: {_first_line(exc)}") from exc
    except OmegaConfBaseException as exc:
        raise MoeMtError(f"{origin}: {_first_line(exc)}") from exc


def _resolve_paths(cfg: DictConfig, base: Path) -> None:
    for key in PATH_KEYS:
        parent_key, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(node, DictConfig) or leaf not in node:
            continue
        value = node[leaf]
        if isinstance(value, str) and value and value != MISSING:
            node[leaf] = str((base / Path(value).expanduser()).resolve())


def _check_mandatory(cfg: DictConfig, origin: str) -> None:
    missing = sorted(_missing_keys(cfg))
    if cfg.data.pairs:  # multilingual: the directions name the languages
        missing = [key for key in missing if key not in ("data.src", "data.tgt")]
    missing = sorted({*missing, *_missing_inputs(cfg, origin)})
    if missing:
        raise MoeMtError(f"{origin}: missing mandatory key(s): {', '.join(missing)}")


def _missing_inputs(cfg: DictConfig, origin: str) -> list[str]:
    """Local files need data.train and data.valid; a registry corpus brings its own splits."""
    if cfg.data.pairs and cfg.data.sources:
        return []  # which pairs need local files, prep checks (multilingual.check_inputs)
    local = [k for k in ("train", "valid", "test") if cfg.data[k] is not None]
    if cfg.data.source is None:
        return [f"data.{k}" for k in ("train", "valid") if k not in local]
    if local:
        raise MoeMtError(
            f"{origin}: data.source={cfg.data.source} and data.{local[0]} exclude each other "
            "(a registry corpus brings its own splits)"
        )
    return []


def _missing_keys(node: DictConfig, prefix: str = ""):
    for key in node:
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            yield full
        elif isinstance(node[key], DictConfig):
            yield from _missing_keys(node[key], prefix=f"{full}.")


def _full_key(exc: OmegaConfBaseException) -> str:
    return getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
