"""Directions and the prepared data's manifest (``RUN_DIR/data/manifest.json``), as every command
reads them.

A run translates one or more *directions* (``en-de``); a single-pair recipe (``data.src`` /
``data.tgt``) is the one-direction case of a multilingual one (``data.pairs``). Prep writes one
manifest schema for both (format 2, :mod:`moe_mt.workflows.prep.pipeline`)::

    languages   {langs: sorted languages, directions: trained, zero_shot: tested only}
    corpora     {<a>-<b>: {languages, directions, zero_shot, test_only, text, inputs, splits}}
    files       {text, bin, spm: {lang: model file}, dictionaries: {lang: dict file}}
    multilingual  true when the run trains with language tokens (data.pairs)

:func:`read_manifest` also reads the manifests of format 1 (written before), in this form: the
single-pair one (``languages: {src, tgt}``, ``splits``, text files directly in ``text/``) and
the multilingual one (the same as format 2 but for the per-corpus ``text`` directory).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from moe_mt.config import DataConfig
from moe_mt.errors import MoeMtError

MANIFEST_FORMAT = 2
_LANG = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class Direction:
    src: str
    tgt: str

    @property
    def name(self) -> str:
        return f"{self.src}-{self.tgt}"

    def __str__(self) -> str:
        return self.name


def parse_direction(text: str, key: str) -> Direction:
    """``"en-de"`` -> Direction; anything else is an error naming ``key``."""
    src, sep, tgt = str(text).partition("-")
    if not sep or not _LANG.fullmatch(src) or not _LANG.fullmatch(tgt):
        raise MoeMtError(f"{key}: '{text}' is not a direction of the form src-tgt (e.g. en-de)")
    if src == tgt:
        raise MoeMtError(f"{key}: '{text}' translates a language into itself")
    return Direction(src, tgt)


def directions(data_cfg: DictConfig) -> list[Direction]:
    """The trained directions, in order, each once: those of ``data.pairs``, or the one
    ``data.src``-``data.tgt`` of a single-pair recipe."""
    if not data_cfg.pairs:
        return [parse_direction(f"{data_cfg.src}-{data_cfg.tgt}", "data.src/data.tgt")]
    parsed = [parse_direction(p, "data.pairs") for p in data_cfg.pairs]
    seen = set()
    for d in parsed:
        if d in seen:
            raise MoeMtError(f"data.pairs: {d} is listed twice")
        seen.add(d)
    return parsed


def languages(dirs: list[Direction]) -> list[str]:
    """Every language of ``dirs``, sorted: the order of fairseq's ``--langs`` (stable, so that
    the language tokens keep their ids whichever order the pairs are listed in)."""
    return sorted({lang for d in dirs for lang in (d.src, d.tgt)})


#: ``data.*`` keys that change how prep runs, never what it writes: left out of the data config
#: a manifest records and compares.
RUN_ONLY_DATA_KEYS = ("workers",)


def prepared_data_config(data_cfg: DictConfig) -> dict:
    """The ``data`` section as the prepared data depend on it (its manifest's ``config``)."""
    container = OmegaConf.to_container(data_cfg)
    return {key: value for key, value in container.items() if key not in RUN_ONLY_DATA_KEYS}


def recorded_data_config(manifest: dict) -> dict | None:
    """The data config a manifest records, in :func:`prepared_data_config`'s form, with the keys
    added to the schema since it was written at their defaults: data prepared before a key
    existed stay usable by the runs trained on them. None where it no longer fits the schema."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DataConfig), manifest.get("config") or {})
    except Exception:  # noqa: BLE001 - omegaconf raises several types for a key it refuses
        return None
    return prepared_data_config(merged)


#: What every command reads of a manifest (format 2), as key paths: a manifest without one is
#: of another shape (not prep's, or hand-edited), one line naming the key.
REQUIRED_KEYS = (
    ("languages",),
    ("languages", "langs"),
    ("languages", "directions"),
    ("corpora",),
    ("files",),
    ("files", "bin"),
)


def read_manifest(path: Path) -> dict:
    """The manifest at ``path`` in the format-2 form; a missing or unreadable one, or one
    without a key of :data:`REQUIRED_KEYS` (named), is an error that says to run prep."""
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MoeMtError(
            f"{path}: no prepared data ({type(exc).__name__}); run `moemt prep` on this "
            "config first"
        ) from None
    try:
        manifest = upgraded(manifest)
    except (KeyError, TypeError, AttributeError) as exc:
        key = exc.args[0] if isinstance(exc, KeyError) else None
        raise _of_another_shape(path, key) from None
    for keys in REQUIRED_KEYS:
        found = manifest
        for key in keys:
            if not isinstance(found, dict) or key not in found:
                raise _of_another_shape(path, ".".join(keys))
            found = found[key]
    return manifest


def _of_another_shape(path: Path, key) -> MoeMtError:
    what = f"no key '{key}'" if key is not None else "a value of another type"
    return MoeMtError(
        f"{path}: not a manifest of prepared data ({what}); run `moemt prep` on this config again"
    )


def upgraded(manifest: dict) -> dict:
    """A format-1 manifest in the format-2 form (format 2 as it is)."""
    if manifest.get("format", 1) >= 2:
        return manifest
    if manifest.get("multilingual"):
        for name, corpus in manifest["corpora"].items():
            corpus.setdefault("text", f"{manifest['files']['text']}/{name}")
        return manifest
    src, tgt = manifest["languages"]["src"], manifest["languages"]["tgt"]
    name = f"{src}-{tgt}"
    corpus = {
        "languages": [src, tgt],
        "directions": [name],
        "zero_shot": [],
        "test_only": False,
        "text": manifest["files"]["text"],
        "inputs": manifest.get("inputs", {}),
        "splits": manifest["splits"],
    }
    rest = {k: v for k, v in manifest.items() if k not in ("languages", "inputs", "splits")}
    return {
        **rest,
        "multilingual": False,
        "languages": {"langs": sorted({src, tgt}), "directions": [name], "zero_shot": []},
        "corpora": {name: corpus},
    }


def trained_directions(manifest: dict) -> list[Direction]:
    return [parse_direction(d, "manifest") for d in manifest["languages"]["directions"]]


def corpus_of(manifest: dict, direction: Direction) -> str | None:
    """The prepared corpus of ``direction``'s language pair, or None."""
    for name, corpus in manifest["corpora"].items():
        if set(corpus["languages"]) == {direction.src, direction.tgt}:
            return name
    return None


def has_split(manifest: dict, direction: Direction, split: str) -> bool:
    """Whether ``direction``'s corpus has ``split`` prepared (train never counts)."""
    name = corpus_of(manifest, direction)
    return split != "train" and name is not None and split in manifest["corpora"][name]["splits"]


def text_files(manifest: dict, data_dir: Path, direction: Direction, split: str):
    """(source, reference) text files of ``direction``'s ``split`` in a prepared ``data/``:
    those of the corpus of its language pair (trained or test-only)."""
    name = corpus_of(manifest, direction)
    if name is None:
        prepared = ", ".join(sorted(manifest["corpora"]))
        raise MoeMtError(
            f"{direction}: no prepared corpus for this language pair (prepared: {prepared}; "
            "a direction that is not trained can be prepared for testing with data.zero_shot)"
        )
    corpus = manifest["corpora"][name]
    if split not in corpus["splits"] or split == "train":
        prepared = [s for s in corpus["splits"] if s != "train"]
        raise MoeMtError(
            f"eval.split={split}: not a prepared split of {name} "
            f"(prepared: {', '.join(prepared) or 'none'})"
        )
    text = data_dir / corpus["text"]
    return text / f"{split}.{direction.src}", text / f"{split}.{direction.tgt}"


def train_text(manifest: dict, data_dir: Path, direction: Direction) -> tuple[Path, Path]:
    """(source, target) of ``direction``'s cleaned training text in a prepared ``data/``."""
    name = corpus_of(manifest, direction)
    if name is None or "train" not in manifest["corpora"][name]["splits"]:
        raise MoeMtError(f"{direction}: not a trained direction of {data_dir}")
    text = data_dir / manifest["corpora"][name]["text"]
    return text / f"train.{direction.src}", text / f"train.{direction.tgt}"
