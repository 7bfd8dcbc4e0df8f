"""Data-parallel ``moemt train`` on 2 CPU processes (gloo, 127.0.0.1): the same parameters as one
process on the same global batches, rank 0 alone writes the run directory, torchrun-style starts
and resumes, and a rank that dies or hangs stops the others with a one-line error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from moe_mt.checkpoints import load_state
from moe_mt.errors import MoeMtError
from moe_mt.workflows.train.distributed import (
    free_port,
    launch_plan,
    run_local_ranks,
    torchrun_environ,
)
from moe_mt.workflows.train.trainer import checkpoint_update, config_differences, train
from tests.conftest import REPO, TINY_MODEL, demo_config

RECIPE = str(REPO / "recipes" / "demo.yaml")
#: Deterministic tiny training: no dropout, so that batches alone decide the parameters.
DETERMINISTIC = ("data.spm.vocab_size=2000", *TINY_MODEL, "model.dropout=0", "train.log_interval=1")
UPDATES = 4
MOEMT = [sys.executable, "-m", "moe_mt.cli.main"]


def _run_copy(prepped: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(prepped, target)
    return target


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    """The trained tensors of the last checkpoint, without fairseq's ``_float_tensor``
    placeholders (uninitialised memory that only tracks the device)."""
    state = load_state(run_dir / "checkpoints" / "checkpoint_last.pt")["model"]
    return {k: v for k, v in state.items() if not k.endswith("._float_tensor")}


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "data" not in p.parts
    }


@pytest.fixture(scope="module")
def two_rank_run(prepped_demo, tmp_path_factory) -> Path:
    """``moemt train`` spawning 2 ranks, update_freq 1, for UPDATES updates (read-only)."""
    run_dir = _run_copy(prepped_demo, tmp_path_factory.mktemp("dp"), "two_ranks")
    overrides = (f"train.max_update={UPDATES}", "train.distributed_world_size=2")
    result = train(demo_config(run_dir, *DETERMINISTIC, *overrides))
    assert result.summary["world_size"] == 2
    return run_dir


@pytest.mark.slow  # seconds; the default run stays near 6 min (-m slow runs it)
def test_two_ranks_equal_one_process(two_rank_run, prepped_demo, tmp_path):
    """fairseq shards an epoch's batch list round-robin (rank r takes batches r, r+N, ...), so
    2 ranks with update_freq 1 see, per update, the two consecutive batches that 1 process with
    update_freq 2 accumulates; the summed gradient and so the parameters must agree."""
    one = _run_copy(prepped_demo, tmp_path, "one_process")
    train(demo_config(one, *DETERMINISTIC, f"train.max_update={UPDATES}", "train.update_freq=2"))
    difference = _max_difference(_params(two_rank_run), _params(one))
    assert difference < 1e-5

    # Control: one process with update_freq 1 sees half the data and ends up elsewhere, far
    # beyond the tolerance (so the comparison above can fail).
    half = _run_copy(prepped_demo, tmp_path, "half_batches")
    train(demo_config(half, *DETERMINISTIC, f"train.max_update={UPDATES}"))
    assert _max_difference(_params(two_rank_run), _params(half)) > 100 * max(difference, 1e-6)

    two = json.loads((two_rank_run / "logs" / "train_summary.json").read_text())
    single = json.loads((one / "logs" / "train_summary.json").read_text())
    # Validation is sharded too, its sums all-reduced (logged to 3 decimals).
    assert abs(float(two["last_valid"]["loss"]) - float(single["last_valid"]["loss"])) <= 1e-3


def test_only_rank0_writes_the_run_directory(two_rank_run, prepped_demo):
    assert _files(two_rank_run) == {
        ".lock",
        "config.yaml",
        "checkpoints/config.yaml",
        "checkpoints/checkpoint_best.pt",
        "checkpoints/checkpoint_last.pt",
        "logs/train.log",
        "logs/train_summary.json",
    }
    log = (two_rank_run / "logs" / "train.log").read_text().splitlines()
    assert sum("moemt train" in line and "fairseq-train" in line for line in log) == 1
    assert sum("data parallel: 2 ranks (spawn)" in line for line in log) == 1
    assert sum("Saved checkpoint" in line and "checkpoint_best.pt" in line for line in log) == 1
    records = [json.loads(line.split(" | ", 3)[3]) for line in log if "| train_inner |" in line]
    assert [int(r["num_updates"]) for r in records] == list(range(1, UPDATES + 1))
    # Lines every rank's fairseq would log, once: only rank 0 logs to the file.
    for once in ("Stopping training", "begin validation", "| valid |", "done training"):
        assert sum(once in line for line in log) == 1, once
    summary = json.loads((two_rank_run / "logs" / "train_summary.json").read_text())
    assert summary["num_updates"] == UPDATES and summary["world_size"] == 2
    assert summary["last_valid"]["num_updates"] == UPDATES  # a number, not the log's string
    config = (two_rank_run / "config.yaml").read_text()
    assert "distributed_world_size: 2" in config


def test_launch_plan_reads_torchrun_and_slurm():
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "9",
                "LOCAL_RANK": "1"}  # fmt: skip
    launch = launch_plan(1, torchrun)
    assert (launch.rank, launch.world_size, launch.local_rank, launch.spawn) == (1, 2, 1, False)
    assert launch.init_method == "env://"
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
             "MASTER_ADDR": "node7", "MASTER_PORT": "2345"}  # fmt: skip
    launch = launch_plan(4, slurm)
    assert (launch.rank, launch.world_size, launch.local_rank) == (3, 4, 1)
    assert launch.init_method == "tcp://node7:2345" and launch.launcher == "srun"
    spawned = launch_plan(2, {})
    assert spawned.spawn and spawned.world_size == 2 and spawned.init_method.startswith("tcp://")
    assert launch_plan(1, {}) is None
    assert launch_plan(1, {**torchrun, "WORLD_SIZE": "1", "RANK": "0"}) is None
    with pytest.raises(MoeMtError, match="distributed_world_size=3, but torchrun started 2"):
        launch_plan(3, torchrun)


def test_guard_compares_the_global_batch():
    from omegaconf import OmegaConf

    from moe_mt.config import schema

    a = schema()
    a.name, a.train.distributed_world_size, a.train.update_freq = "x", 1, 2
    same = OmegaConf.merge(a, {"train": {"distributed_world_size": 2, "update_freq": 1}})
    assert config_differences(a, same) == []
    bigger = OmegaConf.merge(a, {"train": {"distributed_world_size": 2}})
    assert config_differences(a, bigger) == [
        "train.distributed_world_size x train.update_freq: 1 x 2 -> 2 x 2"
    ]


def test_resume_on_another_number_of_ranks_warns(tmp_path):
    """Same global batch, other world size: allowed, with a warning on the epoch's position."""
    from omegaconf import OmegaConf

    from moe_mt.config import (
        RUN_CONFIG,
        fill_family_defaults,
        resolve_architecture,
        schema,
        to_yaml,
    )
    from moe_mt.workflows.common.rundir import RunDir
    from moe_mt.workflows.train.trainer import _guard

    a = schema()
    resolve_architecture(a.model, "test")  # as loading a recipe does
    fill_family_defaults(a, {})
    a.name, a.run_dir, a.train.distributed_world_size, a.train.update_freq = "x", "r", 1, 2
    a.data.src, a.data.tgt = "en", "de"
    a.data.train, a.data.valid = str(tmp_path / "t"), str(tmp_path / "v")
    run_dir = RunDir(tmp_path)
    run_dir.checkpoints.mkdir(parents=True)
    (run_dir.checkpoints / RUN_CONFIG).write_text(to_yaml(a))
    with pytest.warns(UserWarning, match="resuming on 2 ranks a run trained on 1"):
        _guard(OmegaConf.merge(a, {"train": {"distributed_world_size": 2, "update_freq": 1}}),
               run_dir)  # fmt: skip


