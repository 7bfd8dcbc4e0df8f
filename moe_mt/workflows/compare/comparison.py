"""``moemt compare``: evaluated runs side by side, with paired bootstrap against a baseline.

Reads, per run directory, what ``moemt eval`` and ``moemt train`` left behind
(``eval/<split>/report.json`` and ``hyp.txt``, ``logs/train_summary.json``, ``config.yaml``) and
writes into an output directory of the caller's choice::

    compare.json              every number below, with the signatures
    compare.md                the table, as Markdown
    valid_loss_wall.png       validation loss against training wall-clock time, a line per run
    valid_loss_updates.png    validation loss against updates, a line per run

Columns: BLEU, chrF2, TER (sacreBLEU, signatures in the table's caption); parameters in total
and active per token (:mod:`moe_mt.workflows.train.model_summary`); training cost (updates, epochs,
wall-clock and CPU seconds, cumulative over resumes); inference sentences/s; for MoE runs the
expert activation rate and dropped-token share on the validation set at the end of training
(the criterion's per-batch ``moe_active`` / ``moe_dropped``, same definition as the core's).

Against the baseline (``baseline``, also a column), every run gets sacreBLEU's paired bootstrap
resampling (Koehn 2004): the system's bootstrap mean, its 95% confidence half-width and the
p-value of the difference, per metric; ``*`` marks p < 0.05.

Refused, with one line naming the runs and the field: runs scored against different references
(sha256 of the reference file in the eval reports), hypotheses of another split, and different
metric signatures (tokenisation, casing, sacreBLEU version).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.rundir import atomic_write_json, atomic_write_text
from moe_mt.workflows.evaluate.evaluation import METRICS, paired_bootstrap, read_lines

SIGNIFICANCE = 0.05


@dataclass
class RunRecord:
    """What compare reads of one run directory."""

    name: str
    run_dir: Path
    report: dict
    hypotheses: list[str]
    train: dict  # logs/train_summary.json, {} when absent


def load_run(run_dir: str | Path, split: str, eval_name: str | None = None) -> RunRecord:
    """The run's report of ``split`` in ``eval/<eval_name or split>/`` and its train summary."""
    run_dir = Path(run_dir).resolve()
    report_path = run_dir / "eval" / (eval_name or split) / "report.json"
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except OSError:
        raise MoeMtError(
            f"{report_path}: no eval report; run `moemt eval {run_dir}` first"
        ) from None
    except ValueError as exc:
        raise MoeMtError(f"{report_path}: not valid JSON ({exc})") from None
    if report.get("multilingual"):
        raise MoeMtError(
            f"{report_path}: a multilingual report (one score per direction and their average, "
            "in that file); moemt compare reads single-pair runs only"
        )
    if report.get("split") != split:
        raise MoeMtError(
            f"{report_path}: hypotheses of split {report.get('split')!r}, not {split!r}"
        )
    hypotheses = read_lines(Path(report["files"]["hypotheses"]))
    summary_path = run_dir / "logs" / "train_summary.json"
    train = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    return RunRecord(run_dir.name, run_dir, report, hypotheses, train)


def check_comparable(runs: list[RunRecord]) -> None:
    """Refuse runs whose scores cannot be compared (different references or signatures)."""
    first = runs[0]
    for run in runs[1:]:
        pair = f"runs {first.run_dir} and {run.run_dir}"
        if (
            run.report["files"]["reference"]["sha256"]
            != first.report["files"]["reference"]["sha256"]
        ):
            raise MoeMtError(f"{pair}: files.reference.sha256 differs (different references)")
        if run.report["lines"] != first.report["lines"]:
            raise MoeMtError(
                f"{pair}: lines differ ({first.report['lines']} vs {run.report['lines']})"
            )
        for metric in METRICS:
            a = first.report["scores"][metric]["signature"]
            b = run.report["scores"][metric]["signature"]
            if a != b:
                raise MoeMtError(f"{pair}: scores.{metric}.signature differs ({a} vs {b})")


