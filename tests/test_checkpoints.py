"""Checkpoint choice and averaging (moe_mt.checkpoints) on the tiny trained demo run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from moe_mt import checkpoints
from moe_mt.checkpoints import (
    AVERAGE_KEY,
    average_model_states,
    choose_checkpoint,
    load_state,
    periodic_checkpoints,
)
from moe_mt.errors import MoeMtError


@pytest.fixture
def ckpt_dir(trained_demo, tmp_path) -> Path:
    target = tmp_path / "checkpoints"
    shutil.copytree(trained_demo / "checkpoints", target)
    return target


def _save_with_updates(source: Path, target: Path, updates: int) -> None:
    """A copy of ``source`` that claims to be saved at ``updates``."""
    state = torch.load(source, weights_only=True)
    state["optimizer_history"][-1]["num_updates"] = updates
    torch.save(state, target)


def test_periodic_checkpoints_by_update_count(ckpt_dir):
    # An epoch-end checkpoint at the same update count as an update checkpoint: one of them.
    shutil.copyfile(ckpt_dir / "checkpoint_1_30.pt", ckpt_dir / "checkpoint1.pt")
    found = periodic_checkpoints(ckpt_dir)
    assert [(c.path.name, c.num_updates) for c in found] == [
        ("checkpoint_1_10.pt", 10),
        ("checkpoint_1_20.pt", 20),
        ("checkpoint_1_30.pt", 30),
    ]
    # Ordered by the count inside the file, not by the name.
    _save_with_updates(ckpt_dir / "checkpoint_1_10.pt", ckpt_dir / "checkpoint2.pt", 40)
    assert [c.num_updates for c in periodic_checkpoints(ckpt_dir)] == [10, 20, 30, 40]
    assert periodic_checkpoints(ckpt_dir)[-1].path.name == "checkpoint2.pt"

    # checkpoint_last.pt joins only with a state no numbered checkpoint holds (training that
    # stopped between two periodic saves).
    (ckpt_dir / "checkpoint2.pt").unlink()
    _save_with_updates(ckpt_dir / "checkpoint_last.pt", ckpt_dir / "checkpoint_last.pt", 35)
    found = periodic_checkpoints(ckpt_dir)
    assert [(c.path.name, c.num_updates) for c in found][-2:] == [
        ("checkpoint_1_30.pt", 30),
        ("checkpoint_last.pt", 35),
    ]


def test_choose_last_best_and_path(ckpt_dir):
    from fairseq import checkpoint_utils

    last = choose_checkpoint(ckpt_dir, "last")
    assert (last.path.name, last.num_updates, last.choice) == ("checkpoint_last.pt", 30, "last")
    best = choose_checkpoint(ckpt_dir, "best")
    expected = checkpoint_utils.load_checkpoint_to_cpu(str(ckpt_dir / "checkpoint_best.pt"))
    assert best.num_updates == expected["optimizer_history"][-1]["num_updates"]
    by_name = choose_checkpoint(ckpt_dir, "checkpoint_1_20.pt")
    assert (by_name.num_updates, by_name.choice) == (20, "path")
    by_path = choose_checkpoint(ckpt_dir, str(ckpt_dir / "checkpoint_1_10.pt"))
    assert by_path.num_updates == 10
    with pytest.raises(MoeMtError, match="checkpoint_9_99.pt: no such file"):
        choose_checkpoint(ckpt_dir, "checkpoint_9_99.pt")
    (ckpt_dir / "checkpoint_best.pt").unlink()
    with pytest.raises(MoeMtError, match="checkpoint_best.pt: no such checkpoint"):
        choose_checkpoint(ckpt_dir, "best")


def test_average_is_the_exact_mean(ckpt_dir):
    chosen = choose_checkpoint(ckpt_dir, "average", average_last=3)
    assert chosen.path == ckpt_dir / "average_last3.pt"
    assert chosen.num_updates == 30 and not chosen.reused
    assert [c.num_updates for c in chosen.averaged] == [10, 20, 30]

    inputs = [load_state(ckpt_dir / f"checkpoint_1_{u}.pt")["model"] for u in (10, 20, 30)]
    # Read back as a plain weights-only torch.load: the file holds no code-bearing objects.
    raw = torch.load(chosen.path, weights_only=True)
    averaged = raw["model"]
    assert set(averaged) == set(inputs[0])
    for name, tensor in averaged.items():
        by_hand = (
            inputs[0][name].double() + inputs[1][name].double() + inputs[2][name].double()
        ) / 3
        assert tensor.dtype == inputs[2][name].dtype
        assert torch.equal(tensor, by_hand.to(tensor.dtype)), name
    assert "last_optimizer_state" not in raw  # no optimizer state in an average
    assert raw["optimizer_history"][-1]["num_updates"] == 30
    assert [r["name"] for r in raw[AVERAGE_KEY]["inputs"]] == [
        "checkpoint_1_10.pt",
        "checkpoint_1_20.pt",
        "checkpoint_1_30.pt",
    ]
    assert checkpoints.read_num_updates(chosen.path) == 30  # fairseq's loader reads it too


def test_average_reused_while_inputs_unchanged(ckpt_dir, monkeypatch):
    first = choose_checkpoint(ckpt_dir, "average", average_last=2)
    stamp = first.path.stat().st_mtime_ns

    # Unchanged candidates: reused, and no candidate is loaded again to find its update count.
    def fail(path):
        raise AssertionError(f"loaded {path}")

    with monkeypatch.context() as m:
        m.setattr(checkpoints, "read_num_updates", fail)
        again = choose_checkpoint(ckpt_dir, "average", average_last=2)
    assert again.reused and again.path.stat().st_mtime_ns == stamp
    assert [c.num_updates for c in again.averaged] == [20, 30]

    # An input rewritten: rebuilt.
    os.utime(ckpt_dir / "checkpoint_1_30.pt", ns=(stamp + 10**9, stamp + 10**9))
    assert not choose_checkpoint(ckpt_dir, "average", average_last=2).reused
    # A newer checkpoint moves the window: rebuilt with it.
    _save_with_updates(ckpt_dir / "checkpoint_1_10.pt", ckpt_dir / "checkpoint_1_40.pt", 40)
    moved = choose_checkpoint(ckpt_dir, "average", average_last=2)
    assert not moved.reused
    assert [c.num_updates for c in moved.averaged] == [30, 40] and moved.num_updates == 40
    # A checkpoint outside the window appearing or going does not matter.
    (ckpt_dir / "checkpoint_1_10.pt").unlink()
    assert choose_checkpoint(ckpt_dir, "average", average_last=2).reused


def test_average_needs_enough_checkpoints(ckpt_dir):
    with pytest.raises(MoeMtError, match=r"needs 5 periodic checkpoints.*found 3"):
        choose_checkpoint(ckpt_dir, "average", average_last=5)
    with pytest.raises(MoeMtError, match="at least 1"):
        choose_checkpoint(ckpt_dir, "average", average_last=0)


def test_average_model_states_tensor_kinds():
    t = torch.tensor
    half = [t([1.0, 2.0], dtype=torch.float16), t([2.0, 5.0]).half()]
    states = [
        {"w": t([1.0, 2.0]), "h": half[0], "n": t([3]), "b": t([True])},
        {"w": t([2.0, 4.0]), "h": half[1], "n": t([3]), "b": t([False])},
    ]
    averaged, differing = average_model_states(states)
    assert torch.equal(averaged["w"], torch.tensor([1.5, 3.0]))
    assert averaged["h"].dtype == torch.float16
    assert torch.equal(averaged["h"], torch.tensor([1.5, 3.5], dtype=torch.float16))
    # Integer and boolean tensors cannot be averaged: the newest value, differences named.
    assert averaged["n"].dtype == torch.int64 and torch.equal(averaged["n"], torch.tensor([3]))
    assert torch.equal(averaged["b"], torch.tensor([False]))
    assert differing == ["b"]

    with pytest.raises(MoeMtError, match="parameters differ: x"):
        average_model_states([{"w": torch.zeros(2)}, {"w": torch.zeros(2), "x": torch.zeros(1)}])
    with pytest.raises(MoeMtError, match=r"w: shape \(3,\) vs \(2,\)"):
        average_model_states([{"w": torch.zeros(3)}, {"w": torch.zeros(2)}])


def test_unreadable_checkpoint_is_a_user_error(tmp_path):
    bad = tmp_path / "checkpoint_1_5.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MoeMtError, match="not a loadable checkpoint"):
        load_state(bad)


def test_average_over_epochs_takes_epoch_checkpoints_only(ckpt_dir):
    # Epoch ends at 10 and 20 updates, an update checkpoint at 30, and a checkpoint_last.pt
    # at 35 (stopped by max_update mid-epoch): fairseq's --num-epoch-checkpoints averages the
    # epoch files alone.
    _save_with_updates(ckpt_dir / "checkpoint_1_10.pt", ckpt_dir / "checkpoint1.pt", 10)
    _save_with_updates(ckpt_dir / "checkpoint_1_20.pt", ckpt_dir / "checkpoint2.pt", 20)
    (ckpt_dir / "checkpoint_1_10.pt").unlink()
    (ckpt_dir / "checkpoint_1_20.pt").unlink()
    _save_with_updates(ckpt_dir / "checkpoint_last.pt", ckpt_dir / "checkpoint_last.pt", 35)
    chosen = choose_checkpoint(ckpt_dir, "average", average_last=2, average_over="epochs")
    assert chosen.path.name == "average_last2_epochs.pt"
    assert [c.path.name for c in chosen.averaged] == ["checkpoint1.pt", "checkpoint2.pt"]
    assert chosen.num_updates == 20
    every = choose_checkpoint(ckpt_dir, "average", average_last=2)
    assert [c.path.name for c in every.averaged] == ["checkpoint_1_30.pt", "checkpoint_last.pt"]
    with pytest.raises(MoeMtError, match=r"needs 3 epoch checkpoints.*found 2"):
        choose_checkpoint(ckpt_dir, "average", average_last=3, average_over="epochs")
    with pytest.raises(MoeMtError, match="eval.average_over: 'steps' is not one of"):
        choose_checkpoint(ckpt_dir, "average", average_last=2, average_over="steps")


def test_a_relative_checkpoint_path_is_the_run_directorys(ckpt_dir, tmp_path, monkeypatch):
    # docs/compare.md's `eval.checkpoint=checkpoints/checkpoint8.pt` from any directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    chosen = choose_checkpoint(ckpt_dir, "checkpoints/checkpoint_1_20.pt")
    assert chosen.path == (ckpt_dir / "checkpoint_1_20.pt").resolve()
    assert chosen.num_updates == 20
    # Not found: the line names the places tried, and only those.
    with pytest.raises(MoeMtError) as err:
        choose_checkpoint(ckpt_dir, "checkpoints/checkpoint9.pt")
    assert str(err.value) == (
        f"eval.checkpoint=checkpoints/checkpoint9.pt: no such file ({ckpt_dir / 'checkpoint9.pt'}"
        " nor checkpoints/checkpoint9.pt); use last, best, average or a checkpoint path"
    )


@pytest.mark.parametrize("content", [12345, {"something": "else"}], ids=["int", "dict"])
def test_a_torch_file_that_is_no_checkpoint_is_one_line(content, tmp_path):
    """Issue 35, R4: not fairseq's TypeError."""
    import torch

    from moe_mt.checkpoints import load_state

    path = tmp_path / "checkpoint_last.pt"
    torch.save(content, path)
    with pytest.raises(MoeMtError) as error:
        load_state(path)
    assert str(error.value).startswith(f"{path}: not a ")
    assert "\n" not in str(error.value)
