"""What the CLI does with an exception no workflow expected: one line, the traceback in a file.

A :class:`~moe_mt.errors.MoeMtError` is the user's to fix and says what and where. Anything else
is a bug, or a failure of something below us (fairseq, torch, the OS); a user cannot act on 90
lines of traceback, a maintainer needs all of them. So the traceback goes to a file: the
``logs/`` of the run directory the command was working in (the one it locked last), else a
temporary file, and the terminal gets one line naming the exception and that file.
``MOEMT_DEBUG=1`` lets the exception through instead (the traceback on stderr, a debugger's
post-mortem). A write that failed for a reason outside the program (disk full, read-only)
without a workflow naming it is still a one-line user error (:func:`moe_mt.errors.write_error`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import traceback
from pathlib import Path

from moe_mt.errors import is_write_error, write_error
from moe_mt.workflows.common.rundir import last_locked_run_dir

DEBUG_ENV = "MOEMT_DEBUG"


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def one_line(exc: BaseException, command: str) -> str:
    """The line the CLI prints for ``exc``, after saving its traceback (see module docstring)."""
    if is_write_error(exc):
        return str(write_error(exc))
    text = "".join(traceback.format_exception(exc))
    where = save_traceback(text, command, last_locked_run_dir())
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return (
        f"unexpected error in moemt {command}: {what} (full traceback in {where}; "
        f"{DEBUG_ENV}=1 shows it here)"
    )


def save_traceback(text: str, command: str, run_dir: Path | None) -> Path:
    """Write ``text`` under ``run_dir/logs/`` (when given and writable), else a temporary file;
    return its path."""
    name = f"error-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    if run_dir is not None:
        with contextlib.suppress(OSError):
            logs = Path(run_dir) / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            path = logs / name
            path.write_text(text, encoding="utf-8")
            return path
    fd, tmp = tempfile.mkstemp(prefix="moemt-" + name.removesuffix(".txt") + "-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return Path(tmp)
