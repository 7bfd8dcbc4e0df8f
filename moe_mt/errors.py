"""The one exception type for problems the user can fix (bad input, bad config, busy run dir),
and the one translation of a failed write (disk full, read-only, no permission) into it.

The CLI prints its message on one line and exits non-zero; anything else is a bug: the CLI
prints one line naming the file that holds its traceback (``moemt_cli``'s guard). Messages name
the file, line or key at fault.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

#: errno of a write that fails for a reason outside the program: the user frees space, changes
#: permissions or picks another directory. What the one-line message calls each.
WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class MoeMtError(Exception):
    """A user-facing error: one line, naming what is wrong and where."""

    exit_code = 1


class WriteError(MoeMtError):
    """A write that failed for a reason outside the program (:data:`WRITE_ERRNOS`), at ``path``;
    a caller that knows what is left intact may say so (:func:`write_error`'s ``then``)."""

    def __init__(self, message: str, path, errno_: int | None):
        super().__init__(message)
        self.path, self.errno = path, errno_


def is_write_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError of :data:`WRITE_ERRNOS` (not the program's fault)."""
    return isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS


def write_error(exc: OSError, path: str | os.PathLike | None = None, then: str = "") -> WriteError:
    """``PROBLEM while writing PATH[; then]`` for a failed write; ``path`` defaults to the
    exception's own file name (a ``write()`` on an open file has none: give it)."""
    where = path if path is not None else (exc.filename or "a file")
    message = f"{WRITE_ERRNOS.get(exc.errno, exc.strerror)} while writing {where}"
    return WriteError(f"{message}; {then}" if then else message, where, exc.errno)


@contextlib.contextmanager
def writing(path: str | os.PathLike, then: str = "") -> Iterator[None]:
    """Turn a :func:`is_write_error` failure inside the block into :func:`write_error`'s line
    naming ``path`` (other errors pass unchanged)."""
    try:
        yield
    except WriteError:
        raise  # named already, by the innermost block
    except OSError as exc:
        if not is_write_error(exc):
            raise
        raise write_error(exc, path, then) from exc
