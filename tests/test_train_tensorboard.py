"""train.tensorboard_logdir writes TensorBoard event files, with the MoE statistics among the
scalars, and is refused in one line where no writer can be imported."""

from __future__ import annotations

import shutil
import sys

import pytest

from moe_mt.errors import MoeMtError
from moe_mt.workflows.train.fairseq_args import check_tensorboard_writer
from moe_mt.workflows.train.trainer import train
from tests.test_switch import moe_config


def test_a_switch_run_writes_its_moe_statistics_to_tensorboard(prepped_demo, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    shutil.copytree(prepped_demo, run_dir)
    logdir = tmp_path / "tb"
    cfg = moe_config(
        run_dir, "model.moe.freq=1", "train.max_update=4", "train.log_interval=2",
        f"train.tensorboard_logdir={logdir}",
    )  # fmt: skip
    train(cfg)
    events = EventAccumulator(str(logdir / "train_inner")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "moe_balance", "moe_dropped", "moe_load_max"} <= tags
    assert (logdir / "valid").is_dir()


def test_no_writer_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(MoeMtError, match=r"train.tensorboard_logdir=tb: no TensorBoard writer"):
        check_tensorboard_writer("tb")
