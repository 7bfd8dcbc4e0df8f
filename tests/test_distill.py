"""moemt distill: word- and sequence-level KD end to end on the shipped corpus (a few updates),
resumable teacher translation, the report, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from moe_mt.checkpoints import load_state, read_num_updates
from moe_mt.cli.main import app
from moe_mt.workflows.distill.distillation import (
    CRITERION,
    distill,
    gain_kept,
    translate_resumable,
)
from tests.conftest import REPO, TINY_MODEL, demo_config

#: Fast decoding for the tests: greedy, the validation split is not needed.
FAST = ("eval.beam=1", "eval.no_repeat_ngram_size=0", "train.max_update=3")


@pytest.fixture(scope="module")
def teacher(trained_demo, tmp_path_factory) -> Path:
    """A copy of the tiny trained run (distill evaluates it, which writes its eval/)."""
    run_dir = tmp_path_factory.mktemp("teacher") / "teacher"
    shutil.copytree(trained_demo, run_dir)
    return run_dir


def _overrides(teacher: Path, *extra: str) -> list[str]:
    return ["data.spm.vocab_size=2000", *TINY_MODEL, *FAST, f"distill.teacher={teacher}", *extra]


def test_word_level_end_to_end_through_the_cli(teacher, tmp_path):
    student = tmp_path / "student"
    baseline = tmp_path / "baseline"
    shutil.copytree(teacher, baseline)
    result = CliRunner().invoke(
        app,
        ["distill", str(REPO / "recipes" / "demo.yaml"), f"run_dir={student}",
         *_overrides(teacher, f"distill.baseline={baseline}")],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "gain kept" in result.stdout

    report = json.loads((student / "distill" / "report.json").read_text())
    assert report["mode"] == "word"
    for row in ("teacher", "student", "baseline"):
        assert {"bleu", "parameters", "sentences_per_second", "tokens_per_second"} <= set(
            report[row]
        )
    # Same architecture as the teacher: the same parameter count, every tensor copied.
    assert report["student"]["parameters"] == report["teacher"]["parameters"]
    assert report["gain_kept"] is None  # the baseline is the teacher itself: no gain to share
    assert report["init"]["copied"] > 0 and report["init"]["from_experts"] == 0
    assert read_num_updates(student / "checkpoints" / "checkpoint_last.pt") == 3

    config = (student / "config.yaml").read_text()
    assert f"criterion: {CRITERION}" in config and "--distill-teacher" in config
    log = (student / "logs" / "distill.log").read_text()
    assert "copied encoder.embed_tokens.weight <- encoder.embed_tokens.weight" in log
    train_log = (student / "logs" / "train.log").read_text()
    assert "kl_teacher" in train_log and "loading pretrained model" in train_log

    # The init checkpoint holds the teacher's tensors exactly.
    init = load_state(student / "distill" / "init.pt")["model"]
    teacher_state = load_state(teacher / "checkpoints" / "checkpoint_last.pt")["model"]
    assert all(torch.equal(init[k], teacher_state[k]) for k in init)

    # The student is dense: it exports for deployment.
    exported = CliRunner().invoke(app, ["export", str(student), "--quantization", "int8"])
    assert exported.exit_code == 0, exported.stderr
    info = json.loads((student / "export" / "ct2-int8" / "export.json").read_text())
    assert info["architecture"]["family"] == "dense" and info["checkpoint"]["num_updates"] == 3


@pytest.mark.slow  # end-to-end run, seconds (the default run stays near 6 min)
def test_sequence_level_end_to_end_and_resume(teacher, tmp_path):
    student = tmp_path / "student"
    extra = ("distill.mode=sequence", "distill.max_sentences=150", "distill.chunk_lines=50",
             "distill.mix_original=true", "distill.init_from_teacher=false")  # fmt: skip
    cfg = demo_config(student, *_overrides(teacher, *extra))
    report = distill(cfg).report
    outputs = student / "distill" / "teacher_outputs"
    chunks = sorted(outputs.glob("chunk_*.txt"))
    assert [c.name for c in chunks] == [f"chunk_00000{i}.txt" for i in range(3)]
    assert report["teacher_outputs"]["lines"] == 150 and report["init"] is None
    hyps = (student / "distill" / "teacher_train.de").read_text().split("\n")[:-1]
    assert hyps == [line for c in chunks for line in c.read_text().split("\n")[:-1]]
    bin_dir = student / "data" / "bin"
    assert (bin_dir / "train1.en-de.de.bin").is_file()  # teacher outputs beside the originals
    manifest = json.loads((student / "data" / "manifest.json").read_text())
    assert manifest["distill"]["bin"]["split"] == "train1"
    assert read_num_updates(student / "checkpoints" / "checkpoint_last.pt") == 3

    # Rerun with a larger budget: no chunk translated again, training resumes.
    mtimes = [c.stat().st_mtime_ns for c in chunks]
    cfg = demo_config(student, *_overrides(teacher, *extra, "train.max_update=5"))
    distill(cfg)
    assert [c.stat().st_mtime_ns for c in chunks] == mtimes
    assert read_num_updates(student / "checkpoints" / "checkpoint_last.pt") == 5
    assert "chunk 3/3 (already done)" in (student / "logs" / "distill.log").read_text()


def test_translate_resumable_skips_done_chunks(tmp_path):
    lines = [f"line {i}" for i in range(10)]
    calls = []

    def translate(chunk):
        calls.append(list(chunk))
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted while translating the third chunk
        return [s.upper() for s in chunk]

    with pytest.raises(KeyboardInterrupt):
        translate_resumable(translate, lines, tmp_path, {"teacher": "a"}, 4)
    assert sorted(p.name for p in tmp_path.glob("chunk_*")) == ["chunk_000000.txt",
                                                               "chunk_000001.txt"]  # fmt: skip
    calls.clear()
    out = translate_resumable(lambda c: calls.append(c) or [s.upper() for s in c],
                              lines, tmp_path, {"teacher": "a"}, 4)  # fmt: skip
    assert out == [s.upper() for s in lines] and calls == [lines[8:]]
    # Another fingerprint (teacher, decoding, source): everything again.
    calls.clear()
    translate_resumable(lambda c: calls.append(c) or c, lines, tmp_path, {"teacher": "b"}, 4)
    assert len(calls) == 3


def test_gain_kept():
    assert gain_kept(30.0, 24.0, 20.0) == pytest.approx(0.4)
    assert gain_kept(30.0, 24.0, None) is None and gain_kept(20.0, 24.0, 20.0) is None


def test_demo_recipe_loads():
    from moe_mt.config import load_config

    cfg = load_config(REPO / "recipes" / "demo_distill.yaml")
    assert cfg.distill.teacher == str((REPO / "runs" / "demo_switch").resolve())
    assert cfg.distill.baseline == str((REPO / "runs" / "demo").resolve())
    assert (cfg.distill.mode, cfg.distill.teacher_weight, cfg.distill.init) == (
        "word",
        0.25,
        "mean",
    )


@pytest.mark.slow  # end-to-end run, seconds (the default run stays near 6 min)
def test_thor_teacher_word_level(prepped_demo, tmp_path):
    """An MoE (THOR) teacher: FFNs from the mean of its experts, its inference mode passed to
    the criterion, and the student trains a few updates."""
    from moe_mt.workflows.train.trainer import train

    thor = tmp_path / "thor"
    shutil.copytree(prepped_demo, thor)
    thor_args = ("model.arch=thor_transformer_demo", "model.moe.num_experts=2",
                 "train.criterion=thor_label_smoothed_cross_entropy")  # fmt: skip
    train(demo_config(thor, "data.spm.vocab_size=2000", *TINY_MODEL, *thor_args,
                      "train.max_update=5"))  # fmt: skip
    student = tmp_path / "student"
    cfg = demo_config(student, *_overrides(thor, "distill.teacher_inference=fixed",
                                           "eval.thor_draws=2", "eval.split=valid"))  # fmt: skip
    report = distill(cfg).report
    assert report["init"]["from_experts"] == 8  # fc1/fc2 weight and bias, 1 layer per side
    assert report["student"]["parameters"] < report["teacher"]["parameters"]
    assert report["teacher"]["arch"] == "thor_transformer_demo"
    config = (student / "config.yaml").read_text()
    assert "--distill-teacher-overrides" in config and '"moe_inference": "fixed"' in config
    assert read_num_updates(student / "checkpoints" / "checkpoint_last.pt") == 3
