"""Recipe loading: includes, pieces named on the command line, overrides, origins, paths; the
one loading path of every command (see :mod:`moe_mt.config`)."""

import re
from pathlib import Path
from typing import Dict, Optional

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

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

    Returns a fully resolved config with absolute paths and ``run_dir`` set: every
    interpolation (``${train.max_update}``, ``${env:VAR}``) is replaced by its value, what was
    written is kept as provenance (:func:`unresolved`, ``meta.unresolved`` of
    :func:`run_config_text`).
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

    read = _read_yaml(path)
    loaded = _without_meta(read)
    if from_run_dir:
        # The directory given is the run directory, wherever config.yaml says it was written
        # (a copied or moved run directory works on itself).
        loaded.run_dir = str(source.resolve())
    cfg = schema()
    sections = {key for key, doc in schema_keys().items() if doc.section}
    relative_to: Dict[str, Path] = {}  # interpolated path keys: the directory they are relative to

    def apply(piece: DictConfig, origin: str) -> None:
        nonlocal cfg
        cfg = _merge(cfg, piece, origin=origin)
        origins.update(dict.fromkeys(_leaves_set(piece, sections), origin))
        # The names of the architecture are read now: an interpolation in them resolves now.
        _resolve_interpolations(cfg, origins, origin, assign=False, only=NAME_KEYS)
        derived = latest_names_architecture(cfg.model, piece)
        for key in derived:  # no longer what that file said, but what the others imply
            origins.pop(f"model.{key}", None)

    for piece_path, piece in _with_includes(path, loaded, chain=()):
        _resolve_paths(piece, piece_path.parent, relative_to)  # relative to the file that says it
        apply(piece, str(piece_path))

    pieces, dotlist = _split_arguments(overrides)
    for piece_path in pieces:  # recipe pieces named on the command line, in order
        for part_path, part in _with_includes(piece_path, _read_yaml(piece_path), chain=()):
            _resolve_paths(part, part_path.parent, relative_to)
            apply(part, str(part_path))

    if dotlist:
        override_cfg = OmegaConf.from_dotlist(dotlist)
        _resolve_paths(override_cfg, Path.cwd(), relative_to)
        apply(override_cfg, OVERRIDE_ORIGIN)

    # Every interpolation resolves (one line naming it if not), before anything reads the values.
    _resolve_interpolations(cfg, origins, str(path), assign=False)
    resolve_architecture(cfg.model, origin=origins.get("model.family", str(path)))
    fill_family_defaults(cfg, origins)
    # What no source set was named by the others (or is a default).
    if "model.arch" in origins:
        origins.setdefault("model.family", NAMED_BY_ARCH)
        origins.setdefault("model.size", NAMED_BY_ARCH)
    origins.setdefault("model.arch", NAMED_BY_FAMILY_AND_SIZE)
    # Resolved now that model.* is complete: `europarl_en_ro_${model.family}` becomes the run's
    # name; what was written stays provenance, carried over from a run directory's config.yaml.
    written = _resolve_interpolations(cfg, origins, str(path), assign=True)
    _absolute_paths(cfg, relative_to)
    if from_run_dir:
        carried = OmegaConf.select(read, f"meta.{UNRESOLVED_KEY}")
        carried = OmegaConf.to_container(carried, resolve=False) if carried else {}
        for key, text in carried.items() if isinstance(carried, dict) else ():
            if _origin_of(key, origins, str(path)) == str(path):
                written.setdefault(key, str(text))
    cfg.__dict__[_UNRESOLVED_ATTR] = dict(sorted(written.items()))
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


#: The key of a run directory's ``meta`` that keeps the interpolations as written.
UNRESOLVED_KEY = "unresolved"
_UNRESOLVED_ATTR = "_moemt_unresolved"  # where a loaded config keeps them (copies keep it too)


def unresolved(cfg: DictConfig) -> Dict[str, str]:
    """``{key: text}`` of every value of ``cfg`` that its sources wrote as an interpolation
    (``train.lr: ${env:PLR}``), as written; ``cfg`` holds the resolved values. Provenance
    only: nothing compares or fingerprints it."""
    return dict(cfg.__dict__.get(_UNRESOLVED_ATTR) or {})


