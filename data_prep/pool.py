"""prep's worker processes: a pool that Ctrl-C, SIGTERM and a killed worker stop cleanly.

``multiprocessing.Pool`` fails all three: on Ctrl-C every worker prints its traceback, and a
worker killed with SIGKILL (the kernel's OOM killer) makes the parent wait for ever for its
result. :class:`WorkerPool` runs on :class:`concurrent.futures.ProcessPoolExecutor`, which notices
a dead worker (``BrokenProcessPool``); its workers ignore SIGINT (the terminal sends Ctrl-C to the
whole process group: the parent alone stops the pool) and die of SIGTERM without a word, and a
dead worker is one line naming its pid and the signal that killed it.
"""

from __future__ import annotations

import collections
import multiprocessing
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from moe_mt.errors import MoeMtError


def _worker_signals() -> None:
    """In each worker: Ctrl-C is the parent's to handle; SIGTERM (the parent stopping the pool)
    ends the worker at once, not through a handler inherited from the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class WorkerPool:
    """``workers`` forked processes (the parent's modules and data shared, as
    ``fairseq-preprocess`` does), used as a context manager."""

    def __init__(self, workers: int):
        self._executor = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_signals
        )
        self._processes: dict = {}  # pid -> multiprocessing.Process, for the error message

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self._executor.shutdown()
            return
        self._stop()
        if isinstance(exc, BrokenProcessPool):
            raise MoeMtError(self._dead_worker()) from None

    def submit(self, fn: Callable, *args) -> Future:
        future = self._executor.submit(fn, *args)
        # With fork, every worker is started at the first submit and never replaced.
        self._processes.update(getattr(self._executor, "_processes", None) or {})
        return future

    def ordered(self, fn: Callable, jobs: Iterable[tuple], ahead: int) -> Iterator:
        """``fn(*job)`` for each of ``jobs``, in order, with at most ``ahead`` jobs in flight."""
        pending: collections.deque = collections.deque()
        for job in jobs:
            pending.append(self.submit(fn, *job))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def _stop(self) -> None:
        """Cancel what has not started and end the workers now (not after their chunk)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        for process in self._processes.values():
            if process.exitcode is None:
                process.terminate()
        for process in self._processes.values():
            process.join()

    def _dead_worker(self) -> str:
        """The line for a worker that died: the one killed by something else than the
        SIGTERM the pool sent the others when it noticed, else any."""
        codes = {pid: p.exitcode for pid, p in self._processes.items() if p.exitcode}
        pid, code = next(
            ((pid, c) for pid, c in codes.items() if c != -signal.SIGTERM),
            next(iter(codes.items()), (None, None)),
        )
        if code is None:
            how = "died"
        elif code < 0:
            how = f"was killed by {_signal_name(-code)}"
        else:
            how = f"exited with code {code}"
        oom = code == -signal.SIGKILL
        hint = " (the system ran out of memory? lower data.workers)" if oom else ""
        return f"prep worker process {pid} {how}{hint}; prep stopped"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
