"""Safe, atomic, resumable extraction of tar / zip / gz archives into a cache directory.

``extract(archive, dest)`` unpacks into a temporary directory next to ``dest`` and moves each
file into place only once the whole request is unpacked; a marker in ``dest`` lists what is
there, so that asking again for the same members is a no-op. Members that would land outside
``dest`` (absolute paths, ``..``), links and device files are refused with an error naming the
archive and the member.

An archive that expands far beyond its size (a gzip bomb: 1 MB of zeros is 1 GiB unpacked) is
refused while it is extracted, once its members pass :data:`MAX_EXPANSION` times the size the
corpus entry declares (at least :data:`MIN_EXPANSION_LIMIT`): text compresses about 3 to 10
times, deflate at most about 1,000. A member is refused before it is written when the free space
is less than its declared size, and extraction stops when the disk is about to fill
(:data:`MIN_FREE`), rather than filling it.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

__all__ = ["MARKER", "ExtractError", "archive_kind", "extract"]

MARKER = ".moemt-extracted.json"
_CHUNK = 1 << 20

#: An archive's members may expand to this many times its declared size in all ...
MAX_EXPANSION = 100
#: ... and to this many bytes whatever its size (a small tar.gz is mostly tar padding).
MIN_EXPANSION_LIMIT = 256 << 20
#: Extraction stops when less than this is left free on the disk.
MIN_FREE = 64 << 20
#: Free space is checked again after this many bytes written.
_FREE_CHECK_EVERY = 64 << 20


class ExtractError(RuntimeError):
    """An archive cannot be extracted safely or lacks a requested member."""


def archive_kind(path: Path) -> str:
    """``tar`` (also .tgz / .tar.gz), ``zip``, ``gz`` (one gzipped file) or ``file``."""
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(".gz"):
        return "gz"
    return "file"


def _read_marker(dest: Path) -> set[str] | None:
    """Members already extracted into ``dest``; ``None`` means all of them."""
    try:
        data = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return None if data.get("all") else set(data.get("members", []))


def _write_marker(dest: Path, members: set[str] | None) -> None:
    payload = {"all": True} if members is None else {"all": False, "members": sorted(members)}
    tmp = dest / (MARKER + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, dest / MARKER)


def _safe_name(archive: Path, name: str) -> PurePosixPath:
    """``name`` as a relative path inside the target, or an error if it would escape it."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or ":" in pure.parts[0]:
        raise ExtractError(f"{archive}: refusing member {name!r}: it escapes the target directory")
    return pure


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


class _Budget:
    """What an extraction may still write: the expansion limit, and the disk's free space."""

    def __init__(self, archive: Path, tmp: Path, declared_size: int | None):
        self.archive, self.tmp = archive, tmp
        size = max(declared_size or 0, archive.stat().st_size)
        self.limit = max(MAX_EXPANSION * size, MIN_EXPANSION_LIMIT)
        self.why = f"{MAX_EXPANSION} times the archive's {_size(size)}"
        self.written = 0
        self._next_free_check = 0

    def member(self, name: str, declared: int | None) -> None:
        """Before writing ``name`` of ``declared`` bytes (where the archive says)."""
        if declared is None:
            return
        self._check_limit(name, self.written + declared)
        free = shutil.disk_usage(self.tmp).free
        if declared + MIN_FREE > free:
            raise ExtractError(
                f"{self.archive}: not enough free space in {self.tmp.parent} to extract "
                f"{name!r}: {_size(declared)} needed, {_size(free)} free"
            )

    def wrote(self, name: str, n: int) -> None:
        self.written += n
        self._check_limit(name, self.written)
        if self.written >= self._next_free_check:
            self._next_free_check = self.written + _FREE_CHECK_EVERY
            free = shutil.disk_usage(self.tmp).free
            if free < MIN_FREE:
                raise ExtractError(
                    f"{self.archive}: not enough free space in {self.tmp.parent} to extract "
                    f"{name!r}: {_size(free)} left after {_size(self.written)}"
                )

    def _check_limit(self, name: str, total: int) -> None:
        if total > self.limit:
            raise ExtractError(
                f"{self.archive}: refusing member {name!r}: the archive expands beyond "
                f"{_size(self.limit)} ({self.why}); a damaged or hostile archive"
            )


