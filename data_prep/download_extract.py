"""Safe, atomic, resumable extraction of tar / zip / gz archives into a cache directory.

``extract(archive, dest)`` unpacks into a temporary directory next to ``dest`` and moves each
file into place only once the whole request is unpacked; a marker in ``dest`` lists what is
there, so that asking again for the same members is a no-op. Members that would land outside
``dest`` (absolute paths, ``..``), links and device files are refused with an error naming the
archive and the member.
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


def extract(archive: Path, dest: Path, members: Iterable[str] | None = None) -> Path:
    """Extract ``members`` (all if ``None``) of ``archive`` into ``dest``; return ``dest``.

    A ``gz`` archive holds one file, extracted as its name without ``.gz``; a ``file`` is copied.
    Re-running with members already extracted does nothing.
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
        got = _extract_into(archive, tmp, None if wanted is None else wanted - done)
        dest.mkdir(parents=True, exist_ok=True)
        for name in sorted(got):
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, target)
        _write_marker(dest, None if wanted is None else done | got)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _extract_into(archive: Path, tmp: Path, wanted: set[str] | None) -> set[str]:
    kind = archive_kind(archive)
    try:
        if kind == "tar":
            got = _extract_tar(archive, tmp, wanted)
        elif kind == "zip":
            got = _extract_zip(archive, tmp, wanted)
        else:
            got = _extract_single(archive, tmp, kind)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, gzip.BadGzipFile) as err:
        raise ExtractError(f"{archive}: corrupt {kind} archive: {err}") from None
    missing = sorted((wanted or set()) - got)
    if missing:
        raise ExtractError(f"{archive}: no member {missing[0]!r} in the archive")
    return got


def _extract_tar(archive: Path, tmp: Path, wanted: set[str] | None) -> set[str]:
    got: set[str] = set()
    with tarfile.open(archive, "r:*") as tar:
        for info in tar:
            name = str(_safe_name(archive, info.name))
            if info.isdir() or (wanted is not None and name not in wanted):
                continue
            if not info.isfile():
                raise ExtractError(f"{archive}: refusing member {info.name!r}: not a regular file")
            source = tar.extractfile(info)
            _copy_to(source, tmp / name)
            got.add(name)
    return got


def _extract_zip(archive: Path, tmp: Path, wanted: set[str] | None) -> set[str]:
    got: set[str] = set()
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = str(_safe_name(archive, info.filename))
            if info.is_dir() or (wanted is not None and name not in wanted):
                continue
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise ExtractError(f"{archive}: refusing member {info.filename!r}: a symlink")
            with zf.open(info) as source:
                _copy_to(source, tmp / name)
            got.add(name)
    return got


def _extract_single(archive: Path, tmp: Path, kind: str) -> set[str]:
    name = archive.name[: -len(".gz")] if kind == "gz" else archive.name
    opener = gzip.open if kind == "gz" else open
    with opener(archive, "rb") as source:
        _copy_to(source, tmp / name)
    return {name}


def _copy_to(source, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)
