"""benchmarks/quality.py end to end at a tiny budget: every family, both views, a signed table."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture
def quality(monkeypatch):
    """benchmarks/quality.py as a module. benchmarks/ is no package: its folder goes on sys.path
    for this test only, and the module leaves sys.modules after it, so that a later
    ``import quality`` elsewhere does not find this one."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    yield importlib.import_module("quality")
    sys.modules.pop("quality", None)


def test_tiny_study_produces_complete_signed_tables(shared_data, tmp_path, quality):
    out = tmp_path / "study"
    assert (
        quality.main(["--tiny", "--out", str(out), "--data", str(shared_data / "multi30k_en_de")])
        == 0
    )
    summary = json.loads((out / "study.json").read_text())
    families = [f.name for f in quality.FAMILIES]
    assert [r["family"] for r in summary["runs"]] == families
    assert summary["equal_updates"] == 20
    for view in ("time", "updates"):
        result = json.loads((out / f"compare-{view}" / "compare.json").read_text())
        assert [Path(r["run_dir"]).name for r in result["runs"]] == [f"{f}-s1" for f in families]
        assert set(result["signatures"]) == {"BLEU", "chrF2", "TER"}
        for signature in result["signatures"].values():
            assert "nrefs:1" in signature and "version:" in signature
        for row in result["runs"][1:]:  # every run against dense, every metric
            assert set(row["bootstrap"]["en-de"]) == {"BLEU", "chrF2", "TER"}
        assert all(r["checkpoint_updates"] == 20 for r in result["runs"])
        assert set(summary["views"][view]) == set(families)
    table = (out / "study.md").read_text()
    assert "## Equal updates: checkpoints at update 20" in table
    for family in families:
        assert f"| {family}-s1 |" in table and f"| {family} | 1 |" in table
