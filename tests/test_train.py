"""moemt train: fairseq's trainer from a recipe, resume, the config guard, dry run, the lock."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from typer.testing import CliRunner

from moe_mt.cli.main import app
from moe_mt.workflows.common.rundir import RunDir
from moe_mt.workflows.train.trainer import checkpoint_update, config_differences, train
from tests.conftest import REPO, TINY_MODEL, demo_config, kill_after_first_checkpoint


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


def _cfg(run_dir: Path, *overrides: str):
    return demo_config(run_dir, "data.spm.vocab_size=2000", *TINY_MODEL, *overrides)


def test_trained_run_directory(trained_demo):
    run = RunDir(trained_demo)
    assert checkpoint_update(run.checkpoints / "checkpoint_last.pt") == 30
    assert (run.checkpoints / "checkpoint_1_10.pt").is_file()
    config = run.config.read_text()
    assert "meta:" in config and "git_commit" in config and "fairseq: 0.12.2" in config
    summary = json.loads((run.logs / "train_summary.json").read_text())
    assert summary["num_updates"] == 30 and summary["wall_seconds"] > 0
    # Numbers, not fairseq's log strings (issue 34, item 10).
    assert isinstance(summary["train_loss"], float) and summary["epoch"] == 1
    assert isinstance(summary["last_valid"]["loss"], float) and summary["last_valid"]["loss"] > 0
    assert summary["last_valid"]["num_updates"] == 30
    assert all(isinstance(v["loss"], float) for v in summary["valid_history"])
    log = (run.logs / "train.log").read_text()
    assert '"num_updates": "30"' in log and "fairseq-train" in log


def test_resume_continues_from_saved_update(trained_demo, tmp_path):
    run_dir = _copy(trained_demo, tmp_path)
    result = train(_cfg(run_dir, "train.max_update=40", "train.save_interval_updates=10"))
    assert result.resumed_from_update == 30
    assert checkpoint_update(run_dir / "checkpoints" / "checkpoint_last.pt") == 40
    summary = json.loads((run_dir / "logs" / "train_summary.json").read_text())
    assert len(summary["valid_history"]) >= 2  # the earlier run's validations are kept


def _cli_overrides(run_dir: Path, *extra: str) -> list[str]:
    return [f"run_dir={run_dir}", "data.spm.vocab_size=2000", *TINY_MODEL, "train.max_update=40",
            "train.save_interval_updates=10", *extra]  # fmt: skip


def test_overwrite_starts_over(trained_demo, tmp_path):
    run_dir = _copy(trained_demo, tmp_path)
    result = train(_cfg(run_dir, "train.max_update=5", "model.dropout=0.3"), overwrite=True)
    assert result.resumed_from_update == 0
    assert checkpoint_update(run_dir / "checkpoints" / "checkpoint_last.pt") == 5


def test_finetune_sets_old_checkpoints_aside(trained_demo, tmp_path):
    run_dir = _copy(trained_demo, tmp_path)
    best = run_dir / "checkpoints" / "checkpoint_best.pt"
    result = train(_cfg(run_dir, "train.max_update=5", "train.lr=1e-4"), finetune_from=best)
    assert result.resumed_from_update == 0
    assert (run_dir / "checkpoints.before-finetune.1" / "checkpoint_last.pt").is_file()
    assert checkpoint_update(run_dir / "checkpoints" / "checkpoint_last.pt") == 5


def test_config_differences_ignore_budgets():
    from omegaconf import OmegaConf

    from moe_mt.config import schema

    a = schema()
    a.name, a.train.max_update, a.model.dropout = "x", 10, 0.1
    b = OmegaConf.merge(a, {"train": {"max_update": 99, "lr": 0.5}, "eval": {"beam": 1}})
    assert config_differences(a, b) == ["train.lr: 0.001 -> 0.5"]


def test_dry_run_writes_nothing(tmp_path):
    run_dir = tmp_path / "nothing"
    result = CliRunner().invoke(
        app, ["train", str(REPO / "recipes" / "demo.yaml"), f"run_dir={run_dir}", "--dry-run"]
    )
    assert result.exit_code == 0, result.stderr
    assert "fairseq-train" in result.stdout and "--arch moemt_transformer_demo" in result.stdout
    assert "max_update: 1800" in result.stdout
    assert not run_dir.exists()


def test_resume_after_kill(trained_demo, tmp_path):
    """A training killed with SIGKILL resumes from the update of its last checkpoint."""
    run_dir = _copy(trained_demo, tmp_path)
    shutil.rmtree(run_dir / "checkpoints")
    shutil.rmtree(run_dir / "logs")
    overrides = _cli_overrides(run_dir)[:-2] + [
        "train.max_update=100000",
        "train.save_interval_updates=10",
    ]
    recipe = str(REPO / "recipes" / "demo.yaml")
    command = [sys.executable, "-m", "moe_mt.cli.main", "train", recipe]
    kill_after_first_checkpoint([*command, *overrides], run_dir)
    last = run_dir / "checkpoints" / "checkpoint_last.pt"
    saved = checkpoint_update(last)
    assert saved >= 10 and saved % 10 == 0

    result = train(_cfg(run_dir, f"train.max_update={saved + 5}", "train.save_interval_updates=10"))
    assert result.resumed_from_update == saved
    assert checkpoint_update(last) == saved + 5
