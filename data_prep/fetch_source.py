"""Registry corpora as ``moemt prep`` inputs: ``data.source`` names a corpus of
:mod:`moe_mt.data_prep.sources`; it is fetched into ``data.cache_dir`` and its split files are
then validated, cleaned, encoded and binarised exactly as local files would be.

- :func:`input_files` gives prep its ``{split: {lang: path}}``: the local files of
  ``data.train`` / ``data.valid`` / ``data.test``, or the splits of the fetched corpus
  (:func:`moe_mt.data_prep.download.fetch_corpus`: resumable downloads with rich progress,
  checksums, extraction), lowercased when ``data.lowercase`` is set.
- :func:`lowercased` is fairseq's IWSLT14 rule (``prepare-iwslt14.sh`` pipes every split, both
  sides, through Moses ``lowercase.perl``, i.e. Perl's ``lc``): Python's ``str.lower`` applies
  the same Unicode full lowercase mapping character by character. The copies live in the cache
  (``<cache>/lowercased/``), keyed by the sha256 of the original, so prep's ``text/`` copies of
  valid and test, which eval scores against, are lowercased too: the hypotheses of a model
  trained on lowercased text are scored against lowercased references.
- :func:`download_plan` describes, without writing or downloading anything, what fetching a
  source would download (``moemt prep --dry-run``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import DictConfig

from moe_mt.data_prep import download as dl
from moe_mt.data_prep.sources import Part, SacrebleuPart, Source, SourceError, get_source
from moe_mt.errors import MoeMtError

__all__ = [
    "SPLITS",
    "PlannedArchive",
    "cache_dir",
    "check_single_pair",
    "default_cache_dir",
    "download_plan",
    "input_files",
    "local_files",
    "lowercased",
    "registry_source",
]

SPLITS = ("train", "valid", "test")
LOWERCASED_DIR = "lowercased"


def default_cache_dir() -> Path:
    """``$MOEMT_CACHE_DIR``, else ``$XDG_CACHE_HOME/moemt``, else ``~/.cache/moemt``."""
    if os.environ.get("MOEMT_CACHE_DIR"):
        return Path(os.environ["MOEMT_CACHE_DIR"]).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(xdg).expanduser() / "moemt").resolve()


def cache_dir(data_cfg: DictConfig) -> Path:
    """``data.cache_dir`` (already absolute after loading) or the default cache directory."""
    return Path(data_cfg.cache_dir) if data_cfg.cache_dir else default_cache_dir()


def registry_source(data_cfg: DictConfig) -> Source:
    """The registry entry of ``data.source``, checked against ``data.src`` / ``data.tgt``."""
    try:
        source = get_source(data_cfg.source)
    except SourceError as err:
        raise MoeMtError(f"data.source: {err}") from None
    if {data_cfg.src, data_cfg.tgt} != set(source.languages):
        raise MoeMtError(
            f"data.source={source.name} is {'-'.join(source.languages)}, but data.src="
            f"{data_cfg.src} data.tgt={data_cfg.tgt}"
        )
    for split in ("train", "valid"):
        if split not in source.split_names:
            raise MoeMtError(f"data.source={source.name} has no {split} split")
    return source


def check_single_pair(data_cfg: DictConfig) -> None:
    """``data.sources`` (a corpus per language pair) belongs to multilingual recipes."""
    if data_cfg.get("sources"):
        raise MoeMtError(
            "data.sources (a corpus per language pair) needs data.pairs; one pair: data.source"
        )


def local_files(data_cfg: DictConfig) -> dict[str, dict[str, Path]]:
    """``{split: {lang: path}}`` of ``data.train`` / ``valid`` / ``test`` (prefixes, as given)."""
    return {
        split: {lang: Path(f"{data_cfg[split]}.{lang}") for lang in (data_cfg.src, data_cfg.tgt)}
        for split in SPLITS
        if data_cfg[split] is not None
    }


def input_files(
    data_cfg: DictConfig,
    local: Callable[[DictConfig], dict[str, dict[str, Path]]] = local_files,
    progress: bool = True,
) -> dict[str, dict[str, Path]]:
    """The files prep reads, ``{split: {lang: path}}``.

    ``local(data_cfg)`` gives the local files when ``data.source`` is not set (prep passes its
    own, which checks that they exist); otherwise the registry corpus is fetched (a no-op once
    it is complete in the cache). ``data.lowercase`` swaps in lowercased copies.
    """
    check_single_pair(data_cfg)
    if data_cfg.source is None:
        files = local(data_cfg)
    else:
        source = registry_source(data_cfg)
        try:
            corpus = dl.fetch_corpus(source, cache_dir(data_cfg), progress=progress)
        except (dl.DownloadError, SourceError) as err:
            raise MoeMtError(f"data.source={source.name}: {err}") from None
        files = {split: dict(corpus.files[split]) for split in SPLITS if split in corpus.files}
    if data_cfg.lowercase:
        files = lowercased(files, cache_dir(data_cfg) / LOWERCASED_DIR)
    return files


def lowercased(files: dict[str, dict[str, Path]], out_dir: Path) -> dict[str, dict[str, Path]]:
    """Lowercased copies of ``files`` in ``out_dir`` (fairseq's IWSLT14 rule, see the module).

    A copy is named after the sha256 of its original, so a changed original gets a new copy
    and an unchanged one is reused; each is written to a temporary name and renamed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, dict[str, Path]] = {}
    for split, langs in files.items():
        result[split] = {}
        for lang, path in langs.items():
            if not path.is_file():
                raise MoeMtError(f"{path}: no such file (data.{split})")
            dest = out_dir / f"{dl.file_sha256(path)[:32]}.{lang}"
            if not dest.is_file():
                _write_lowercased(path, dest)
            result[split][lang] = dest
    return result


