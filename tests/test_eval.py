"""moemt eval: report, hypotheses, checkpoint choice, line-count checks, paired bootstrap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_mt.cli.main import app
from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.text import read_lines
from moe_mt.workflows.evaluate.evaluation import evaluate
from moe_mt.workflows.evaluate.scoring import score
from tests.conftest import TINY_MODEL, demo_config

SIGNATURE_START = {
    "BLEU": "nrefs:1|case:mixed|eff:no|tok:13a",
    "chrF2": "nrefs:1|",
    "TER": "nrefs:1|",
}


def _cfg(run_dir: Path, *overrides: str):
    return demo_config(run_dir, "data.spm.vocab_size=2000", *TINY_MODEL, *overrides)


def _copy(trained_demo: Path, target: Path) -> Path:
    shutil.copytree(trained_demo, target)
    return target


@pytest.fixture(scope="module")
def run_copy(trained_demo, tmp_path_factory) -> Path:
    """One copy of the trained run shared by the tests of this module that only add evals."""
    return _copy(trained_demo, tmp_path_factory.mktemp("eval") / "run")


def test_eval_report_and_hypotheses(run_copy):
    result = evaluate(_cfg(run_copy, "eval.beam=2", "eval.split=valid"))
    out = run_copy / "eval" / "valid"
    assert result.out_dir == out
    report = json.loads((out / "report.json").read_text())
    assert report == result.report

    assert report["format"] == 2 and list(report["directions"]) == ["en-de"]
    direction = report["directions"]["en-de"]
    references = read_lines(run_copy / "data" / "text" / "en-de" / "valid.de")
    hypotheses = read_lines(out / "en-de" / "hyp.txt")
    assert len(hypotheses) == len(references) == report["lines"] == direction["lines"] == 1092
    for name, start in SIGNATURE_START.items():
        assert direction["scores"][name]["signature"].startswith(start)
        assert direction["scores"][name]["signature"].endswith("version:2.6.0")
    # The scores are those of the written hypotheses against the untouched references.
    assert direction["scores"] == score(hypotheses, references)
    # A single pair's average is its one direction's score.
    for name in SIGNATURE_START:
        assert report["average"][name]["score"] == direction["scores"][name]["score"]
        assert report["average"][name]["directions"] == 1
    assert report["zero_shot_average"] is None and direction["zero_shot"] is False

    assert report["checkpoint"]["choice"] == "last"
    assert report["checkpoint"]["num_updates"] == 30
    assert report["decoding"]["beam"] == 2 and report["decoding"]["no_repeat_ngram_size"] == 3
    assert direction["timing"]["sentences_per_second"] > 0
    assert direction["timing"]["tokens_per_second"] > 0
    assert report["timing"]["load_seconds"] > 0
    assert report["parameters"] > 100_000
    assert report["versions"]["fairseq"] == "0.12.2" and "git_commit" in report
    assert direction["files"]["reference"]["path"].endswith("valid.de")
    assert len(direction["files"]["reference"]["sha256"]) == 64
    assert direction["files"]["hypotheses"] == "en-de/hyp.txt"
    assert not list(out.glob(".*tmp"))  # atomic writes leave nothing behind


@pytest.mark.parametrize(
    ("choice", "updates"),
    [("best", None), ("average", 30), ("checkpoint_1_20.pt", 20)],
)
def test_eval_checkpoint_update_count(run_copy, choice, updates):
    from fairseq import checkpoint_utils

    if updates is None:  # best: whatever fairseq recorded in checkpoint_best.pt
        state = checkpoint_utils.load_checkpoint_to_cpu(
            str(run_copy / "checkpoints" / "checkpoint_best.pt")
        )
        updates = state["optimizer_history"][-1]["num_updates"]
    # A small file pair keeps this fast; it lands in eval/<source folder>_<source file name>/.
    source, reference = _pair(run_copy / "pair", 40)
    # Each case evaluates another checkpoint into the same default name, which a second eval
    # would refuse to replace (test_a_report_made_with_other_settings_is_not_replaced_silently).
    shutil.rmtree(run_copy / "eval" / "pair_head.en", ignore_errors=True)
    report = evaluate(
        _cfg(
            run_copy,
            f"eval.checkpoint={choice}",
            "eval.average_last=3",
            f"eval.source={source}",
            f"eval.reference={reference}",
        )
    ).report
    assert report["checkpoint"]["num_updates"] == updates
    assert report["name"] == "pair_head.en" and report["split"] is None
    assert (run_copy / "eval" / "pair_head.en" / "en-de" / "hyp.txt").is_file()
    if choice == "average":
        assert [c["num_updates"] for c in report["checkpoint"]["averaged"]] == [10, 20, 30]


def _pair(folder: Path, lines: int, extra_reference_line: bool = False) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent / "corpora" / "tatoeba_en_de"
    src = read_lines(root / "test.en")[:lines]
    ref = read_lines(root / "test.de")[: lines + int(extra_reference_line)]
    (folder / "head.en").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    (folder / "head.de").write_text("".join(r + "\n" for r in ref), encoding="utf-8")
    return folder / "head.en", folder / "head.de"


def test_score_refuses_unequal_lengths():
    with pytest.raises(MoeMtError, match="hyp.txt: 1 lines but ref.txt: 2 lines"):
        score(["a"], ["a", "b"], "hyp.txt", "ref.txt")


def test_eval_cli_prints_table(run_copy, tmp_path):
    source, reference = _pair(tmp_path, 10)
    result = CliRunner().invoke(
        app, ["eval", str(run_copy), f"run_dir={run_copy}", f"eval.source={source}",
              f"eval.reference={reference}"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    for word in ("BLEU", "chrF2", "TER", "nrefs:1", "report.json"):
        assert word in result.stdout


def test_paired_bootstrap_between_runs(trained_demo, tmp_path):
    baseline = _copy(trained_demo, tmp_path / "baseline")
    system = _copy(trained_demo, tmp_path / "system")
    source, reference = _pair(tmp_path / "pair", 60)
    files = (f"eval.source={source}", f"eval.reference={reference}", "eval.beam=2")
    evaluate(_cfg(baseline, *files, "eval.checkpoint=checkpoint_1_10.pt"))
    report = evaluate(
        _cfg(system, *files, f"eval.bootstrap_baseline={baseline}", "eval.bootstrap_resamples=200")
    ).report
    bootstrap = report["directions"]["en-de"]["bootstrap"]
    assert bootstrap["resamples"] == 200 and bootstrap["seed"] == 12345
    assert bootstrap["baseline"]["checkpoint"]["num_updates"] == 10
    for name in ("BLEU", "chrF2", "TER"):
        m = bootstrap["metrics"][name]
        assert 0 < m["p_value"] <= 1
        assert m["system_ci95"] >= 0 and m["baseline_ci95"] >= 0
        assert m["system"] == pytest.approx(report["directions"]["en-de"]["scores"][name]["score"])
        assert "seed:12345" in m["signature"] and "bs:200" in m["signature"]
    # Fixed seed: the same comparison gives the same numbers.
    again = evaluate(
        _cfg(system, *files, f"eval.bootstrap_baseline={baseline}", "eval.bootstrap_resamples=200")
    ).report["directions"]["en-de"]["bootstrap"]
    assert again["metrics"] == bootstrap["metrics"]

    # Other references than the baseline's: refused, before decoding.
    other_ref = tmp_path / "pair" / "other.de"
    other_ref.write_text(reference.read_text().replace("e", "E"), encoding="utf-8")
    with pytest.raises(MoeMtError, match="other references"):
        evaluate(
            _cfg(
                system,
                f"eval.source={source}",
                f"eval.reference={other_ref}",
                f"eval.bootstrap_baseline={baseline}",
            )
        )
    with pytest.raises(MoeMtError, match=r"valid/report.json: missing"):
        evaluate(_cfg(system, "eval.split=valid", f"eval.bootstrap_baseline={baseline}"))


def test_paired_bootstrap_equal_systems_are_not_significant():
    """sacrebleu returns 1/(n+1) for a zero difference; equal systems must read p = 1."""
    from moe_mt.workflows.evaluate.scoring import paired_bootstrap

    refs = ["the cat sat on the mat", "a dog barked", "it is raining today", "hello world"]
    hyps = ["the cat sat on a mat", "a dog barks", "it rains today", "hello world"]
    same = paired_bootstrap(hyps, list(hyps), refs, resamples=50, seed=3)["metrics"]
    assert all(m["p_value"] == 1.0 for m in same.values())
    worse = ["cat", "dog", "rain", "hi"]
    differ = paired_bootstrap(hyps, worse, refs, resamples=50, seed=3)["metrics"]
    assert all(m["p_value"] < 1.0 for m in differ.values())


def test_a_report_made_with_other_settings_is_not_replaced_silently(trained_demo, tmp_path):
    """README's `eval.checkpoint=average eval.beam=4` after the recipe's eval: refused without
    eval.name (the recipe's report would be lost), kept beside it with one."""
    run = _copy(trained_demo, tmp_path / "run")
    evaluate(_cfg(run, "eval.beam=1", "eval.max_tokens=500"))
    with pytest.raises(MoeMtError) as err:
        evaluate(_cfg(run, "eval.beam=2", "eval.checkpoint=checkpoint_1_20.pt"))
    assert str(err.value) == (
        f"{run / 'eval' / 'test' / 'report.json'}: made with other eval settings (checkpoint: "
        "last -> checkpoint_1_20.pt; beam: 1 -> 2); give eval.name=NAME to keep both, or "
        "eval.name=test to replace it"
    )
    # Batching changes no hypothesis: the same evaluation, replaced as before.
    evaluate(_cfg(run, "eval.beam=1", "eval.max_tokens=800"))
    kept = evaluate(_cfg(run, "eval.beam=2", "eval.name=test-beam2"))
    assert kept.out_dir.name == "test-beam2" and (run / "eval" / "test" / "report.json").is_file()