def run_config_text(cfg: DictConfig, meta: Optional[dict] = None) -> str:
    """A run directory's ``config.yaml``: the resolved config, then ``meta`` (provenance, which
    loading skips) with the interpolations as written under ``meta.unresolved``."""
    meta = dict(meta or {})
    if unresolved(cfg):
        meta[UNRESOLVED_KEY] = unresolved(cfg)
    text = to_yaml(cfg)
    return text + to_yaml(OmegaConf.create({"meta": meta})) if meta else text


def _interpolations(node, prefix: str = "") -> Dict[str, str]:
    """``{dotted key: text}`` of the values of a container (``to_container``, unresolved) that
    are interpolations (a string holding ``${``)."""
    found: Dict[str, str] = {}
    for key, value in node.items() if isinstance(node, dict) else enumerate(node):
        if isinstance(value, (dict, list)):
            found.update(_interpolations(value, f"{prefix}{key}."))
        elif isinstance(value, str) and "${" in value:
            found[f"{prefix}{key}"] = value
    return found


#: The keys that name the architecture, read as each source is merged.
NAME_KEYS = ("model.arch", "model.family", "model.size")


def _resolve_interpolations(
    cfg: DictConfig, origins, default_origin: str, assign: bool, only: tuple = ()
) -> dict:
    """Resolve every interpolation of ``cfg`` (those of the keys ``only`` if given; in place when
    ``assign``, which also converts the value to its key's type); one line naming the key, where
    it was set, the text and the variable or key that does not resolve. Returns ``{key: text}``
    of the interpolations."""
    written = _interpolations(OmegaConf.to_container(cfg, resolve=False))
    for key, text in written.items():
        if only and key not in only:
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        index = int(leaf) if isinstance(parent, ListConfig) else leaf
        try:
            value = parent[index]
            if assign:
                parent[index] = value
        except MissingMandatoryValue as exc:
            if not assign:
                continue  # filled in later (a family's defaults), or reported as missing then
            why = f"{_missing_target(exc)} is a missing mandatory key"
        except OmegaConfBaseException as exc:
            why = _unresolved_reason(exc)
        else:
            continue
        raise MoeMtError(f"{_origin_of(key, origins, default_origin)}: {key}={text}: {why}")
    return written


def _unresolved_reason(exc: OmegaConfBaseException) -> str:
    line = _first_line(exc)
    if match := re.fullmatch(r"Environment variable '(.*)' not found", line):
        return f"environment variable {match[1]} is not set"
    if match := re.fullmatch(r"\w+ interpolation key '(.*)' not found", line):
        return f"interpolation names no key {match[1]}"
    return f"does not resolve: {line}"


def _missing_target(exc: MissingMandatoryValue) -> str:
    match = re.match(r"Missing mandatory value\s*:\s*(\S+)", _first_line(exc))
    return match[1] if match else "a key it names"


def _origin_of(key: str, origins: Dict[str, str], default: str) -> str:
    """Where ``key`` (or the leaf holding it: ``model.args.x`` is in ``model.args``) was set."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in origins:
            return origins[".".join(parts[:n])]
    return default


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


def _resolve_paths(cfg: DictConfig, base: Path, relative_to: Dict[str, Path]) -> None:
    """Make ``cfg``'s relative paths absolute against ``base``; an interpolated one is made so
    once resolved (:func:`_absolute_paths`), ``relative_to`` records its base."""
    for key in PATH_KEYS:
        parent_key, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        # keys(): `in` resolves the value, and an interpolation fails outside the whole config.
        if not isinstance(node, DictConfig) or leaf not in node.keys():
            continue
        relative_to.pop(key, None)
        if OmegaConf.is_interpolation(node, leaf):  # resolved with the whole config
            relative_to[key] = base
            continue
        value = node[leaf]
        if isinstance(value, str) and value and value != MISSING:
            node[leaf] = str((base / Path(value).expanduser()).resolve())


def _absolute_paths(cfg: DictConfig, relative_to: Dict[str, Path]) -> None:
    for key, base in relative_to.items():
        parent_key, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent_key) if parent_key else cfg
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
