"""Download corpora: resumable HTTP with checksums, then line-aligned text per split and language.

- :func:`download` fetches one URL into ``dest``: it resumes a ``.part`` file with an HTTP Range
  request (and restarts cleanly when the server ignores Range), retries a cut connection a
  bounded number of times, verifies the sha256 (and MD5 where that is what was published) and
  only then renames ``.part`` to ``dest``. A mismatch is an error naming the file and both
  hashes; the bad file is moved aside to ``dest.bad`` and never used.
- :func:`fetch_corpus` turns a registry :class:`~moe_mt.data_prep.sources.Source` into plain-text,
  line-aligned files ``<cache>/corpora/<name>/<split>.<lang>``: it downloads and extracts the
  archives, converts SGML, concatenates the parts in order and applies holdouts (fairseq's IWSLT14
  valid). Outputs are written to temporary files and renamed together, then a marker is written;
  a second run with the marker in place does nothing.

An archive without a published sha256 is trusted on first use: its hash is printed and recorded
in ``<cache>/checksums.json`` labelled unverified, and every later download is checked against it.
Every error is a :class:`DownloadError` (or :class:`ChecksumError`) whose message is one line that
names the URL or the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from moe_mt.data_prep.download_extract import ExtractError, extract
from moe_mt.data_prep.source_text import TextError, read_part
from moe_mt.data_prep.sources import Archive, Format, Part, SacrebleuPart, Source, get_source
from moe_mt.locking import exclusive

__all__ = [
    "ChecksumError",
    "Corpus",
    "DownloadError",
    "download",
    "download_archive",
    "fetch_corpus",
    "file_sha256",
    "resolve_sacrebleu",
]

USER_AGENT = "moemt-download/0.1 (Python urllib)"
_CHUNK = 1 << 16
CHECKSUMS_FILE = "checksums.json"
CORPUS_MARKER = ".moemt-corpus.json"


class DownloadError(RuntimeError):
    """A download or corpus build failed; the message is one line naming the URL or file."""


class ChecksumError(DownloadError):
    """A downloaded file does not have the expected hash (the file was moved aside)."""


def _console() -> Console:
    return Console(stderr=True)


def _progress(enabled: bool) -> Progress:
    console = _console()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=False,
    )


def file_sha256(path: Path) -> str:
    """The sha256 of ``path``, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Cut(Exception):
    """The connection broke; the ``.part`` file keeps what arrived."""


@dataclass
class _Hashes:
    sha256: Any = field(default_factory=hashlib.sha256)
    md5: Any = field(default_factory=hashlib.md5)

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.md5.update(chunk)

    @classmethod
    def of_file(cls, path: Path) -> _Hashes:
        hashes = cls()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                hashes.update(chunk)
        return hashes


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def download(
    url: str,
    dest: Path | str,
    sha256: str | None = None,
    progress: bool = True,
    *,
    md5: str | None = None,
    timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``) and return ``dest``.

    ``sha256`` / ``md5``: expected hex digests (either may be ``None``). ``dest`` appears only
    once the whole body arrived and matched them; a ``dest`` already there with a matching
    ``dest.sha256`` record is returned without a request. ``timeout`` is per socket operation;
    a cut or timed-out connection is retried ``retries`` times (``backoff`` seconds, doubling),
    resuming where it broke. Raises :class:`DownloadError` / :class:`ChecksumError`.
    """
    dest = Path(dest)
    return _download(url, dest, sha256, md5, progress, timeout, retries, backoff)[0]


@contextlib.contextmanager
def _exclusive(lock: Path, what: str, wait: bool = False):
    """Hold an exclusive lock on ``lock`` (released if the process dies); unless ``wait``,
    refuse when another process holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)

    def refused() -> DownloadError:
        return DownloadError(f"{what} is in use by another process ({lock})")

    with open(lock, "a") as handle, exclusive(handle, refused, wait=wait):
        yield


def _download(url, dest, sha256, md5, progress, timeout, retries, backoff) -> tuple[Path, str]:
    sha256 = sha256.lower() if sha256 else None
    md5 = md5.lower() if md5 else None
    if dest.is_file():
        known = _cached_hash(dest)
        if sha256 is None or known == sha256:
            return dest, known
    with _exclusive(dest.with_name(dest.name + ".lock"), f"download {dest}"):
        return _download_locked(url, dest, sha256, md5, progress, timeout, retries, backoff)


