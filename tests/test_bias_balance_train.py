"""Bias balancing in a real training: fairseq's update announcements move the bias, checkpoints
hold it, and a run killed with SIGKILL resumes with the bias of its last checkpoint, reaching the
bias of an uninterrupted run."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from moe_mt.checkpoints import load_state
from moe_mt.workflows.train.trainer import checkpoint_update, train
from tests.conftest import REPO, TINY_MODEL, demo_config, kill_after_first_checkpoint

BIAS = (
    "model.arch=switch_transformer_demo", "model.moe.num_experts=4", "model.moe.bias_balance=true",
    "model.moe.bias_update_rate=0.01", "model.moe.freq=1", "train.save_interval_updates=3",
)  # fmt: skip


def _overrides(run_dir) -> list[str]:
    return [f"run_dir={run_dir}", "data.spm.vocab_size=2000", *TINY_MODEL, *BIAS]


def _biases(checkpoint) -> dict[str, torch.Tensor]:
    model = load_state(checkpoint)["model"]
    return {k: v for k, v in model.items() if k.endswith("balancer.bias_steps")}


@pytest.mark.slow  # three tiny trainings, about 35 s; the buffer's round trip is in the default run
def test_a_killed_run_resumes_with_the_bias_of_an_uninterrupted_one(prepped_demo, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(prepped_demo, killed)
    recipe = str(REPO / "recipes" / "demo.yaml")
    command = [sys.executable, "-m", "moe_mt.cli.main", "train", recipe, *_overrides(killed)]
    kill_after_first_checkpoint([*command, "train.max_update=100000"], killed, timeout=180)
    last = killed / "checkpoints" / "checkpoint_last.pt"
    saved = checkpoint_update(last)
    at_kill = _biases(last)
    assert len(at_kill) == 2, "one bias per MoE layer (encoder and decoder)"
    assert any(b.abs().sum() > 0 for b in at_kill.values()), "the updates moved the bias"
    end = saved + 3
    train(demo_config(killed, *_overrides(killed)[1:], f"train.max_update={end}"))

    whole = tmp_path / "whole"
    shutil.copytree(prepped_demo, whole)
    train(demo_config(whole, *_overrides(whole)[1:], f"train.max_update={end}"))
    assert checkpoint_update(killed / "checkpoints" / "checkpoint_last.pt") == end
    resumed = _biases(killed / "checkpoints" / "checkpoint_last.pt")
    uninterrupted = _biases(whole / "checkpoints" / "checkpoint_last.pt")
    for name, bias in uninterrupted.items():
        assert torch.equal(resumed[name], bias), name
    # the checkpoint of the update the kill came after holds that update's bias
    same = whole / "checkpoints" / f"checkpoint_1_{saved}.pt"
    if same.exists():  # saved within the first epoch
        for name, bias in _biases(same).items():
            assert torch.equal(at_kill[name], bias), name
