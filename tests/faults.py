"""Helpers of the bad-input catalogues (``tests/test_faults_<command>.py``): run a command as a
user does, check that it failed with exit code 1 and one line, and break writes on purpose.

Disk-full and read-only file systems are simulated by injecting the OSError the kernel would
raise (ENOSPC on a write, EROFS on anything that writes) at Python's write calls for paths under
one directory: tests may run as root, for whom ``chmod`` forbids nothing, and mounting a small
tmpfs is rarely permitted (:func:`small_tmpfs` tries, and skips only that variant).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_mt.cli.main import app


def invoke(*args, **kwargs):
    """``moemt ARGS...`` in this process (``input=`` is its stdin)."""
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


#: The start of a log record of fairseq or the trainer on stderr (``2026-12-05 22:55:36,568 |``).
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \| ")


def own_lines(stderr: str) -> list[str]:
    """moemt's lines on stderr, without the log records of fairseq and the trainer (a record
    may span lines: fairseq logs the model's structure; an ``error:`` line ends it)."""
    own, in_record = [], False
    for line in stderr.splitlines():
        if _LOG_RECORD.match(line):
            in_record = True
        elif line.startswith("error: ") or not in_record:
            in_record = False
            if line.strip():
                own.append(line)
    return own


def one_error_line(result) -> str:
    """The one ``error: ...`` line of a command that failed as a user error should: exit code
    1, no exception escaping (a traceback), nothing else of moemt's on stderr."""
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = own_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0].removeprefix("error: ")


def leftovers(root: Path) -> list[str]:
    """Temporary files and directories a failed write must not leave behind."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.endswith((".tmp", ".tmp-copy")) or ".building." in p.name
    )


# -- injected write failures ---------------------------------------------------------------------


def _below(path, root: Path) -> bool:
    try:
        return Path(os.fsdecode(path)).resolve().is_relative_to(root)
    except (TypeError, ValueError, OSError):
        return False


def _writes(mode: str) -> bool:
    return any(c in mode for c in "wax+")


class _FullDisk:
    """A file opened for writing on a full disk: every write fails with ENOSPC."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def writelines(self, lines):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def __iter__(self):
        return iter(self._handle)


def fail_writes(monkeypatch, root: Path, code: int, only=lambda path: True) -> None:
    """Make writing under ``root`` fail as on a full disk (``ENOSPC``: opening works, every
    write fails) or a read-only file system (``EROFS``: opening for writing, creating a
    directory, renaming fail), for Python's write calls (``open``, ``os.open``, ``os.fdopen``,
    ``os.mkdir``, ``os.replace``, ``os.rename``); ``only(path)`` narrows it to some files."""
    root = Path(root).resolve()

    def _under(path, root: Path) -> bool:  # and chosen by ``only``
        return _below(path, root) and only(Path(os.fsdecode(path)))

    real_open, real_os_open, real_fdopen = builtins.open, os.open, os.fdopen
    real_mkdir, real_replace, real_rename = os.mkdir, os.replace, os.rename
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def refuse(path):
        raise OSError(code, os.strerror(code), os.fsdecode(path))

    def fd_path(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, int) or not _writes(mode) or not _under(file, root):
            return real_open(file, mode, *args, **kwargs)
        if code == errno.ENOSPC:
            return _FullDisk(real_open(file, mode, *args, **kwargs))
        refuse(file)

    def os_open(path, flags, *args, **kwargs):
        if flags & write_flags and code != errno.ENOSPC and _under(path, root):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fdopen(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        if code == errno.ENOSPC and _writes(mode) and _under(fd_path(fd), root):
            return _FullDisk(handle)
        return handle

    def mkdir(path, *args, **kwargs):
        if code != errno.ENOSPC and _under(path, root):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if code != errno.ENOSPC and _under(dst, root):
            refuse(dst)
        return real_replace(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        if code != errno.ENOSPC and _under(dst, root):
            refuse(dst)
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)


@contextlib.contextmanager
def small_tmpfs(parent: Path, size: str = "1m"):
    """A tmpfs of ``size`` mounted under ``parent``; skips the test where mounting is not
    permitted (containers, unprivileged users)."""
    target = parent / f"tmpfs-{uuid.uuid4().hex[:8]}"
    target.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the tmpfs variant needs one")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)
