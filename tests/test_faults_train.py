"""moemt train: its bad inputs and faults, each one line on stderr, exit code 1, nothing written
that looks complete (the good path, resume and kill -9 are in tests/test_train.py).

Cases: a config the checkpoints were not trained with, no prepared data, a second process, an
architecture or option fairseq refuses, an option the model's layers refuse (before anything is
written), out-of-range values, a run_dir that is a file, a read-only run directory or
checkpoints/, a full disk while saving a checkpoint; and the training time and validations a
lost summary (kill -9) used to take with it.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch

from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.rundir import RunDir
from moe_mt.workflows.train.trainer import PROGRESS_KEY, checkpoint_update, train
from tests.conftest import REPO, TINY_MODEL
from tests.faults import fail_writes, invoke, leftovers, one_error_line
from tests.test_train import _cfg, _cli_overrides, _copy

RECIPE = str(REPO / "recipes" / "demo.yaml")


def _train_cli(run_dir: Path, *extra: str):
    args = [f"run_dir={run_dir}", "data.spm.vocab_size=2000", *TINY_MODEL, *extra]
    return invoke("train", RECIPE, *args)


def test_guard_refuses_a_changed_model(trained_demo, tmp_path):
    run_dir = _copy(trained_demo, tmp_path)
    cfg = _cfg(
        run_dir, "train.max_update=40", "train.save_interval_updates=10", "model.dropout=0.3"
    )
    with pytest.raises(MoeMtError, match=r"model\.dropout: 0\.1 -> 0\.3"):
        train(cfg)
    assert checkpoint_update(run_dir / "checkpoints" / "checkpoint_last.pt") == 30

    line = one_error_line(invoke("train", RECIPE, *_cli_overrides(run_dir, "model.dropout=0.3")))
    assert "model.dropout: 0.1 -> 0.3" in line and "--overwrite" in line


def test_train_needs_prepared_data(tmp_path):
    with pytest.raises(MoeMtError, match="no prepared data"):
        train(_cfg(tmp_path / "empty"))


def test_second_process_is_refused(trained_demo, tmp_path):
    run_dir = _copy(trained_demo, tmp_path)
    with RunDir(run_dir).locked():
        with pytest.raises(MoeMtError, match="in use by pid"):
            train(_cfg(run_dir, "train.max_update=40"))


def test_rejected_model_config_writes_nothing(trained_demo, tmp_path):
    run_dir = _copy(trained_demo, tmp_path)
    shutil.rmtree(run_dir / "checkpoints")
    before = (run_dir / "config.yaml").read_bytes()
    with pytest.raises(MoeMtError, match="invalid choice: 'no_such_arch'"):
        train(_cfg(run_dir, "model.arch=no_such_arch"))
    cfg = _cfg(run_dir, "model.arch=soft_moe_transformer_demo", "model.moe.sides=decoder")
    with pytest.raises(MoeMtError, match="decoder"):
        train(cfg)
    assert (run_dir / "config.yaml").read_bytes() == before
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.arch=switch_transformer_demo", "model.moe.num_experts=8", "model.moe.top_k=9"],
            "model: model.moe.top_k=9 must be in [1, 8]",
        ),
        (
            [
                "model.arch=mhmoe_transformer_demo",
                "model.moe.num_experts=4",
                "model.moe.offset=0",
                "model.moe.heads=3",
            ],  # fmt: skip
            "model: --moe-heads 3 must divide the model width 64",
        ),
        (["model.attention_heads=3"], "model: embed_dim must be divisible by num_heads"),
    ],
)
def test_model_option_error_is_one_line_and_writes_nothing(
    prepped_demo, tmp_path, overrides, message
):
    """An option the model's layers refuse fails `moemt train` with one line, as --dry-run
    does, before the run directory is written (no config, checkpoints or logs)."""
    run_dir = _copy(prepped_demo, tmp_path)
    before = (run_dir / "config.yaml").read_bytes()
    # One update at most, should the option get past the check.
    assert one_error_line(_train_cli(run_dir, "train.max_update=1", *overrides)) == message
    assert (run_dir / "config.yaml").read_bytes() == before
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "logs").exists()


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("train.max_tokens=-1", "override: train.max_tokens=-1: must be at least 1"),
        ("model.dropout=1.5", "override: model.dropout=1.5: must be in [0.0, 1.0]"),
        ("train.lr=0", "override: train.lr=0.0: must be > 0"),
        # The key the user set, not the top_k bound it breaks.
        ("model.moe.num_experts=0", "override: model.moe.num_experts=0: must be at least 1"),
    ],
)
def test_out_of_range_values_name_the_key(tmp_path, override, line):
    run_dir = tmp_path / "run"
    for dry_run in ([], ["--dry-run"]):  # --dry-run used to pass a negative max_tokens
        result = _train_cli(run_dir, "model.family=switch", override, *dry_run)
        assert one_error_line(result) == line
    assert not run_dir.exists()


def test_layers_name_num_experts_before_top_k():
    from moe_mt.models.moe_layers import MoEOptions

    options = MoEOptions(
        num_experts=0, top_k=1, freq=2, offset=1, sides="both", router="topk", router_dim=16,
        router_init_scale=0.1, jitter=0.0, capacity_factor=1.25, eval_capacity_factor=None,
        expert_dropout=None,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"^moe_num_experts=0: must be at least 1$"):
        options.check()


def test_run_dir_that_is_a_file(prepped_demo, tmp_path):
    path = tmp_path / "run"
    path.write_text("not a directory")
    line = one_error_line(_train_cli(path, "train.max_update=1"))
    assert line == f"run_dir={path}: exists and is not a directory"


def test_read_only_run_directory(prepped_demo, tmp_path, monkeypatch):
    run_dir = _copy(prepped_demo, tmp_path)
    config = (run_dir / "config.yaml").read_bytes()
    fail_writes(monkeypatch, run_dir, errno.EROFS)
    line = one_error_line(_train_cli(run_dir, "train.max_update=1"))
    assert line == f"read-only file system while writing {run_dir / '.lock'}"
    assert (run_dir / "config.yaml").read_bytes() == config


def test_read_only_checkpoints_directory(prepped_demo, tmp_path, monkeypatch):
    """Refused before training starts (it failed inside fairseq's verify_checkpoint_directory),
    the run's config.yaml untouched."""
    run_dir = _copy(prepped_demo, tmp_path)
    config = (run_dir / "config.yaml").read_bytes()
    fail_writes(monkeypatch, run_dir / "checkpoints", errno.EROFS)
    line = one_error_line(_train_cli(run_dir, "train.max_update=1"))
    assert line == f"read-only file system while writing {run_dir / 'checkpoints'}"
    assert (run_dir / "config.yaml").read_bytes() == config
    assert not (run_dir / "checkpoints").exists()


def test_disk_full_while_saving_a_checkpoint(prepped_demo, tmp_path, monkeypatch):
    """One line naming the checkpoint and the resume point; no partial file left; the last good
    checkpoint intact (it used to be about 200 lines, five tracebacks and a .tmp on the disk)."""
    run_dir = _copy(prepped_demo, tmp_path)
    checkpoints = run_dir / "checkpoints"
    fail_writes(monkeypatch, checkpoints, errno.ENOSPC, only=lambda p: "_1_10." in p.name)
    result = _train_cli(run_dir, "train.max_update=10", "train.save_interval_updates=5")
    assert one_error_line(result) == (
        f"no space left on device while writing {checkpoints / 'checkpoint_1_10.pt'}; "
        f"{checkpoints / 'checkpoint_last.pt'} (update 5) is intact: free space and rerun the "
        "same command to resume"
    )
    assert leftovers(run_dir) == []
    assert checkpoint_update(checkpoints / "checkpoint_last.pt") == 5
    assert not (checkpoints / "checkpoint_1_10.pt").exists()


def test_training_time_and_validations_survive_a_lost_summary(trained_demo, tmp_path):
    """Each checkpoint records the training's cumulative time and validations, so a process
    killed after it (kill -9 writes no summary) loses none of them: the resumed run's summary
    counts the first process's time and keeps its validations (compare reads that total)."""
    run_dir = _copy(trained_demo, tmp_path)
    last = run_dir / "checkpoints" / "checkpoint_last.pt"
    first = json.loads((run_dir / "logs" / "train_summary.json").read_text())
    state = torch.load(last, weights_only=True)
    recorded = state["extra_state"][PROGRESS_KEY]
    assert [v["num_updates"] for v in recorded["valid_history"]] == [10, 20, 30]
    assert 0 < recorded["wall_seconds"] <= first["wall_seconds"]
    # As if the first process had been killed after its last checkpoint, having trained for an
    # hour: no summary, only what the checkpoint holds.
    (run_dir / "logs" / "train_summary.json").unlink()
    state["extra_state"][PROGRESS_KEY] = {**recorded, "wall_seconds": 3600.0}
    torch.save(state, last)

    result = train(_cfg(run_dir, "train.max_update=35", "train.save_interval_updates=10"))
    assert result.resumed_from_update == 30
    summary = json.loads((run_dir / "logs" / "train_summary.json").read_text())
    assert summary["wall_seconds"] > 3600
    history = summary["valid_history"]
    assert [v["num_updates"] for v in history] == [10, 20, 30, 35]
    assert history[:3] == recorded["valid_history"] and history[3]["wall_seconds"] > 3600
    assert summary["cpu_seconds"] > recorded["cpu_seconds"]


@pytest.mark.parametrize("where", ["recipe", "override"])
@pytest.mark.parametrize(
    ("key", "text", "why"),
    [
        ("train.lr", "${env:MOEMT_TEST_UNSET}", "environment variable MOEMT_TEST_UNSET is not set"),
        ("train.warmup_updates", "${eval.nothing}", "interpolation names no key eval.nothing"),
        # Read as each source is merged (the architecture's names), not only at the end.
        (
            "model.family",
            "${env:MOEMT_TEST_UNSET}",
            "environment variable MOEMT_TEST_UNSET is not set",
        ),
    ],
)
def test_unresolved_interpolation_is_one_line(tmp_path, monkeypatch, where, key, text, why):
    """It was `unexpected error ... ValidationError` (or ConfigKeyError): now the key, the file
    (or override), the text and the variable, before anything is written."""
    monkeypatch.delenv("MOEMT_TEST_UNSET", raising=False)
    run_dir = tmp_path / "run"
    if where == "recipe":
        section, leaf = key.split(".")
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(f"include: [{RECIPE}]\n{section}:\n  {leaf}: {text}\n")
        result = invoke("train", recipe, f"run_dir={run_dir}", "--dry-run")
    else:
        recipe, result = "override", _train_cli(run_dir, f"{key}={text}", "--dry-run")
    assert one_error_line(result) == f"{recipe}: {key}={text}: {why}"
    assert not run_dir.exists()


def test_guard_compares_resolved_interpolations(prepped_demo, tmp_path, monkeypatch):
    """`train.warmup_updates: ${train.max_update}` and `train.lr: ${env:...}` resumed with other
    values were not refused: the configs held the same text. Now the values are recorded (the
    text in meta.unresolved) and compared."""
    run_dir = _copy(prepped_demo, tmp_path)
    interpolated = ["train.warmup_updates=${train.max_update}", "train.lr=${env:MOEMT_TEST_LR}"]
    monkeypatch.setenv("MOEMT_TEST_LR", "0.001")
    train(_cfg(run_dir, "train.max_update=4", "train.save_interval_updates=2", *interpolated))
    config = (run_dir / "checkpoints" / "config.yaml").read_text()
    assert "  warmup_updates: 4\n" in config and "  lr: 0.001\n" in config
    meta = config.partition("\nmeta:\n")[2]
    assert "train.warmup_updates: ${train.max_update}" in meta and "${env:MOEMT_TEST_LR}" in meta

    monkeypatch.setenv("MOEMT_TEST_LR", "0.002")
    with pytest.raises(MoeMtError) as refused:
        train(_cfg(run_dir, "train.max_update=6", "train.save_interval_updates=2", *interpolated))
    assert "train.lr: 0.001 -> 0.002" in str(refused.value)
    assert "train.warmup_updates: 4 -> 6" in str(refused.value)
    assert checkpoint_update(run_dir / "checkpoints" / "checkpoint_last.pt") == 4


def test_max_tokens_below_every_training_pair_writes_nothing(prepped_demo, tmp_path):
    """fairseq drops every pair longer than train.max_tokens: it was `unexpected error ... The
    dataset is empty`, after config.yaml and checkpoints/config.yaml were written."""
    from moe_mt.workflows.train.trainer import _shortest_training_pair

    run_dir = _copy(prepped_demo, tmp_path)
    before = (run_dir / "config.yaml").read_bytes()
    shortest = _shortest_training_pair(RunDir(run_dir))
    assert shortest is not None and shortest > 2
    result = _train_cli(run_dir, f"train.max_tokens={shortest - 1}", "train.max_update=1")
    assert one_error_line(result) == (
        f"train.max_tokens={shortest - 1}: no training pair fits: the shortest is {shortest} "
        "tokens (its longer side, end of sentence included)"
    )
    assert (run_dir / "config.yaml").read_bytes() == before
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "logs").exists()


def test_a_sigterm_to_the_launcher_reaches_every_rank_as_an_interrupt():
    """Issue G2 with several ranks: a SIGTERM (kill, a scheduler's stop) reaches the launching
    process alone; it is sent on to every live rank as SIGINT, so they stop as on Ctrl-C."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from moe_mt.workflows.train.trainer import _forward_sigterm

    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, time\n"
         "signal.signal(signal.SIGINT, lambda *a: sys.exit(7))\n"
         "print('ready', flush=True)\ntime.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip

    class Rank:  # what torch's spawn context holds: is_alive() and pid
        pid = child.pid

        @staticmethod
        def is_alive():
            return child.poll() is None

    assert child.stdout.readline().strip() == "ready"
    previous = _forward_sigterm([Rank()])
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        assert child.wait(timeout=10) == 7  # the rank got SIGINT
    finally:
        signal.signal(signal.SIGTERM, previous)
        if child.poll() is None:
            child.kill()
