"""The experiment directory: its layout, the one-process lock, and atomic writes.

    RUN_DIR/config.yaml   data/   checkpoints/   logs/   eval/

Every file a command leaves behind is written to a temporary name in the same directory and
renamed into place, and whole directories (``data/``) are built under a temporary name and
renamed when complete, so that an interrupted command never leaves something that looks done.
A write that fails for a reason outside the program (disk full, read-only, no permission) is
one line naming the path (:func:`moe_mt.errors.writing`), and its temporary file or directory
is removed.

A temporary name holds its writer's pid (``.NAME.PID.XXXXXXXX.tmp``,
``.NAME.building.PID.XXXXXXXX``, ``.NAME.old.PID``): what a process killed past any cleanup
(SIGKILL, a power cut) left behind is removed by the next write in that directory
(:func:`remove_stale_temporaries`), and a live writer's is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from moe_mt.errors import MoeMtError, is_write_error, write_error, writing
from moe_mt.locking import exclusive

LOCK_FILE = ".lock"

#: The run directory this process locked last: where the CLI puts an unexpected error's
#: traceback (its ``logs/``), also after the lock is released.
_last_locked: Path | None = None


def last_locked_run_dir() -> Path | None:
    return _last_locked


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class RunDir:
    """Paths of one experiment directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def manifest(self) -> Path:
        return self.data / "manifest.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunDir]:
        """Hold the run directory for this process; a second process is refused at once.

        A ``run_dir`` that is a file, or one that cannot be written, is refused here, before
        any command writes in it.
        """
        global _last_locked
        if self.root.exists() and not self.root.is_dir():
            raise MoeMtError(f"run_dir={self.root}: exists and is not a directory")
        path = self.root / LOCK_FILE
        with writing(path):
            self.root.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
        _last_locked = self.root

        def refused() -> MoeMtError:  # the holder wrote its pid in the file
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            return MoeMtError(f"{self.root}: run directory is in use by {holder}")

        # Released in reverse order: the pid is erased, then the lock released, then the file
        # closed (also when another process holds it).
        with handle, exclusive(handle, refused):
            try:
                with writing(path):
                    handle.seek(0)
                    handle.truncate()
                    handle.write(f"pid {os.getpid()}\n")
                    handle.flush()
                # Before any command reads data/: a data/ moved aside by a writer that died
                # is back in place.
                for directory in (self.root, self.checkpoints):
                    remove_stale_temporaries(directory)
                yield self
            finally:
                handle.seek(0)
                handle.truncate()


#: A temporary file of :func:`temporary_file`, and a temporary directory of
#: :func:`building_dir` or the previous directory it moves aside (``[a-z0-9_]{8}``: mkstemp's).
_TEMP_FILE = re.compile(r"\..+\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp")
_BUILDING = re.compile(
    r"\.(?P<name>.+)\.(?:building\.(?P<pid>\d+)\.[a-z0-9_]{8}|old\.(?P<old>\d+))"
)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temporaries(directory: str | Path) -> None:
    """Remove the temporary files and directories in ``directory`` whose writer is dead.

    A previous directory moved aside (``.NAME.old.PID``) whose replacement never arrived (the
    writer died between the two renames) is put back as ``NAME`` instead.
    """
    directory = Path(directory)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if (match := _TEMP_FILE.fullmatch(entry.name)) and not entry.is_dir(follow_symlinks=False):
            if not _alive(int(match["pid"])):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        elif (match := _BUILDING.fullmatch(entry.name)) and entry.is_dir(follow_symlinks=False):
            if _alive(int(match["pid"] or match["old"])):
                continue
            final = directory / match["name"]
            if not match["old"]:
                shutil.rmtree(entry.path, ignore_errors=True)
            elif not final.exists():
                with contextlib.suppress(OSError):  # the next command may try again
                    os.replace(entry.path, final)
            else:
                shutil.rmtree(entry.path, ignore_errors=True)


def temporary_file(path: Path) -> tuple[int, str]:
    """``mkstemp`` beside ``path``, named with this process's pid, after removing the
    temporaries of dead processes there; ``(fd, name)``."""
    remove_stale_temporaries(path.parent)
    return tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_file(path)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def check_writable(directory: str | Path) -> None:
    """Create ``directory`` if needed and a file in it, then remove the file: a directory a
    command will write to later (train's ``checkpoints/``, written by fairseq) is refused with
    one line before any work, not in the middle of it."""
    directory = Path(directory)
    with writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".writable.", dir=directory)
        os.close(fd)
        os.unlink(probe)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


@contextlib.contextmanager
def building_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; on success it replaces ``final`` in one rename.

    On any exception (including Ctrl-C) the temporary directory is removed and ``final`` is left
    as it was; a write that failed inside (disk full, read-only) is one line naming ``final``,
    whatever library was writing (a full disk can surface as an ``OSError`` from a file's
    ``write``, with no file name).
    """
    final = Path(final)
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final.parent)
        building = f".{final.name}.building.{os.getpid()}."
        tmp = Path(tempfile.mkdtemp(prefix=building, dir=final.parent))
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_write_error(exc):
            raise write_error(exc, final, then=f"{final} is left as it was") from exc
        raise
    old = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the usual mode
        if final.exists():
            old = final.with_name(f".{final.name}.old.{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists():
            os.replace(old, final)
        if is_write_error(exc):
            raise write_error(exc, final) from exc
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