def _write_lowercased(path: Path, dest: Path) -> None:
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    try:
        # newline="" keeps every line ending as it is: validation still sees a stray \r.
        with (
            open(path, encoding="utf-8", newline="") as inp,
            open(tmp, "w", encoding="utf-8", newline="") as out,
        ):
            for line in inp:
                out.write(line.lower())
        os.replace(tmp, dest)
    except UnicodeDecodeError as err:
        raise MoeMtError(f"{path}: not UTF-8 ({err.reason}); cannot lowercase it") from None
    finally:
        tmp.unlink(missing_ok=True)


# -- what fetching would do (prep --dry-run) ----------------------------------------------------


@dataclass(frozen=True)
class PlannedArchive:
    """One download of a source, as ``--dry-run`` reports it."""

    filename: str
    urls: tuple[str, ...]
    size: int | None  # bytes, where the registry knows it
    checksum: str  # "sha256 <hex>", "md5 <hex> (...)" or "unverified ..."
    path: Path  # where the download goes in the cache
    cached: bool  # already downloaded (and verified when it was)
    used_for: tuple[str, ...]  # the splits it feeds


def download_plan(source: Source, cache: Path) -> list[PlannedArchive]:
    """Every archive that fetching ``source`` into ``cache`` needs, in first-use order.

    Reads the cache (never writes it): a file counts as cached when the downloader would reuse
    it (present with its ``.sha256`` record). sacrebleu's test sets are resolved through the
    installed sacrebleu's registry, offline.
    """
    records = _recorded_checksums(cache)
    planned: dict[str, PlannedArchive] = {}
    for split, parts in source.splits.items():
        for part in parts:
            resolved = _resolve(part)
            for archive in resolved.all_archives():
                known = planned.get(archive.filename)
                if known is not None:
                    if split not in known.used_for:
                        planned[archive.filename] = _with_split(known, split)
                    continue
                path = cache / "downloads" / archive.filename
                planned[archive.filename] = PlannedArchive(
                    filename=archive.filename,
                    urls=archive.urls,
                    size=archive.size,
                    checksum=_checksum_label(archive, records),
                    path=path,
                    cached=path.is_file() and path.with_name(path.name + ".sha256").is_file(),
                    used_for=(split,),
                )
    return list(planned.values())


def _resolve(part: Part | SacrebleuPart) -> Part:
    if isinstance(part, SacrebleuPart):
        try:
            return dl.resolve_sacrebleu(part)
        except dl.DownloadError as err:
            raise MoeMtError(str(err)) from None
    return part


def _with_split(planned: PlannedArchive, split: str) -> PlannedArchive:
    return replace(planned, used_for=(*planned.used_for, split))


def _recorded_checksums(cache: Path) -> dict:
    try:
        return json.loads((cache / dl.CHECKSUMS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _checksum_label(archive, records: dict) -> str:
    if archive.sha256:
        return f"sha256 {archive.sha256}"
    recorded = records.get(archive.filename, {}).get("sha256")
    if archive.md5:
        return f"md5 {archive.md5} (sacrebleu's); sha256 unverified"
    if recorded:
        return f"unverified (sha256 {recorded} recorded on first use)"
    return "unverified (no published checksum; recorded on first download)"
