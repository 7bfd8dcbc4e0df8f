"""What ``moemt train`` shows while fairseq trains, and the log file it leaves.

fairseq (``--log-format json``) logs one JSON record per ``log_interval`` updates under the logger
name ``train_inner``, one per epoch under ``train`` and one per validation under ``valid``.
:class:`TrainMonitor` is a logging handler that reads those records: on a terminal it renders a
rich live view (update, epoch, the last interval's loss, lr and training words/s, the last
epoch's mean loss, the validation loss and the best one so far, ETA where a bound is known; for
MoE models the balance loss, the share of tokens dropped, highlighted above
:data:`DROPPED_WARNING`, the busiest and idlest expert's load and the share of experts used);
otherwise fairseq's plain log lines go to stderr, as CI wants them. Everything also goes to
``logs/train.log``. In data-parallel training only rank 0 does this; the other ranks show their
warnings and errors on stderr, prefixed with their rank, and write no file (:func:`rank_logs`).
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
#: A share of dropped token assignments (capacity) that the live view highlights.
DROPPED_WARNING = 0.1
LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


class TrainMonitor(logging.Handler):
    """Keeps the latest train/valid statistics and renders them."""

    def __init__(self, max_update: int = 0, max_seconds: float = 0, live: Live | None = None):
        super().__init__(level=logging.INFO)
        self.max_update = max_update
        self.max_seconds = max_seconds
        self.live = live
        self.train: dict = {}  # the latest statistics, the epoch's merged over the interval's
        self.interval: dict = {}  # the latest log interval's (train_inner)
        self.previous_interval: dict = {}
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
            self.previous_interval, self.interval = self.interval, stats
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

    def words_per_second(self) -> str:
        """The last interval's target words per second of training, validation left out:
        fairseq's ``wps`` divides by the interval's wall-clock, a validation inside it included
        (it halves in every interval with one); ``train_wall`` is the interval's training time.
        """
        interval, before = self.interval, self.previous_interval
        words, seconds = _number(interval.get("wpb")), _number(interval.get("train_wall"))
        updates = _number(interval.get("num_updates"))
        earlier = _number(before.get("num_updates")) if before else None
        if None in (words, seconds, updates, earlier) or not seconds or updates <= earlier:
            return str(interval.get("wps", "-"))
        return f"{words * (updates - earlier) / seconds:.1f}"

    def best_valid_loss(self) -> str:
        """The lowest validation loss seen: fairseq's ``best_loss`` when it logs one, else the
        minimum of this run's validations (fairseq leaves it out of the first ones)."""
        if "best_loss" in self.valid:
            return str(self.valid["best_loss"])
        losses = [_number(v.get("loss")) for v in self.valid_history]
        losses = [v for v in losses if v is not None]
        return f"{min(losses):.3f}" if losses else "-"

    def render(self) -> Table:
        table = Table(title="moemt train", show_header=True, expand=False)
        columns = [
            "update", "epoch", "loss", "nll", "lr", "words/s", "epoch loss", "valid loss", "best",
            "ETA",
        ]  # fmt: skip
        train, valid = self.train, self.valid
        interval = self.interval or train  # the row keeps the last interval, not epoch means
        moe = "moe_balance" in interval  # logged by moe_label_smoothed_cross_entropy
        if moe:
            columns += ["MoE balance / dropped", "load max / min", "experts used"]
        for column in columns:
            table.add_column(column, justify="right")
        update = train.get("num_updates", "-")
        if self.max_update:
            update = f"{update}/{self.max_update}"
        eta = self.eta_seconds()
        table.add_row(
            str(update),
            str(train.get("epoch", "-")),
            str(interval.get("loss", "-")),
            str(interval.get("nll_loss", "-")),
            str(interval.get("lr", "-")),
            self.words_per_second(),
            str(self.epoch_end.get("loss", "-")),
            str(valid.get("loss", "-")),
            self.best_valid_loss(),
            _duration(eta) if eta is not None else "-",
            *(_moe_cells(interval) if moe else []),
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


def _moe_cells(stats: dict) -> list[str]:
    """Balance / dropped (red above :data:`DROPPED_WARNING`), the busiest and idlest expert's
    load relative to a uniform share (mean over the MoE layers), the share of experts used."""
    dropped = stats.get("moe_dropped", "-")
    share = _number(dropped)
    cell = f"{stats['moe_balance']} / {dropped}"
    if share is not None and share > DROPPED_WARNING:
        cell = f"[bold red]{cell} (high drop)[/]"
    load = f"{stats.get('moe_load_max', '-')} / {stats.get('moe_load_min', '-')}"
    return [cell, load, str(stats.get("moe_active", "-"))]


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _duration(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds))
