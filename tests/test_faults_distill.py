"""moemt distill: its bad inputs, each one line on stderr, exit code 1 and nothing of the
student written (no data/, distill/init.pt or checkpoints/config.yaml that look like a
started distillation). The good path is tests/test_distill.py.

Cases: no teacher, an unknown mode, an out-of-range teacher weight, a teacher whose checkpoint
does not fit its data (prepared again since), a student option the model's layers refuse.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.faults import invoke, one_error_line
from tests.test_distill import _overrides

RECIPE = str(REPO / "recipes" / "demo.yaml")


@pytest.fixture(scope="module")
def teacher(trained_demo, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("distill_faults") / "teacher"
    shutil.copytree(trained_demo, run_dir)
    return run_dir


def _distill(student: Path, *args: str):
    return invoke("distill", RECIPE, f"run_dir={student}", *args)


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("distill.mode=phrase", "distill.mode=phrase: expected one of ('word', 'sequence')"),
        (
            "distill.teacher_weight=1.5",
            "override: distill.teacher_weight=1.5: must be in [0.0, 1.0]",
        ),
        ("model.attention_heads=3", "model: embed_dim must be divisible by num_heads"),
    ],
)
def test_config_errors_write_nothing(teacher, tmp_path, override, line):
    student = tmp_path / "student"
    assert one_error_line(_distill(student, *_overrides(teacher, override))) == line
    assert not student.exists()


def test_teacher_is_required(tmp_path):
    line = one_error_line(_distill(tmp_path / "student"))
    assert line == "distill.teacher: the teacher's run directory is required"


def test_teacher_checkpoint_that_does_not_fit_its_data(teacher, tmp_path):
    """It used to keep three mismatched tensors at init, then fail with a 90-line size
    mismatch, leaving data/, distill/init.pt and checkpoints/config.yaml behind."""
    shrunk = tmp_path / "teacher"
    shutil.copytree(teacher, shrunk)
    for lang in ("en", "de"):
        path = shrunk / "data" / "bin" / f"dict.{lang}.txt"
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        path.write_text("".join(lines[:-100]), encoding="utf-8")
    # As prep writes them: the manifest records the smaller dictionaries (not damaged ones).
    manifest_path = shrunk / "data" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["dictionary_size"] = {lang: n - 100 for lang, n in manifest["dictionary_size"].items()}
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    student = tmp_path / "student"
    line = one_error_line(_distill(student, *_overrides(shrunk)))
    checkpoint = shrunk / "checkpoints" / "checkpoint_last.pt"
    assert line.startswith(f"{checkpoint}: does not fit the data in {shrunk / 'data' / 'bin'}")
    assert not student.exists()
