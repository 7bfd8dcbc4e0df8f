"""moemt compare: evaluated runs side by side, bootstrap against the baseline, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_mt.cli.main import app
from moe_mt.errors import MoeMtError
from moe_mt.workflows.compare.comparison import compare
from moe_mt.workflows.evaluate.evaluation import evaluate
from tests.conftest import TINY_MODEL, demo_config


@pytest.fixture(scope="module")
def two_runs(trained_demo, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny trained run evaluated at update 20 (baseline) and at update 30."""
    root = tmp_path_factory.mktemp("compare")
    runs = []
    for name, checkpoint in (("early", "checkpoint_1_20.pt"), ("late", "last")):
        run_dir = root / name
        shutil.copytree(trained_demo, run_dir)
        cfg = demo_config(
            run_dir, "data.spm.vocab_size=2000", *TINY_MODEL, "train.max_update=30",
            "train.save_interval_updates=10", f"eval.checkpoint={checkpoint}", "eval.beam=1",
        )  # fmt: skip
        evaluate(cfg)
        runs.append(run_dir)
    return runs[0], runs[1]


def test_compare_table_bootstrap_and_plots(two_runs, tmp_path):
    early, late = two_runs
    result = compare([early, late], tmp_path / "out", resamples=100, summaries=True)
    assert [r["name"] for r in result["runs"]] == ["early", "late"]
    base, other = result["runs"]
    assert "bootstrap" not in base
    for metric in ("BLEU", "chrF2", "TER"):
        b = other["bootstrap"]["en-de"][metric]
        assert 0 <= b["p_value"] <= 1 and b["system_ci95"] >= 0
        assert b["system"] == pytest.approx(other["scores"][metric])
        assert b["baseline"] == pytest.approx(base["scores"][metric])
        assert other["directions"]["en-de"][metric] == other["scores"][metric]  # one direction
    assert other["updates"] == 30 and other["train_wall_seconds"] > 0
    assert other["active_parameters"] == other["parameters"]  # dense: every weight is active
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["runs"][1]["scores"] == other["scores"]
    table = (tmp_path / "out" / "compare.md").read_text()
    assert "| early |" in table and "| late |" in table and "nrefs:1|" in table
    assert "valid_loss_updates.png" in result["plots"]
    assert (tmp_path / "out" / "valid_loss_wall.png").stat().st_size > 0


def test_cli_compare(two_runs, tmp_path):
    early, late = two_runs
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        ["compare", str(late), "--baseline", str(early), "--out", str(out), "--resamples", "50"],
    )
    assert result.exit_code == 0, result.stderr
    assert "compare test" in result.stdout
    assert json.loads((out / "compare.json").read_text())["baseline"] == str(early.resolve())
    # An 80-column log gets the runs one by one, nothing truncated, and compare.md's path.
    lines = result.stdout.splitlines()
    assert "late" in lines and any(line.startswith("  BLEU ") for line in lines)
    assert "…" not in result.stdout
    assert f"wrote {out / 'compare.md'}" in " ".join(result.stdout.split())


def _edit_report(run_dir: Path, edit) -> Path:
    path = run_dir / "eval" / "test" / "report.json"
    report = json.loads(path.read_text())
    edit(report)
    path.write_text(json.dumps(report))
    return path


def test_refusals_name_runs_and_field(two_runs, tmp_path):
    early, late = two_runs
    other = tmp_path / "other"
    shutil.copytree(late, other)
    files = lambda r: r["directions"]["en-de"]["files"]  # noqa: E731
    _edit_report(other, lambda r: files(r)["reference"].update(sha256="0" * 64))
    with pytest.raises(MoeMtError, match=r"en-de files\.reference\.sha256 differs") as error:
        compare([early, other], tmp_path / "o1", summaries=False)
    assert str(early.resolve()) in str(error.value) and str(other) in str(error.value)

    shutil.rmtree(other)
    shutil.copytree(late, other)
    scores = lambda r: r["directions"]["en-de"]["scores"]  # noqa: E731
    _edit_report(other, lambda r: scores(r)["BLEU"].update(signature="nrefs:1|tok:intl"))
    with pytest.raises(MoeMtError, match=r"scores\.BLEU\.signature differs"):
        compare([early, other], tmp_path / "o2", summaries=False)

    _edit_report(other, lambda r: r.update(split="valid"))
    with pytest.raises(MoeMtError, match="eval 'test' translated split 'valid', not split 'test'"):
        compare([early, other], tmp_path / "o3", summaries=False)

    with pytest.raises(MoeMtError, match="no eval report"):
        compare([early, tmp_path], tmp_path / "o4", summaries=False)
    # A missing run, and an eval directory without its report, are named as given.
    with pytest.raises(MoeMtError, match=f"^{tmp_path / 'gone'}: no such run directory$"):
        compare([early, tmp_path / "gone"], tmp_path / "o5", summaries=False)
    unfinished = other / "eval" / "test-best"
    unfinished.mkdir()
    with pytest.raises(MoeMtError, match=f"^{unfinished}: no report.json here"):
        compare([early, unfinished], tmp_path / "o6", summaries=False)


