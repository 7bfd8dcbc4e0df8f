"""The one-process lock on a file, shared by the run directory and the download cache.

An exclusive ``flock`` on an open file: the kernel releases it when the process dies, so a lock
left by a killed command never blocks the next one, and nothing has to be cleaned up. It is
here, below both :mod:`moe_mt.workflows` and :mod:`moe_mt.data_prep`, so that each can use it
without importing the other; each caller opens its own lock file (inside its own error
handling) and words its own refusal.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from typing import IO


@contextlib.contextmanager
def exclusive(
    handle: IO, refused: Callable[[], Exception], *, wait: bool = False
) -> Iterator[None]:
    """Hold an exclusive lock on the open file ``handle`` for the block, and release it after.

    When another process holds it: with ``wait``, wait until it is released; without, raise
    ``refused()`` at once (called only then, so that it may read what the holder wrote in the
    file). The file stays open: closing it is the caller's.
    """
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        raise refused() from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