WATCHED = """
import sys, time, torch
from moe_mt.workflows.train.distributed import Watchdog

layer = torch.nn.Linear(2, 2)
with Watchdog(1.0, "rank 0: silent"):
    for _ in range(int(sys.argv[1])):  # forwards keep it quiet ...
        layer(torch.zeros(1, 2))
        time.sleep(0.1)
    print("progressed", flush=True)
    time.sleep(60)  # ... until they stop
"""


@pytest.mark.slow  # end-to-end run, seconds (the default run stays near 6 min)
def test_watchdog_ends_a_silent_process():
    """Forwards count as progress; a second without one ends the process with one error line."""
    result = subprocess.run(
        [sys.executable, "-c", WATCHED, "30"], capture_output=True, text=True, timeout=50
    )
    # "progressed": it let 3 s of forwards (30 x 0.1 s) pass, three times its timeout.
    assert result.returncode == 1 and result.stdout == "progressed\n"
    assert _one_line_error(result.stderr) == "error: rank 0: silent"


def _cli(run_dir: Path, *overrides: str) -> list[str]:
    return [*MOEMT, "train", RECIPE, f"run_dir={run_dir}", *DETERMINISTIC, *overrides]


@pytest.mark.slow
def test_torchrun_style_start_resumes(two_rank_run, tmp_path):
    """2 processes with RANK/WORLD_SIZE/MASTER_* set (what torchrun gives) join, do not spawn,
    and resume the 2-rank run; only rank 0 writes."""
    run_dir = _run_copy(two_rank_run, tmp_path, "resumed")
    results = run_local_ranks(_cli(run_dir, f"train.max_update={UPDATES + 2}"), 2, timeout=300)
    for rank, result in enumerate(results):
        assert result.returncode == 0, f"rank {rank}: {result.stderr[-2000:]}"
    assert checkpoint_update(run_dir / "checkpoints" / "checkpoint_last.pt") == UPDATES + 2
    log = (run_dir / "logs" / "train.log").read_text()
    # The first run's lines, then the resumed run's, each once (train.log is appended to).
    assert log.count("data parallel: 2 ranks (spawn)") == 1
    assert log.count("data parallel: 2 ranks (torchrun)") == 1
    assert log.count(f"resuming from checkpoint_last.pt at update {UPDATES}") == 1
    assert results[1].stdout == ""  # rank 1 prints no report and no log line
    summary = json.loads((run_dir / "logs" / "train_summary.json").read_text())
    assert summary["num_updates"] == UPDATES + 2 and len(summary["valid_history"]) == 2


