"""scripts/device_report.py: the GPU check's report reads the training logs right and survives
failed steps (it runs on the GPU machine, where a crash would lose the call's numbers)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "device_report.py"


@pytest.fixture(scope="module")
def device_report():
    spec = importlib.util.spec_from_file_location("device_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_log(path: Path, intervals: list[tuple[float, float, int]]) -> None:
    """A train.log as moemt writes it: fairseq's json log lines behind a logging prefix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["2026-12-06 01:00:00,000 | INFO | fairseq_cli.train | start"]
    for wps, wpb, updates in intervals:
        stats = {"epoch": 1, "wps": str(wps), "wpb": str(wpb), "num_updates": str(updates)}
        lines.append(f"2026-12-06 01:00:01,000 | INFO | train_inner | {json.dumps(stats)}")
    lines.append('2026-12-06 01:00:09,000 | INFO | valid | {"epoch": 1, "wps": "99999"}')
    path.write_text("\n".join(lines) + "\n")


def test_train_speed_leaves_out_the_start_up_interval(device_report, tmp_path):
    log = tmp_path / "train.log"
    # The first interval is slow (start-up); the median of the others is 1000 words/s.
    _train_log(log, [(100.0, 500.0, 25), (900.0, 500.0, 50), (1000.0, 500.0, 75), (1100, 500, 100)])
    speed = device_report.train_speed(log)
    assert speed["wps"] == 1000.0
    assert speed["sec_per_update"] == pytest.approx(0.5)
    assert speed["intervals"] == 3
    assert speed["updates"] == 100


def test_train_speed_of_a_single_interval_and_of_none(device_report, tmp_path):
    log = tmp_path / "train.log"
    _train_log(log, [(400.0, 200.0, 4)])
    assert device_report.train_speed(log)["sec_per_update"] == pytest.approx(0.5)
    _train_log(log, [])
    assert device_report.train_speed(log) is None


def test_report_ratios_and_a_failed_step(device_report, tmp_path):
    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    (work / "env.txt").write_text("mode: GPU (cuda)\ngpu: NVIDIA H100 80GB HBM3\n")
    (work / "steps.tsv").write_text(
        "setup\tok\t20\t90\ntrain_thor_bf16\tfailed (exit 1)\t5\t130\n"
        "train_thor_fp16\tok\t60\t130\n"
    )
    (work / "logs" / "train_thor_bf16.log").write_text("RuntimeError: bf16 is broken here\n")
    runs = work / "runs"
    # dense 1000 words/s at 0.5 s/update; Switch 900 words/s; THOR 0.9 s/update.
    _train_log(runs / "dense" / "logs" / "train.log", [(1, 1, 1), (1000, 500, 50)])
    _train_log(runs / "switch" / "logs" / "train.log", [(1, 1, 1), (900, 450, 50)])
    _train_log(runs / "thor" / "logs" / "train.log", [(1, 1, 1), (1000, 900, 50)])
    (runs / "thor.precision").write_text("fp16\n")
    text = device_report.report(work)
    assert "| Switch / dense, words/s | 0.90 | >= 0.8 | met |" in text
    assert "| THOR / dense, seconds per update | 1.80 | <= 2.1 | met |" in text
    assert "| thor | fp16 | 50 |" in text
    # The failed step's output is in the report; the missing evals read n/a, not a crash.
    assert "RuntimeError: bf16 is broken here" in text
    assert "| dense | n/a | 50 | 1000 | 500.0 | 1 | n/a | n/a |" in text
    assert "- gpu: NVIDIA H100 80GB HBM3" in text


def test_report_of_an_empty_work_dir(device_report, tmp_path):
    out = tmp_path / "report.md"
    assert device_report.main([str(tmp_path), str(out)]) == 0
    text = out.read_text()
    assert "| Switch / dense, words/s | n/a | >= 0.8 | n/a |" in text
