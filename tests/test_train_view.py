"""The live view of `moemt train`: the last interval stays in the row when fairseq's epoch means
arrive, words/s leaves validation time out, the best validation loss shows from the first
validation, and an MoE run's load, experts used and a high dropped share are visible."""

from __future__ import annotations

import json
import logging

from moe_mt.workflows.train.view import TrainMonitor


def _feed(monitor: TrainMonitor, name: str, stats: dict) -> None:
    prefix = "" if name == "train_inner" else f"{name}_"
    message = json.dumps({f"{prefix}{k}": v for k, v in stats.items()})
    monitor.emit(logging.LogRecord(name, logging.INFO, "", 0, message, None, None))


def _row(monitor: TrainMonitor) -> dict[str, str]:
    return {c.header: list(c.cells)[0] for c in monitor.render().columns}


def test_the_last_interval_stays_and_the_epoch_mean_is_labelled():
    monitor = TrainMonitor(max_update=100)
    _feed(monitor, "train_inner", {"num_updates": "100", "epoch": "1", "loss": "5.2"})
    _feed(monitor, "train", {"num_updates": "100", "epoch": "1", "loss": "6.5"})
    row = _row(monitor)
    assert row["loss"] == "5.2" and row["epoch loss"] == "6.5"
    assert row["update"] == "100/100"


def test_words_per_second_leave_validation_out():
    monitor = TrainMonitor()
    _feed(monitor, "train_inner", {"num_updates": "50", "wpb": "100", "train_wall": "10"})
    # the second interval held a validation: fairseq's wps halves, train_wall does not
    _feed(monitor, "train_inner", {"num_updates": "100", "wpb": "100", "train_wall": "10",
                                   "wps": "250"})  # fmt: skip
    assert _row(monitor)["words/s"] == "500.0"


def test_best_shows_from_the_first_validation():
    monitor = TrainMonitor()
    _feed(monitor, "valid", {"loss": "7.1"})
    _feed(monitor, "valid", {"loss": "6.9"})
    assert _row(monitor)["best"] == "6.900"
    _feed(monitor, "valid", {"loss": "7.0", "best_loss": "6.9"})  # fairseq's, once it logs one
    assert _row(monitor)["best"] == "6.9"


def test_moe_columns_show_the_load_and_flag_a_high_drop():
    monitor = TrainMonitor()
    stats = {"num_updates": "5", "moe_balance": "1.3", "moe_dropped": "0.35",
             "moe_load_max": "2.4", "moe_load_min": "0.1", "moe_active": "0.875"}  # fmt: skip
    _feed(monitor, "train_inner", stats)
    row = _row(monitor)
    assert "high drop" in row["MoE balance / dropped"]
    assert row["load max / min"] == "2.4 / 0.1" and row["experts used"] == "0.875"
    _feed(monitor, "train_inner", {**stats, "num_updates": "10", "moe_dropped": "0.02"})
    assert "high drop" not in _row(monitor)["MoE balance / dropped"]