FAILING_RANK = """
import os, sys
import moe_mt  # compat patches first
from fairseq import trainer

original = trainer.Trainer.train_step

def train_step(self, samples, raise_oom=False):
    if os.environ["RANK"] == "1" and self.get_num_updates() >= 2:
        raise RuntimeError("injected failure on rank 1")
    return original(self, samples, raise_oom)

trainer.Trainer.train_step = train_step
from moe_mt.cli.main import app
sys.argv = ["moemt", *sys.argv[1:]]
app()
"""


def _one_line_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert "Traceback" not in stderr.split(errors[0])[-1]
    return errors[0]


@pytest.mark.slow
def test_a_rank_that_raises_stops_the_others(prepped_demo, tmp_path):
    run_dir = _run_copy(prepped_demo, tmp_path, "raises")
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    command = [sys.executable, str(script), "train", RECIPE, f"run_dir={run_dir}",
               *DETERMINISTIC, "train.max_update=100000"]  # fmt: skip
    results = run_local_ranks(command, 2, timeout=240, env={"PYTHONPATH": str(REPO)})
    assert results[1].returncode != 0 and "injected failure on rank 1" in results[1].stderr
    assert results[0].returncode == 1
    assert "rank 0: another rank stopped" in _one_line_error(results[0].stderr)


def _spawned_ranks(parent: int) -> list[int]:
    """Pids of the processes ``parent`` started with multiprocessing's spawn."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ppid = next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1]
        if int(ppid) == parent and "spawn_main" in cmdline:
            pids.append(int(proc.name))
    return sorted(pids)


def _wait_for_training(log: Path, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if log.exists() and '"num_updates": "2"' in log.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.3)
    pytest.fail("training did not start")


@pytest.mark.slow
def test_a_killed_spawned_rank_stops_the_run(prepped_demo, tmp_path):
    run_dir = _run_copy(prepped_demo, tmp_path, "killed")
    proc = subprocess.Popen(
        _cli(run_dir, "train.max_update=100000", "train.distributed_world_size=2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_training(run_dir / "logs" / "train.log", proc)
        ranks = _spawned_ranks(proc.pid)
        assert len(ranks) == 2
        os.kill(ranks[-1], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "stopped (signal SIGKILL)" in _one_line_error(stderr) or "another rank stopped" in stderr
    assert not Path(f"/proc/{ranks[0]}").exists()  # the surviving rank is gone too


@pytest.mark.slow
def test_a_hung_rank_times_out(prepped_demo, tmp_path):
    """A rank that stops answering (SIGSTOP: its sockets stay open) fails the others after
    train.distributed_timeout_minutes instead of letting them wait forever."""
    run_dir = _run_copy(prepped_demo, tmp_path, "hung")
    overrides = ("train.max_update=100000", "train.distributed_timeout_minutes=0.25")
    port = free_port()
    ranks = [
        subprocess.Popen(
            _cli(run_dir, *overrides),
            env={**os.environ, **torchrun_environ(rank, 2, port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        _wait_for_training(run_dir / "logs" / "train.log", ranks[0])
        os.kill(ranks[1].pid, signal.SIGSTOP)
        _, stderr = ranks[0].communicate(timeout=120)
    finally:
        for proc in ranks:
            proc.kill()
            proc.wait()
    assert ranks[0].returncode == 1
    assert "rank 0: no progress for 0.25 minutes" in _one_line_error(stderr)


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe", ["demo", "demo_switch", "demo_xmoe", "demo_thor", "demo_mhmoe", "demo_soft_moe"]
)
def test_every_family_trains_on_two_ranks(recipe, prepped_demo, tmp_path):
    """torch DDP (c10d) needs every trained parameter in every step's graph: each family's MoE
    layer must keep its experts there (a fused bank), or this fails at the second update."""
    from moe_mt.config import load_config

    run_dir = _run_copy(prepped_demo, tmp_path, recipe)
    overrides = [
        f"run_dir={run_dir}",
        *DETERMINISTIC,
        "model.encoder_layers=2",  # Soft MoE sits in encoder layer 1
        "model.decoder_layers=2",
        "train.max_update=3",
        "train.distributed_world_size=2",
    ]
    result = train(load_config(REPO / "recipes" / f"{recipe}.yaml", overrides))
    assert result.summary["num_updates"] == 3 and result.summary["world_size"] == 2
    assert float(result.summary["last_valid"]["loss"]) > 0
