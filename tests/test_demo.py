"""The demo pipeline script (recipes/run.sh: prep -> train -> eval) with a CI-sized budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_MODEL


@pytest.mark.slow
def test_run_script_end_to_end(tmp_path):
    moemt = Path(sys.executable).parent / "moemt"
    run_dir = tmp_path / "demo-ci"
    overrides = [f"run_dir={run_dir}", "data.spm.vocab_size=2000", *TINY_MODEL,
                 "train.max_update=40", "eval.beam=2"]  # fmt: skip
    subprocess.run(
        ["bash", str(REPO / "recipes" / "run.sh"), str(REPO / "recipes" / "demo.yaml"), *overrides],
        check=True, env={**os.environ, "MOEMT": str(moemt)}, timeout=900,
    )  # fmt: skip
    report = json.loads((run_dir / "eval" / "test" / "report.json").read_text())
    scores = report["directions"]["en-de"]["scores"]
    assert set(scores) == {"BLEU", "chrF2", "TER"}
    assert all("version:" in s["signature"] for s in scores.values())
    assert report["checkpoint"]["num_updates"] == 40