def test_named_eval_of_an_earlier_checkpoint(two_runs, tmp_path):
    """eval.name keeps an earlier checkpoint's report beside the final one; compare reads it."""
    _, late = two_runs
    runs = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        shutil.copytree(late, run_dir)
        cfg = demo_config(
            run_dir, "data.spm.vocab_size=2000", *TINY_MODEL, "train.max_update=30",
            "eval.checkpoint=checkpoint_1_20.pt", "eval.beam=1", "eval.name=test@u20",
        )  # fmt: skip
        evaluate(cfg)
        runs.append(run_dir)
    named = json.loads((runs[0] / "eval" / "test@u20" / "report.json").read_text())
    final = json.loads((runs[0] / "eval" / "test" / "report.json").read_text())
    assert named["split"] == "test" and named["checkpoint"]["num_updates"] == 20
    assert final["checkpoint"]["num_updates"] == 30  # untouched
    result = compare(runs, tmp_path / "out", resamples=20, summaries=False, eval_name="test@u20")
    assert [r["checkpoint_updates"] for r in result["runs"]] == [20, 20]
    assert result["runs"][1]["updates"] == 30  # the whole training run's
    # Same checkpoint, same decoding: identical hypotheses and scores.
    assert result["runs"][1]["scores"] == result["runs"][0]["scores"]
    assert "eval/test@u20" in (tmp_path / "out" / "compare.md").read_text()
    with pytest.raises(MoeMtError, match="eval.name='../x'"):
        evaluate(demo_config(runs[0], "data.spm.vocab_size=2000", *TINY_MODEL, "eval.name=../x"))


def _as_format_1(run_dir: Path) -> None:
    """Rewrite the run's test report as a format-1 single-pair report (as moemt wrote before
    report format 2): per-direction fields at the top, hyp.txt beside the report."""
    out = run_dir / "eval" / "test"
    report = json.loads((out / "report.json").read_text())
    (direction,) = report.pop("directions").values()
    (out / "en-de" / "hyp.txt").rename(out / "hyp.txt")
    files = {**direction["files"], "hypotheses": str(out / "hyp.txt")}
    for key in ("average", "zero_shot_average"):
        report.pop(key)
    report.update(
        format=1, files=files, scores=direction["scores"], bootstrap=direction["bootstrap"],
        legacy_bleu=None, expert_usage=None, thor=None, truncated_sources=0,
        timing={**direction["timing"], **report["timing"]},
    )  # fmt: skip
    (out / "report.json").write_text(json.dumps(report))


def test_compare_reads_reports_written_before_format_2(two_runs, tmp_path):
    early, late = two_runs
    now = compare([early, late], tmp_path / "now", resamples=50, summaries=False)
    old = tmp_path / "old"
    shutil.copytree(late, old)
    _as_format_1(old)
    before = compare([early, old], tmp_path / "before", resamples=50, summaries=False)
    assert before["runs"][1]["scores"] == now["runs"][1]["scores"]
    assert before["runs"][1]["bootstrap"] == now["runs"][1]["bootstrap"]
    assert before["runs"][1]["sentences_per_second"] == now["runs"][1]["sentences_per_second"]


def test_every_row_says_how_it_was_evaluated_and_other_decoding_is_flagged(two_runs, tmp_path):
    early, late = two_runs
    result = compare([early, late], tmp_path / "same", resamples=20, summaries=False)
    base, other = result["runs"]
    assert (base["checkpoint_choice"], other["checkpoint_choice"]) == ("checkpoint_1_20.pt", "last")
    assert base["decoding"]["beam"] == 1 and result["decoding_differs"] == []
    table = (tmp_path / "same" / "compare.md").read_text()
    assert "| early | checkpoint_1_20.pt | 1 |" in table and "Decoded otherwise" not in table

    # The same run decoded with beam 4: compared, but flagged in the json, the table and the CLI.
    wider = tmp_path / "wider"
    shutil.copytree(late, wider)
    _edit_report(wider, lambda r: r["decoding"].update(beam=4))
    result = compare([early, wider], tmp_path / "flagged", resamples=20, summaries=False)
    assert result["decoding_differs"] == ["wider: beam 4 (baseline 1)"]
    assert (
        "**Decoded otherwise than the baseline**"
        in (tmp_path / "flagged" / "compare.md").read_text()
    )
    cli = CliRunner().invoke(
        app, ["compare", str(early), str(wider), "--out", str(tmp_path / "c"), "--resamples", "20"]
    )
    assert cli.exit_code == 0, cli.stderr
    assert "warning: decoded otherwise than the baseline: wider: beam 4 (baseline 1)" in (
        cli.stdout + cli.stderr
    )