def compare(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    baseline: str | Path | None = None,
    split: str = "test",
    resamples: int = 1000,
    seed: int = 12345,
    summaries: bool = True,
    eval_name: str | None = None,
) -> dict:
    """Compare evaluated runs; write compare.json, compare.md and the plots to ``out_dir``.

    ``baseline`` defaults to the first run. ``summaries=False`` skips building each model for
    its parameter counts (they then come from the eval reports: total only). ``eval_name`` reads
    the reports of ``moemt eval ... eval.name=NAME`` (e.g. an earlier checkpoint) instead.
    """
    if not run_dirs:
        raise MoeMtError("compare needs at least one run directory")
    base = load_run(baseline if baseline is not None else run_dirs[0], split, eval_name)
    runs = [base] + [
        load_run(d, split, eval_name) for d in run_dirs if Path(d).resolve() != base.run_dir
    ]
    check_comparable(runs)
    references = read_lines(Path(base.report["files"]["reference"]["path"]))

    rows = []
    for run in runs:
        row = _row(run, summaries)
        if run is not base:
            row["bootstrap"] = paired_bootstrap(
                base.hypotheses, run.hypotheses, references, resamples, seed
            )["metrics"]
        rows.append(row)
    result = {
        "split": split,
        "eval_name": eval_name or split,
        "baseline": str(base.run_dir),
        "lines": base.report["lines"],
        "signatures": {m: base.report["scores"][m]["signature"] for m in METRICS},
        "bootstrap": {"resamples": resamples, "seed": seed, "significance": SIGNIFICANCE},
        "runs": rows,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result["plots"] = write_plots(runs, out_dir)
    atomic_write_text(out_dir / "compare.md", markdown_table(result))
    atomic_write_json(out_dir / "compare.json", result)
    return result


def _row(run: RunRecord, summaries: bool) -> dict:
    report, train = run.report, run.train
    valid = train.get("last_valid") or {}
    row = {
        "name": run.name,
        "run_dir": str(run.run_dir),
        "arch": (report.get("model") or {}).get("arch"),
        "scores": {m: report["scores"][m]["score"] for m in METRICS},
        "parameters": report.get("parameters"),
        "active_parameters": None,
        "flops_per_token": None,
        "updates": train.get("num_updates"),
        "checkpoint_updates": (report.get("checkpoint") or {}).get("num_updates"),
        "epochs": train.get("epoch"),
        "train_wall_seconds": train.get("wall_seconds"),
        "train_cpu_seconds": train.get("cpu_seconds"),
        "sentences_per_second": (report.get("timing") or {}).get("sentences_per_second"),
        "activation_rate": _float(valid.get("moe_active")),
        "dropped_fraction": _float(valid.get("moe_dropped")),
        "checkpoint": report.get("checkpoint"),
    }
    if summaries:
        from moe_mt.config import load_config
        from moe_mt.workflows.train.model_summary import model_summary

        summary = model_summary(load_config(run.run_dir))
        row["active_parameters"] = summary.get("active_parameters")
        row["flops_per_token"] = summary.get("flops_per_token")
    return row


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fmt(value, spec: str = ",") -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(result: dict) -> str:
    columns = ["run", "arch", *METRICS, "params", "active/token", "ckpt updates", "updates",
               "epochs", "train wall s", "train CPU s", "sent/s", "act. rate",
               "dropped"]  # fmt: skip
    lines = [
        f"Split `{result['split']}` ({result['lines']} lines, reports "
        f"`eval/{result['eval_name']}`); "
        f"baseline `{result['baseline']}`. `ckpt updates`: the evaluated checkpoint's; `updates`, "
        "`epochs`, `train wall s` and `train CPU s`: the whole training run's.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    for row in result["runs"]:
        cells = [row["name"], row["arch"] or "-"]
        for metric in METRICS:
            cells.append(score_cell(row, metric))
        cells += [
            _fmt(row["parameters"]),
            _fmt(row["active_parameters"]),
            _fmt(row["checkpoint_updates"]),
            _fmt(row["updates"]),
            _fmt(row["epochs"]),
            _fmt(row["train_wall_seconds"]),
            _fmt(row["train_cpu_seconds"]),
            _fmt(row["sentences_per_second"]),
            _fmt(row["activation_rate"], ".3f"),
            _fmt(row["dropped_fraction"], ".3f"),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "Scores are sacreBLEU's; against the baseline, `mean ± 95% CI (p)` of paired bootstrap "
        f"resampling ({result['bootstrap']['resamples']} resamples, seed "
        f"{result['bootstrap']['seed']}); `*`: p < {SIGNIFICANCE}.",
        "",
        *(f"- {m}: `{sig}`" for m, sig in result["signatures"].items()),
        "",
    ]
    return "\n".join(lines)


def score_cell(row: dict, metric: str) -> str:
    score = f"{row['scores'][metric]:.2f}"
    bootstrap = (row.get("bootstrap") or {}).get(metric)
    if bootstrap is None:
        return score
    star = "*" if bootstrap["p_value"] is not None and bootstrap["p_value"] < SIGNIFICANCE else ""
    return (
        f"{score} ({bootstrap['system_mean']:.2f} ± {bootstrap['system_ci95']:.2f}, "
        f"p={bootstrap['p_value']:.3f}){star}"
    )


def write_plots(runs: list[RunRecord], out_dir: Path) -> list[str]:
    """Validation loss against wall-clock seconds and against updates (one line per run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for x_key, x_label, name in (
        ("wall_seconds", "training wall-clock (s)", "valid_loss_wall.png"),
        ("num_updates", "updates", "valid_loss_updates.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        plotted = False
        for run in runs:
            points = [
                (_float(v.get(x_key)), _float(v.get("loss")))
                for v in run.train.get("valid_history", [])
            ]
            points = [(x, y) for x, y in points if x is not None and y is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=run.name)
                plotted = True
        if plotted:
            ax.set_xlabel(x_label)
            ax.set_ylabel("validation loss")
            ax.legend()
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=100)
            written.append(name)
        plt.close(fig)
    return written
