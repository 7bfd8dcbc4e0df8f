"""moemt compare: its bad inputs, each one line on stderr and exit code 1 (other refusals, of
runs that cannot be compared, are in tests/test_compare.py::test_refusals_name_runs_and_field).

Cases: a run without an eval report; an eval of a file pair (eval.source) where a split is
asked for, which named neither ("hypotheses of split None"); the same eval named with
--eval-name, which is compared.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from moe_mt.workflows.evaluate.evaluation import evaluate
from tests.faults import invoke, one_error_line
from tests.test_eval import _cfg, _pair


@pytest.fixture(scope="module")
def file_pair_runs(trained_demo, tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two copies of the trained run, each evaluated on the same small file pair under the name
    ``test`` (what a split's eval would be called); and the source file."""
    root = tmp_path_factory.mktemp("compare_faults")
    source, reference = _pair(root / "pair", 3)
    runs = []
    for name in ("a", "b"):
        run_dir = root / name
        shutil.copytree(trained_demo, run_dir)
        shutil.rmtree(run_dir / "eval", ignore_errors=True)
        evaluate(
            _cfg(run_dir, "eval.beam=1", f"eval.source={source}", f"eval.reference={reference}",
                 "eval.name=test")
        )  # fmt: skip
        runs.append(run_dir)
    return runs[0], runs[1], source


def test_a_file_pair_eval_is_not_a_split(file_pair_runs, tmp_path):
    a, b, source = file_pair_runs
    line = one_error_line(invoke("compare", a, b, "--out", tmp_path / "out"))
    assert line == (
        f"{a / 'eval' / 'test' / 'report.json'}: eval 'test' translated {source} "
        "(eval.source), not split 'test'"
    )
    assert not (tmp_path / "out").exists()


def test_a_named_file_pair_eval_is_compared(file_pair_runs, tmp_path):
    a, b, _ = file_pair_runs
    result = invoke("compare", a, b, "--eval-name", "test", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "Test files (eval.source)" in (tmp_path / "out" / "compare.md").read_text()


def test_a_run_without_report(file_pair_runs, tmp_path):
    a, _, _ = file_pair_runs
    line = one_error_line(invoke("compare", a, tmp_path, "--eval-name", "test"))
    report = tmp_path / "eval" / "test" / "report.json"
    assert line == f"{report}: no eval report; run `moemt eval` on its run first"


def test_compare_options_and_damaged_hypotheses(file_pair_runs, tmp_path):
    """Issue Q2-Q5: a hyp.txt cut short, --out naming a file, a run given twice, --resamples 0."""
    from moe_mt.workflows.compare.comparison import compare

    a, b, _ = file_pair_runs
    args = ("--eval-name", "test", "--resamples", "20")
    # Q4: a run given twice is one row (and one bootstrap).
    result = compare([a, b, b], tmp_path / "twice", resamples=20, summaries=False, eval_name="test")
    assert [r["name"] for r in result["runs"]] == ["a", "b"]
    # Q3: --out is a file.
    taken = tmp_path / "taken"
    taken.write_text("x")
    line = one_error_line(invoke("compare", a, b, "--out", taken, *args))
    assert line == f"{taken}: not a directory (--out is where compare.md and .json go)"
    # Q5: the option is named as compare's.
    line = one_error_line(invoke("compare", a, b, "--out", tmp_path / "o", "--resamples", "0"))
    assert line == "--resamples must be at least 1, not 0"
    # Q2: hypotheses cut to fewer lines than the report scored.
    cut = tmp_path / "cut"
    shutil.copytree(b, cut)
    hyp = cut / "eval" / "test" / "en-de" / "hyp.txt"
    hyp.write_text(hyp.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    line = one_error_line(invoke("compare", a, cut, "--out", tmp_path / "o2", *args))
    assert line == f"{hyp}: 1 lines, but the report scored 3; evaluate the run again"
    assert not (tmp_path / "o2").exists()


def test_a_length_limit_below_one_token_is_refused(file_pair_runs):
    """Issue E2: eval.max_len_a=0 eval.max_len_b=0 passed the bounds (each is at least 0) and
    ended in fairseq's AssertionError."""
    line = one_error_line(invoke("eval", file_pair_runs[0], "eval.max_len_a=0", "eval.max_len_b=0"))
    assert line == (
        "eval.max_len_a=0.0, eval.max_len_b=0: the length limit max_len_a * source length + "
        "max_len_b must allow at least 1 token"
    )


def test_runs_that_translated_other_sources_are_refused(file_pair_runs, tmp_path):
    """Issue 35, Q6: the same references, another source file (its sha256 in the report)."""
    a, b, _ = file_pair_runs
    other = tmp_path / "other"
    shutil.copytree(b, other)
    path = other / "eval" / "test" / "report.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    (direction,) = report["directions"].values()
    direction["files"]["source"]["sha256"] = "0" * 64
    path.write_text(json.dumps(report), encoding="utf-8")
    line = one_error_line(
        invoke("compare", a, other, "--eval-name", "test", "--out", tmp_path / "o")
    )
    assert line == (f"runs {a} and {other}: en-de files.source.sha256 differs (different sources)")


def _copy_with(run: Path, target: Path, change) -> Path:
    """A copy of ``run`` whose eval report ``test`` went through ``change(report)``."""
    shutil.copytree(run, target)
    path = target / "eval" / "test" / "report.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    change(report)
    path.write_text(json.dumps(report), encoding="utf-8")
    return path


def test_a_report_of_another_shape_or_a_damaged_summary_is_one_line(file_pair_runs, tmp_path):
    """Issue Q1: a report of another shape ended in a KeyError, an invalid train_summary.json
    in a JSONDecodeError; now one line naming the file and what is wrong."""
    a, b, _ = file_pair_runs
    args = ("--eval-name", "test", "--resamples", "20")
    path = _copy_with(b, tmp_path / "no_average", lambda report: report.pop("average"))
    line = one_error_line(
        invoke("compare", a, tmp_path / "no_average", "--out", tmp_path / "o", *args)
    )
    assert line == f"{path}: not a moemt eval report of this version (no key 'average')"

    def drop_signature(report):
        (direction,) = report["directions"].values()
        del direction["scores"]["chrF2"]["signature"]

    path = _copy_with(b, tmp_path / "no_signature", drop_signature)
    line = one_error_line(
        invoke("compare", a, tmp_path / "no_signature", "--out", tmp_path / "o", *args)
    )
    assert line == (
        f"{path}: not a moemt eval report of this version "
        "(no key 'directions.en-de.scores.chrF2.signature')"
    )

    damaged = tmp_path / "damaged"
    shutil.copytree(b, damaged)
    summary = damaged / "logs" / "train_summary.json"
    summary.write_text('{"num_updates": 3', encoding="utf-8")
    line = one_error_line(invoke("compare", a, damaged, "--out", tmp_path / "o", *args))
    assert line.startswith(f"{summary}: not valid JSON (")
    assert line.endswith(
        "); train the run again, or move the file aside to compare without its training figures"
    )
    assert not (tmp_path / "o").exists()