def _download_locked(url, dest, sha256, md5, progress, timeout, retries, backoff):
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    with _progress(progress) as bar:
        task = bar.add_task(dest.name, total=None)
        while True:
            try:
                hashes = _fetch_into(url, part, timeout, bar, task)
                break
            except _Cut as cut:
                attempt += 1
                if attempt > retries:
                    raise DownloadError(
                        f"download failed: {url}: connection cut {attempt} times ({cut}); "
                        f"{part.stat().st_size if part.exists() else 0} bytes kept in {part}"
                    ) from None
                time.sleep(backoff * 2 ** (attempt - 1))
    _verify(url, part, dest, hashes, sha256, md5)
    os.replace(part, dest)
    digest = hashes.sha256.hexdigest()
    _sidecar(dest).write_text(digest + "\n", encoding="ascii")
    return dest, digest


def _cached_hash(dest: Path) -> str:
    """The recorded sha256 of a finished download (hashing it once if none is recorded)."""
    sidecar = _sidecar(dest)
    try:
        return sidecar.read_text(encoding="ascii").strip()
    except OSError:
        digest = file_sha256(dest)
        sidecar.write_text(digest + "\n", encoding="ascii")
        return digest


def _verify(url, part: Path, dest: Path, hashes: _Hashes, sha256, md5) -> None:
    for kind, expected, got in (
        ("sha256", sha256, hashes.sha256.hexdigest()),
        ("md5", md5, hashes.md5.hexdigest()),
    ):
        if expected is not None and got != expected:
            bad = dest.with_name(dest.name + ".bad")
            os.replace(part, bad)
            raise ChecksumError(
                f"checksum mismatch for {dest.name} (from {url}): expected {kind} {expected}, "
                f"got {got}; the file was moved aside to {bad} and not used"
            )


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:
            return err  # the .part is as long as the file (or longer): restart from zero
        if err.code in (408, 429) or err.code >= 500:
            raise _Cut(f"HTTP {err.code}") from None
        raise DownloadError(f"download failed: {url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, (socket.timeout, ConnectionError, TimeoutError)):
            raise _Cut(str(err.reason)) from None
        raise DownloadError(f"download failed: {url}: {err.reason}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise _Cut(f"{type(err).__name__}: {err}") from None


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _fetch_into(url: str, part: Path, timeout: float, bar: Progress, task) -> _Hashes:
    """One request: append to ``part`` (resuming) or rewrite it; hashes of the whole file."""
    start = part.stat().st_size if part.exists() else 0
    response = _open(url, start, timeout)
    with contextlib.closing(response):
        status = response.getcode()
        if status == 416:
            part.unlink(missing_ok=True)
            raise _Cut("range not satisfiable; restarting from zero")
        resumed = status == 206 and _range_start(response) == start and start > 0
        if status == 206 and not resumed:
            part.unlink(missing_ok=True)
            raise _Cut("unexpected partial content; restarting from zero")
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        offset = start if resumed else 0
        hashes = _Hashes.of_file(part) if resumed else _Hashes()
        total = offset + expected if expected is not None else None
        bar.update(task, completed=offset, total=total)
        got = 0
        with open(part, "ab" if resumed else "wb") as out:
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    hashes.update(chunk)
                    got += len(chunk)
                    bar.update(task, advance=len(chunk))
            except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as err:
                raise _Cut(f"{type(err).__name__}: {err}") from None
        if expected is not None and got < expected:
            raise _Cut(f"got {got} of {expected} bytes")
    return hashes


def _range_start(response) -> int | None:
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------------------------
# Archives of the registry: mirrors, published or first-use checksums
# --------------------------------------------------------------------------------------------


def _load_checksums(cache_dir: Path) -> dict:
    path = cache_dir / CHECKSUMS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as err:
        raise DownloadError(f"{path}: not valid JSON ({err}); fix or delete it") from None


def _record_checksum(cache_dir: Path, archive: Archive, url: str, digest: str) -> None:
    path = cache_dir / CHECKSUMS_FILE
    with _exclusive(path.with_name(path.name + ".lock"), str(path), wait=True):
        records = _load_checksums(cache_dir)
        records[archive.filename] = {
            "sha256": digest,
            "url": url,
            "verified": False,
            "note": "UNVERIFIED: trusted on first use (nothing published); later runs must match",
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def download_archive(
    archive: Archive,
    cache_dir: Path | str,
    progress: bool = True,
    *,
    timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 1.0,
) -> Path:
    """Download ``archive`` into ``<cache_dir>/downloads/`` (trying each mirror in turn).

    With no published sha256, the first download's hash is recorded in
    ``<cache_dir>/checksums.json`` as unverified and later downloads are checked against it.
    ``timeout`` / ``retries`` / ``backoff`` are :func:`download`'s.
    """
    cache_dir = Path(cache_dir)
    dest = cache_dir / "downloads" / archive.filename
    recorded = _load_checksums(cache_dir).get(archive.filename, {}).get("sha256")
    expected = archive.sha256 or recorded
    errors: list[str] = []
    for url in archive.urls:
        try:
            path, digest = _download(
                url, dest, expected, archive.md5, progress, timeout, retries, backoff
            )
        except ChecksumError as err:
            if archive.sha256 is None and recorded is not None:
                raise ChecksumError(
                    f"{err} (the expected sha256 is the one recorded on first use in "
                    f"{cache_dir / CHECKSUMS_FILE}; delete its entry if upstream changed the file)"
                ) from None
            raise
        except DownloadError as err:
            errors.append(str(err))
            continue
        if archive.sha256 is None and archive.md5 is None and recorded is None:
            _record_checksum(cache_dir, archive, url, digest)
            _console().print(
                f"[yellow]UNVERIFIED[/] {archive.filename}: no published checksum; sha256 "
                f"{digest} recorded in {cache_dir / CHECKSUMS_FILE} (later runs verify it)",
                highlight=False,
            )
        return path
    raise DownloadError(" | ".join(errors) if errors else f"{archive.filename}: no url")


# --------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """A fetched corpus: ``files[split][lang]`` is a plain-text, line-aligned file."""

    name: str
    languages: tuple[str, str]
    directory: Path
    files: dict[str, dict[str, Path]]
    lines: dict[str, int]
    lowercase: bool  # the source's rule for prep (fairseq's IWSLT14), not applied here
    unverified: tuple[str, ...] = ()  # archives trusted on first use


def fetch_corpus(
    name: str | Source,
    cache_dir: Path | str,
    progress: bool = True,
    *,
    timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 1.0,
) -> Corpus:
    """Download, verify and extract the archives of source ``name`` and write its splits.

    ``name`` is a registry name (or a :class:`Source`). Returns a :class:`Corpus` whose
    ``files[split][lang]`` are ``<cache_dir>/corpora/<name>/<split>.<lang>``. Re-running once
    they are complete (same source definition, same file sizes) downloads and writes nothing.
    ``timeout`` / ``retries`` / ``backoff`` are :func:`download`'s.
    """
    source = name if isinstance(name, Source) else get_source(name)
    cache_dir = Path(cache_dir)
    out_dir = cache_dir / "corpora" / source.name
    done = _complete_corpus(source, out_dir, cache_dir)
    if done is not None:
        return done
    net = {"timeout": timeout, "retries": retries, "backoff": backoff}
    with _exclusive(cache_dir / "corpora" / f".{source.name}.lock", f"corpus {source.name!r}"):
        counts = _build(source, cache_dir, out_dir, progress, net)
        marker = {
            "source": source.name,
            "definition": _fingerprint(source),
            "lines": counts,
            "files": _file_sizes(source, out_dir),
        }
        tmp = out_dir / (CORPUS_MARKER + ".tmp")
        tmp.write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, out_dir / CORPUS_MARKER)
    if progress:
        sizes = ", ".join(f"{split} {n:,}" for split, n in counts.items())
        _console().print(f"{source.name}: {sizes} lines in {out_dir}", highlight=False)
    return _corpus(source, out_dir, counts, cache_dir)


def _fingerprint(source: Source) -> str:
    """A hash of the source's definition: a changed registry entry invalidates its corpus."""
    return hashlib.sha256(repr(source).encode("utf-8")).hexdigest()


def _corpus(source: Source, out_dir: Path, counts: dict[str, int], cache_dir: Path) -> Corpus:
    records = _load_checksums(cache_dir)
    unverified = tuple(
        a.filename for a in source.archives() if a.sha256 is None and a.filename in records
    )
    files = {
        split: {lang: out_dir / f"{split}.{lang}" for lang in source.languages}
        for split in source.split_names
    }
    return Corpus(
        source.name, source.languages, out_dir, files, counts, source.lowercase, unverified
    )


def _file_sizes(source: Source, out_dir: Path) -> dict[str, int]:
    return {
        f"{split}.{lang}": (out_dir / f"{split}.{lang}").stat().st_size
        for split in source.split_names
        for lang in source.languages
    }


def _complete_corpus(source: Source, out_dir: Path, cache_dir: Path) -> Corpus | None:
    """The corpus if its marker is there and every file has the recorded size."""
    try:
        marker = json.loads((out_dir / CORPUS_MARKER).read_text(encoding="utf-8"))
        if marker.get("definition") != _fingerprint(source):
            return None
        if marker.get("files") != _file_sizes(source, out_dir):
            return None
    except (OSError, ValueError):
        return None
    return _corpus(source, out_dir, marker["lines"], cache_dir)


def _build(source: Source, cache_dir: Path, out_dir: Path, progress, net) -> dict[str, int]:
    """Write every split to temporary files, then rename them all; return line counts."""
    (out_dir / CORPUS_MARKER).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    holdouts = {h.from_split: h for h in source.holdouts}
    outputs = {
        split: {lang: out_dir / f"{split}.{lang}.tmp" for lang in source.languages}
        for split in source.split_names
    }
    handles = {
        split: {lang: open(path, "w", encoding="utf-8", newline="\n") for lang, path in d.items()}
        for split, d in outputs.items()
    }
    counts = dict.fromkeys(source.split_names, 0)
    try:
        for split, parts in source.splits.items():
            holdout = holdouts.get(split)
            for part in parts:
                pairs = _part_lines(part, source, cache_dir, progress, net)
                for src, tgt in pairs:
                    target = split
                    if holdout is not None:
                        index = counts[split] + counts[holdout.split] + 1
                        target = holdout.split if index % holdout.every == 0 else split
                    handles[target][source.languages[0]].write(src + "\n")
                    handles[target][source.languages[1]].write(tgt + "\n")
                    counts[target] += 1
        for d in handles.values():
            for handle in d.values():
                handle.close()
        for split, d in outputs.items():
            for lang, path in d.items():
                os.replace(path, out_dir / f"{split}.{lang}")
    except (ExtractError, TextError, OSError) as err:
        raise DownloadError(f"corpus {source.name!r}: {err}") from None
    finally:
        for d in handles.values():
            for handle in d.values():
                handle.close()
        for d in outputs.values():
            for path in d.values():
                path.unlink(missing_ok=True)
    return counts


def _part_lines(part, source: Source, cache_dir: Path, progress, net):
    """Aligned (source, target) sentence pairs of one part; a length mismatch is an error."""
    if isinstance(part, SacrebleuPart):
        part, paths = _sacrebleu_files(part, source, cache_dir, progress, net)
    else:
        paths = _member_files(part, source, cache_dir, progress, net)
    src_lang, tgt_lang = source.languages
    src_lines = read_part(part, paths[src_lang])
    tgt_lines = read_part(part, paths[tgt_lang])
    end = object()
    n = 0
    while True:
        src, tgt = next(src_lines, end), next(tgt_lines, end)
        if src is end and tgt is end:
            return
        if src is end or tgt is end:
            raise DownloadError(
                f"corpus {source.name!r}: {paths[src_lang]} and {paths[tgt_lang]} are not "
                f"line-aligned (one ends after {n} sentences, the other does not)"
            )
        n += 1
        yield src, tgt


def _member_files(part: Part, source: Source, cache_dir: Path, progress, net) -> dict:
    """The extracted file of each language of ``part``."""
    paths = {}
    for lang in source.languages:
        archive = part.archive_for(lang)
        downloaded = download_archive(archive, cache_dir, progress, **net)
        kind = archive.kind
        if kind == "file":
            paths[lang] = downloaded
            continue
        dest = cache_dir / "extracted" / archive.filename
        if kind == "gz":
            extract(downloaded, dest)
            paths[lang] = dest / archive.filename[: -len(".gz")]
        else:
            extract(downloaded, dest, [part.members[lang]])
            paths[lang] = dest / part.members[lang]
    return paths


def _sacrebleu_files(part: SacrebleuPart, source: Source, cache_dir: Path, progress, net):
    """Resolve a sacrebleu test set to an equivalent SGML Part and its extracted files."""
    resolved = resolve_sacrebleu(part)
    return resolved, _member_files(resolved, source, cache_dir, progress, net)


def resolve_sacrebleu(part: SacrebleuPart) -> Part:
    """The :class:`Part` behind one of sacrebleu's test sets (its URL, MD5 and member paths)."""
    from sacrebleu.dataset import DATASETS

    dataset = DATASETS.get(part.test_set)
    if dataset is None:
        raise DownloadError(f"sacrebleu has no test set {part.test_set!r}")
    files = dataset.langpairs.get(part.langpair)
    if files is None or len(dataset.data) != 1:
        raise DownloadError(
            f"sacrebleu test set {part.test_set!r} has no single-archive pair {part.langpair!r}"
        )
    src, tgt = part.langpair.split("-")
    url = dataset.data[0]
    stem = part.test_set.replace("/", "-")
    archive = Archive(
        urls=(url,),
        filename=f"sacrebleu-{stem}-{url.rsplit('/', 1)[-1]}",
        sha256=None,
        sha256_note="sacrebleu publishes an MD5 (verified); the sha256 is recorded on first use",
        md5=dataset.md5[0] if dataset.md5 else None,
    )
    fmt = Format.SGML if files[0].endswith((".sgm", ".xml")) else Format.TEXT
    return Part(archive, {src: files[0], tgt: files[1]}, format=fmt)
