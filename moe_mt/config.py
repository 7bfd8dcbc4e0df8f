"""The recipe schema (OmegaConf structured config) and recipe loading: one source of truth for
every key, its default and its help text (the comment beside it).

A recipe is a YAML file; the CLI takes a recipe path (or a run directory holding the
``config.yaml`` an earlier command wrote) and ``key=value`` overrides. A misspelt or unknown key,
a value of the wrong type or a missing mandatory key is a :class:`MoeMtError` naming the key and
the file (or override) it came from.

Relative paths in a recipe are relative to the recipe file, so that a recipe works from any
working directory; relative paths given as overrides are relative to the working directory.
"""

# No `from __future__ import annotations` here: omegaconf 2.0 reads the dataclass field types.
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from moe_mt.errors import MoeMtError

# Keys whose values are filesystem paths (resolved to absolute paths on load).
PATH_KEYS = ("run_dir", "data.train", "data.valid", "data.test")

RUN_CONFIG = "config.yaml"


@dataclass
class CleanConfig:
    """Filters applied to the training split only (valid and test are never altered)."""

    min_words: int = 1  # drop pairs with fewer whitespace-separated words on either side
    max_words: int = 250  # drop pairs with more words on either side
    max_length_ratio: float = 3.0  # drop pairs whose word counts differ by more than this factor
    dedup: bool = True  # drop exact duplicate (source, target) pairs, keeping the first


@dataclass
class SpmConfig:
    """sentencepiece model(s), trained on the cleaned training split only."""

    vocab_size: int = 8000
    model_type: str = "unigram"  # unigram | bpe | char | word
    character_coverage: float = 1.0  # 0.9995 is usual for large CJK vocabularies
    joint: bool = True  # one model for both languages (else one per language)
    input_sentence_size: int = 2_000_000  # sentences sampled to train spm (0: all)
    seed: int = 1  # seed of that sample


@dataclass
class DataConfig:
    """Parallel text: ``<prefix>.<src>`` and ``<prefix>.<tgt>`` per split, line-aligned."""

    src: str = MISSING  # source language code, the file suffix (e.g. en)
    tgt: str = MISSING  # target language code (e.g. de)
    train: str = MISSING  # path prefix of the training files
    valid: str = MISSING  # path prefix of the validation files
    test: Optional[str] = None  # path prefix of the test files
    max_line_chars: int = 2000  # longer lines: dropped in train, fatal in valid/test
    joined_dictionary: bool = True  # one fairseq dictionary for both sides
    clean: CleanConfig = field(default_factory=CleanConfig)
    spm: SpmConfig = field(default_factory=SpmConfig)


@dataclass
class ExperimentConfig:
    name: str = MISSING  # experiment name
    run_dir: Optional[str] = None  # experiment directory (default: runs/<name>)
    data: DataConfig = field(default_factory=DataConfig)


def schema() -> DictConfig:
    return OmegaConf.structured(ExperimentConfig)


def load_config(source: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load a recipe (or a run directory's ``config.yaml``), apply overrides, validate.

    Returns a fully resolved config with absolute paths and ``run_dir`` set.
    """
    source = Path(source)
    from_run_dir = source.is_dir()
    path = source / RUN_CONFIG if from_run_dir else source
    if not path.is_file():
        if from_run_dir:
            raise MoeMtError(f"{source}: not a run directory (no {RUN_CONFIG})")
        raise MoeMtError(f"{path}: no such recipe file")

    try:
        loaded = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError, ValueError, OmegaConfBaseException) as exc:
        raise MoeMtError(f"{path}: cannot read YAML: {_first_line(exc)}") from exc
    if not isinstance(loaded, DictConfig):
        raise MoeMtError(f"{path}: a recipe must be a mapping of keys to values")
    loaded = _without_meta(loaded)
    _resolve_paths(loaded, base=path.parent)
    cfg = _merge(schema(), loaded, origin=str(path))

    dotlist = _parse_overrides(overrides)
    if dotlist:
        override_cfg = OmegaConf.from_dotlist(dotlist)
        _resolve_paths(override_cfg, base=Path.cwd())
        cfg = _merge(cfg, override_cfg, origin="override")

    if cfg.run_dir is None:
        cfg.run_dir = str(source.resolve()) if from_run_dir else _default_run_dir(cfg)
    _check_mandatory(cfg, origin=str(path))
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def section_equal(a: DictConfig, b: DictConfig, key: str) -> bool:
    return OmegaConf.to_container(a[key]) == OmegaConf.to_container(b[key])


def _default_run_dir(cfg: DictConfig) -> str:
    if OmegaConf.is_missing(cfg, "name"):
        return ""  # reported as a missing 'name' by _check_mandatory
    return str((Path.cwd() / "runs" / cfg.name).resolve())


def _without_meta(loaded: DictConfig) -> DictConfig:
    # A run directory's config.yaml carries provenance (versions, git commit) under `meta`.
    if "meta" in loaded:
        loaded = OmegaConf.masked_copy(loaded, [k for k in loaded if k != "meta"])
    return loaded


def _parse_overrides(overrides) -> list[str]:
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise MoeMtError(f"override '{item}' is not of the form key=value")
    return list(overrides)


def _merge(base: DictConfig, extra: DictConfig, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, extra)
    except ConfigKeyError as exc:
        raise MoeMtError(f"{origin}: unknown key '{_full_key(exc)}'") from exc
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
    if missing:
        raise MoeMtError(f"{origin}: missing mandatory key(s): {', '.join(missing)}")


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