def extract(
    archive: Path,
    dest: Path,
    members: Iterable[str] | None = None,
    declared_size: int | None = None,
) -> Path:
    """Extract ``members`` (all if ``None``) of ``archive`` into ``dest``; return ``dest``.

    A ``gz`` archive holds one file, extracted as its name without ``.gz``; a ``file`` is copied.
    Re-running with members already extracted does nothing. ``declared_size`` is the size the
    corpus entry declares (else the file's): the members may expand to at most
    :data:`MAX_EXPANSION` times the larger of the two.
    """
    archive = Path(archive)
    dest = Path(dest)
    wanted = None if members is None else {str(_safe_name(archive, m)) for m in members}
    done = _read_marker(dest) if dest.is_dir() else set()
    if done is None or (wanted is not None and wanted <= done):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extracting-", dir=dest.parent))
    try:
        budget = _Budget(archive, tmp, declared_size)
        got = _extract_into(archive, tmp, None if wanted is None else wanted - done, budget)
        dest.mkdir(parents=True, exist_ok=True)
        for name in sorted(got):
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, target)
        _write_marker(dest, None if wanted is None else done | got)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _extract_into(archive: Path, tmp: Path, wanted: set[str] | None, budget: _Budget) -> set[str]:
    kind = archive_kind(archive)
    try:
        if kind == "tar":
            got = _extract_tar(archive, tmp, wanted, budget)
        elif kind == "zip":
            got = _extract_zip(archive, tmp, wanted, budget)
        else:
            got = _extract_single(archive, tmp, kind, budget)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, gzip.BadGzipFile) as err:
        raise ExtractError(f"{archive}: corrupt {kind} archive: {err}") from None
    missing = sorted((wanted or set()) - got)
    if missing:
        raise ExtractError(f"{archive}: no member {missing[0]!r} in the archive")
    return got


def _extract_tar(archive: Path, tmp: Path, wanted: set[str] | None, budget: _Budget) -> set[str]:
    got: set[str] = set()
    with tarfile.open(archive, "r:*") as tar:
        for info in tar:
            name = str(_safe_name(archive, info.name))
            if info.isdir() or (wanted is not None and name not in wanted):
                continue
            if not info.isfile():
                raise ExtractError(f"{archive}: refusing member {info.name!r}: not a regular file")
            budget.member(name, info.size)
            source = tar.extractfile(info)
            _copy_to(source, tmp / name, name, budget)
            got.add(name)
    return got


def _extract_zip(archive: Path, tmp: Path, wanted: set[str] | None, budget: _Budget) -> set[str]:
    got: set[str] = set()
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = str(_safe_name(archive, info.filename))
            if info.is_dir() or (wanted is not None and name not in wanted):
                continue
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise ExtractError(f"{archive}: refusing member {info.filename!r}: a symlink")
            budget.member(name, info.file_size)
            with zf.open(info) as source:
                _copy_to(source, tmp / name, name, budget)
            got.add(name)
    return got


def _extract_single(archive: Path, tmp: Path, kind: str, budget: _Budget) -> set[str]:
    name = archive.name[: -len(".gz")] if kind == "gz" else archive.name
    opener = gzip.open if kind == "gz" else open
    # A gzip file's own size field is modulo 4 GiB: only the bytes written say how large it is.
    budget.member(name, None if kind == "gz" else archive.stat().st_size)
    with opener(archive, "rb") as source:
        _copy_to(source, tmp / name, name, budget)
    return {name}


def _copy_to(source, target: Path, name: str, budget: _Budget) -> None:
    """Copy ``source`` to ``target`` chunk by chunk, within ``budget``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        while chunk := source.read(_CHUNK):
            budget.wrote(name, len(chunk))
            out.write(chunk)
