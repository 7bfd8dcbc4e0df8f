"""Shared fixtures: the shipped corpus, a prepared copy of it, the shared real corpora."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import moe_mt  # noqa: F401  (compat patches before anything imports fairseq)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "corpora" / "tatoeba_en_de"
SHARED_DATA = Path(os.environ.get("MOEMT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shipped_corpus() -> Path:
    return SHIPPED


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared corpora not present at {SHARED_DATA}")
    return SHARED_DATA


def demo_config(run_dir: Path, *overrides: str):
    from moe_mt.config import load_config

    return load_config(REPO / "recipes" / "demo.yaml", [f"run_dir={run_dir}", *overrides])


@pytest.fixture(scope="session")
def prepped_demo(tmp_path_factory) -> Path:
    """The shipped corpus prepared once per test session (small vocabulary for speed)."""
    from moe_mt.workflows.prep.pipeline import prep

    run_dir = tmp_path_factory.mktemp("prepped") / "demo"
    prep(demo_config(run_dir, "data.spm.vocab_size=2000"))
    return run_dir


#: A model small enough to train a few dozen updates in seconds (1+1 layers, d=64).
TINY_MODEL = (
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "model.embed_dim=64",
    "model.ffn_embed_dim=128",
    "model.attention_heads=2",
    "train.max_tokens=2048",
    "train.warmup_updates=10",
    "train.log_interval=5",
)


@pytest.fixture(scope="session")
def trained_demo(prepped_demo, tmp_path_factory) -> Path:
    """A run directory with prepared data and a tiny model trained for 30 updates, with
    checkpoints every 10 updates (checkpoint_1_10.pt ... , checkpoint_best.pt, _last.pt).
    Treat it as read-only: copy it (shutil.copytree) before changing anything."""
    import shutil

    from moe_mt.workflows.train.trainer import train

    run_dir = tmp_path_factory.mktemp("trained") / "demo"
    shutil.copytree(prepped_demo, run_dir)
    cfg = demo_config(
        run_dir,
        "data.spm.vocab_size=2000",
        *TINY_MODEL,
        "train.max_update=30",
        "train.save_interval_updates=10",
    )
    train(cfg)
    return run_dir


def moemt_with_and_without_plugin(command: list[str], plugin: str):
    """Run ``command`` (a ``moemt`` process) without any ``MOEMT_PLUGINS``, then with ``plugin``
    named there: ``(refused, done)``, both ``subprocess.CompletedProcess``."""
    import subprocess

    from moe_mt.models.families import PLUGINS_ENV

    env = {k: v for k, v in os.environ.items() if k != PLUGINS_ENV}
    refused = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    done = subprocess.run(
        command, cwd=REPO, env={**env, PLUGINS_ENV: plugin}, capture_output=True, text=True
    )
    return refused, done


def kill_after_first_checkpoint(command: list[str], run_dir: Path, timeout: float = 120) -> None:
    """Run ``command`` (a ``moemt train`` process of ``run_dir``) until its first checkpoint is
    saved, then kill it with SIGKILL, as a crash or the OOM killer would."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "checkpoint_last.pt"
    log = run_dir / "logs" / "train.log"
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if log.exists() and "Saved checkpoint" in log.read_text() and last.exists():
                return
            time.sleep(0.2)
        pytest.fail(f"no checkpoint within {timeout:.0f} s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
