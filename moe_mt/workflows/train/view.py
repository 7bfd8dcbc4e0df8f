"""What ``moemt train`` shows while fairseq trains, and the log file it leaves.

fairseq (``--log-format json``) logs one JSON record per ``log_interval`` updates under the logger
name ``train_inner``, one per epoch under ``train`` and one per validation under ``valid``.
:class:`TrainMonitor` is a logging handler that reads those records: on a terminal it renders a
rich live view (update, epoch, loss, lr, words/s, ETA where a bound is known;
for MoE models the balance loss and the share of tokens dropped); otherwise fairseq's
plain log lines go to stderr, as CI wants them. Everything also goes to ``logs/train.log``.
In data-parallel training only rank 0 does this; the other ranks show their warnings and errors
on stderr, prefixed with their rank, and write no file (:func:`rank_logs`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

STAT_LOGGERS = ("train_inner", "train", "valid")
LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


class TrainMonitor(logging.Handler):
    """Keeps the latest train/valid statistics and renders them."""

    def __init__(self, max_update: int = 0, max_seconds: float = 0, live: Live | None = None):
        super().__init__(level=logging.INFO)
        self.max_update = max_update
        self.max_seconds = max_seconds
        self.live = live
        self.train: dict = {}
        self.valid: dict = {}
        self.epoch_end: dict = {}
        self.valid_history: list[dict] = []
        self.started = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name not in STAT_LOGGERS:
            return
        try:
            stats = json.loads(record.getMessage())
        except ValueError:
            return
        # Epoch and validation records prefix every key with their tag ("valid_loss").
        prefix = f"{record.name}_"
        stats = {k.removeprefix(prefix): v for k, v in stats.items()}
        if record.name == "train_inner":
            self.train = stats
        elif record.name == "train":
            self.epoch_end = stats
            self.train = {**self.train, **stats}
        else:
            # When it was validated, in seconds since this run started (for loss-vs-time plots).
            stats["elapsed_seconds"] = round(time.monotonic() - self.started, 1)
            self.valid = stats
            self.valid_history.append(stats)
        if self.live is not None:
            self.live.update(self.render())

    def eta_seconds(self) -> float | None:
        """Seconds left to the nearest known bound (updates or wall-clock budget)."""
        updates = _number(self.train.get("num_updates"))
        ups = _number(self.train.get("ups"))
        wall = _number(self.train.get("wall"))
        bounds = []
        if self.max_update and updates is not None and ups:
            bounds.append(max(self.max_update - updates, 0) / ups)
        if self.max_seconds and wall is not None:
            bounds.append(max(self.max_seconds - wall, 0))
        return min(bounds) if bounds else None

    def render(self) -> Table:
        table = Table(title="moemt train", show_header=True, expand=False)
        columns = ["update", "epoch", "loss", "nll", "lr", "words/s", "valid loss", "best", "ETA"]
        train, valid = self.train, self.valid
        moe = "moe_balance" in train  # logged by moe_label_smoothed_cross_entropy
        if moe:
            columns.append("MoE balance / dropped")
        for column in columns:
            table.add_column(column, justify="right")
        update = train.get("num_updates", "-")
        if self.max_update:
            update = f"{update}/{self.max_update}"
        eta = self.eta_seconds()
        moe_cells = [f"{train['moe_balance']} / {train.get('moe_dropped', '-')}"] if moe else []
        table.add_row(
            str(update),
            str(train.get("epoch", "-")),
            str(train.get("loss", "-")),
            str(train.get("nll_loss", "-")),
            str(train.get("lr", "-")),
            str(train.get("wps", "-")),
            str(valid.get("loss", "-")),
            str(valid.get("best_loss", "-")),
            _duration(eta) if eta is not None else "-",
            *moe_cells,
        )
        return table


@contextlib.contextmanager
def training_logs(
    log_file: Path, console: Console, max_update: int = 0, max_seconds: float = 0
) -> Iterator[TrainMonitor]:
    """Route all logging to ``log_file`` and to the console view for the duration of a run.

    The root logger's handlers are replaced and restored afterwards, so that runs in one process
    (tests) do not pile handlers up, and fairseq's ``basicConfig`` at import is a no-op.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handlers: list[logging.Handler] = [file_handler]
    live = None
    if console.is_terminal:
        live = Live(console=console, refresh_per_second=2, transient=False)
        warnings = logging.StreamHandler(console.file)
        warnings.setLevel(logging.WARNING)
        warnings.setFormatter(logging.Formatter(LOG_FORMAT))
        handlers.append(warnings)
    else:
        plain = logging.StreamHandler(console.file)
        plain.setFormatter(logging.Formatter(LOG_FORMAT))
        handlers.append(plain)
    monitor = TrainMonitor(max_update=max_update, max_seconds=max_seconds, live=live)
    handlers.append(monitor)
    root.handlers = handlers
    root.setLevel(logging.INFO)
    try:
        if live is not None:
            with live:
                live.update(monitor.render())
                yield monitor
        else:
            yield monitor
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        file_handler.close()


@contextlib.contextmanager
def rank_logs(rank: int, console: Console) -> Iterator[None]:
    """Logging of a rank other than 0: warnings and errors to the console, no file, no view."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = logging.StreamHandler(console.file)
    stream.setLevel(logging.WARNING)
    stream.setFormatter(logging.Formatter(f"rank {rank} | {LOG_FORMAT}"))
    root.handlers = [stream]  # also makes fairseq's basicConfig at import a no-op
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _duration(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds))
