"""``moemt compare``: evaluated runs side by side, with paired bootstrap against a baseline.

Reads, per run directory, what ``moemt eval`` and ``moemt train`` left behind
(``eval/<split>/report.json`` and its hypotheses, ``logs/train_summary.json``, ``config.yaml``;
reports of either format, :mod:`moe_mt.workflows.evaluate.report`) and writes into an output
directory of the caller's choice::

    compare.json              every number below, with the signatures
    compare.md                the table, as Markdown
    valid_loss_wall.png       validation loss against training wall-clock time, a line per run
    valid_loss_updates.png    validation loss against updates, a line per run

A run is a run directory (its report ``eval/<split>/``, or ``eval/<eval_name>/``) or one of its
eval directories (``runs/demo/eval/test-ct2-int8``): so the same run decoded by fairseq and by
CTranslate2 (``eval.engine``) compare side by side, the engine, its quantization and threads in
the run's name.

Runs of one direction or many compare alike: every run must have been scored on the same
directions. Columns: BLEU, chrF2, TER (sacreBLEU, signatures in the table's caption; with several
directions their macro average, and a table of every direction's BLEU below); parameters in total
and active per token (:mod:`moe_mt.workflows.train.model_summary`); training cost (updates, epochs,
wall-clock and CPU seconds, cumulative over resumes); inference sentences/s; for MoE runs the
expert activation rate and dropped-token share on the validation set at the end of training
(the criterion's per-batch ``moe_active`` / ``moe_dropped``, same definition as the core's).

Against the baseline (``baseline``, also a column), every run gets sacreBLEU's paired bootstrap
resampling (Koehn 2004) in every direction: the system's bootstrap mean, its 95% confidence
half-width and the p-value of the difference, per metric; ``*`` marks p < 0.05.

Runs whose every report has ``tokenized_bleu`` (``eval.tokenized_bleu`` on data prepared with
``data.subword`` bpe or none) get one more column, ``BLEU4 tok``: fairseq-generate's BLEU4 on
the tokenised text, the figure fairseq-era papers print, with its own paired bootstrap on the
same tokenised lines. References of segmented data (``none``) are read without their ``@@``
marks, as eval scored them.

Every row says how it was evaluated: the checkpoint choice (last, best, an average of N, a
file) and the decoding options that change the output (beam, length penalty, length limit,
n-gram blocking). Rows decoded otherwise than the baseline are listed in ``decoding_differs``
and above the table: their difference is partly the decoding's, not the model's.

Refused, with one line naming the runs and the field: runs scored on other directions or
against different references (sha256 of the reference file in the eval reports), hypotheses of
another split, and different metric signatures (tokenisation, casing, sacreBLEU version).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from moe_mt.config import load_config
from moe_mt.data_prep.segmentation import text_segmenter
from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.manifest import read_manifest
from moe_mt.workflows.common.rundir import RunDir, atomic_write_json, atomic_write_text
from moe_mt.workflows.common.text import read_lines
from moe_mt.workflows.evaluate.report import (
    OUTPUT_DECODING,
    REPORT,
    decoding_speed,
    hypotheses_file,
    read_report,
)
from moe_mt.workflows.evaluate.scoring import (
    METRICS,
    TOKENIZED_BLEU,
    paired_bootstrap,
    tokenized_bleu_metrics,
)
from moe_mt.workflows.train.model_summary import model_summary

SIGNIFICANCE = 0.05


@dataclass
class RunRecord:
    """What compare reads of one run directory."""

    name: str
    run_dir: Path
    report_path: Path
    report: dict  # in the format-2 form
    hypotheses: dict[str, list[str]]  # per direction
    train: dict  # logs/train_summary.json, {} when absent


def load_run(run_dir: str | Path, split: str, eval_name: str | None = None) -> RunRecord:
    """The run's report of ``split`` in ``eval/<eval_name or split>/`` and its train summary;
    ``run_dir`` may also be an eval directory of a run (``RUN_DIR/eval/<name>``)."""
    given = run_dir
    run_dir = Path(run_dir).resolve()
    name = run_dir.name
    if not run_dir.is_dir():
        raise MoeMtError(f"{given}: no such run directory")
    in_eval_dir = run_dir.parent.name == "eval"
    if in_eval_dir and (run_dir / REPORT).is_file():
        report_path, run_dir = run_dir / REPORT, run_dir.parent.parent
        name = f"{run_dir.name}/{report_path.parent.name}"
    elif in_eval_dir and RunDir(run_dir.parent.parent).config.is_file():
        # An eval directory without its report: name it, not RUN_DIR/eval/NAME/eval/test/.
        raise MoeMtError(f"{given}: no {REPORT} here; has `moemt eval` finished for it?")
    else:
        report_path = run_dir / "eval" / (eval_name or split) / REPORT
    report = _read_report(report_path)
    engine = report.get("engine") or {"name": "fairseq"}
    if engine["name"] != "fairseq":
        name += f" ({engine['name']} {engine.get('quantization')}, {engine.get('threads')} threads)"
    # A file pair's eval (eval.source, no split) is compared when named: the references are
    # compared by checksum across the runs all the same (check_comparable).
    named_file_pair = eval_name is not None and report.get("split") is None
    if report.get("split") != split and not named_file_pair:
        raise MoeMtError(
            f"{report_path}: eval {report.get('name', eval_name or split)!r} translated "
            f"{_what_was_translated(report)}, not split {split!r}"
        )
    hypotheses = {
        d: read_lines(hypotheses_file(report_path, report, d)) for d in report["directions"]
    }
    for d, lines in hypotheses.items():
        expected = report["directions"][d]["lines"]
        if len(lines) != expected:  # cut or grown since eval: its scores are not these lines'
            raise MoeMtError(
                f"{hypotheses_file(report_path, report, d)}: {len(lines)} lines, but the report "
                f"scored {expected}; evaluate the run again"
            )
    train = _read_train_summary(run_dir / "logs" / "train_summary.json")
    return RunRecord(name, run_dir, report_path.resolve(), report, hypotheses, train)


#: What compare reads of an eval report (format 2), as key paths: at the top, then in every
#: direction (``directions.<d>.``); a report without one is of another shape.
REPORT_KEYS = (("lines",), *(("average", m, "score") for m in METRICS))
DIRECTION_KEYS = (
    ("lines",),
    ("timing",),
    ("files", "source", "sha256"),
    ("files", "source", "path"),
    ("files", "reference", "sha256"),
    ("files", "reference", "path"),
    *(("scores", m, key) for m in METRICS for key in ("score", "signature")),
)


def _missing_key(found, keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` (a path into nested dicts) that ``found`` lacks, dotted, or None."""
    for depth, key in enumerate(keys):
        if not isinstance(found, dict) or key not in found:
            return ".".join(keys[: depth + 1])
        found = found[key]
    return None


def _read_train_summary(path: Path) -> dict:
    """``logs/train_summary.json`` as a dict ({} when absent); one line naming it when it is
    not valid JSON or not an object (cut short, hand-edited)."""
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MoeMtError(
            f"{path}: not valid JSON ({exc}); train the run again, or move the file aside to "
            "compare without its training figures"
        ) from None
    if not isinstance(summary, dict):
        raise MoeMtError(
            f"{path}: not a train summary (a JSON {type(summary).__name__}, not an "
            "object); move it aside to compare without its training figures"
        )
    return summary


def _read_report(path: Path) -> dict:
    """:func:`read_report`, and one line naming the file and the first key compare needs that a
    report of another shape (another tool's, hand-edited) lacks, instead of a KeyError."""
    try:
        report = read_report(path)
    except (KeyError, TypeError, AttributeError) as exc:  # a format-1 upgrade that fails
        what = f"no key '{exc.args[0]}'" if isinstance(exc, KeyError) else type(exc).__name__
        raise MoeMtError(f"{path}: not a moemt eval report of this version ({what})") from None
    directions = report.get("directions")
    if not isinstance(directions, dict) or not directions:
        raise MoeMtError(f"{path}: not a moemt eval report of this version (no key 'directions')")
    first = next(filter(None, (_missing_key(report, keys) for keys in REPORT_KEYS)), None)
    for d, info in directions.items():
        key = next(filter(None, (_missing_key(info, keys) for keys in DIRECTION_KEYS)), None)
        if first is None and key is not None:
            first = f"directions.{d}.{key}"
    if first is not None:
        raise MoeMtError(f"{path}: not a moemt eval report of this version (no key '{first}')")
    return report


def _what_was_translated(report: dict) -> str:
    if report.get("split") is not None:
        return f"split {report['split']!r}"
    sources = [d["files"]["source"]["path"] for d in report["directions"].values()]
    return f"{', '.join(sources)} (eval.source)"


def check_comparable(runs: list[RunRecord]) -> None:
    """Refuse runs whose scores cannot be compared (other directions, sources, references or
    signatures)."""
    first = runs[0]
    for run in runs[1:]:
        pair = f"runs {first.run_dir} and {run.run_dir}"
        ours, theirs = first.report["directions"], run.report["directions"]
        if list(ours) != list(theirs):
            raise MoeMtError(
                f"{pair}: directions differ ({', '.join(ours)} vs {', '.join(theirs)})"
            )
        for name, a in ours.items():
            b = theirs[name]
            for side, what in (("reference", "references"), ("source", "sources")):
                if b["files"][side]["sha256"] != a["files"][side]["sha256"]:
                    raise MoeMtError(
                        f"{pair}: {name} files.{side}.sha256 differs (different {what})"
                    )
            if a["lines"] != b["lines"]:
                raise MoeMtError(f"{pair}: {name} lines differ ({a['lines']} vs {b['lines']})")
            for metric in METRICS:
                sig_a, sig_b = a["scores"][metric]["signature"], b["scores"][metric]["signature"]
                if sig_a != sig_b:
                    raise MoeMtError(
                        f"{pair}: scores.{metric}.signature differs ({sig_a} vs {sig_b})"
                    )


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
    if resamples < 1:  # before anything is read, and named as compare's option
        raise MoeMtError(f"--resamples must be at least 1, not {resamples}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MoeMtError(f"{out_dir}: not a directory (--out is where compare.md and .json go)")
    base = load_run(baseline if baseline is not None else run_dirs[0], split, eval_name)
    runs, seen = [base], {base.report_path}
    for run in (load_run(d, split, eval_name) for d in run_dirs):
        if run.report_path not in seen:  # a run given twice is one row
            runs.append(run)
            seen.add(run.report_path)
    check_comparable(runs)
    directions = base.report["directions"]
    segmenters = _segmenters(base.run_dir, directions)
    references = {
        d: [
            line if segmenters[d] is None else segmenters[d].reference(line)
            for line in read_lines(Path(info["files"]["reference"]["path"]))
        ]
        for d, info in directions.items()
    }
    tokenized = all(segmenters.values()) and all(
        (run.report["directions"][d].get("tokenized_bleu") or {}).get("score") is not None
        for run in runs
        for d in directions
    )

    rows = []
    for run in runs:
        row = _row(run, summaries)
        if tokenized:
            for d in directions:
                score = run.report["directions"][d]["tokenized_bleu"]["score"]
                row["directions"][d][TOKENIZED_BLEU] = score
            row["scores"][TOKENIZED_BLEU] = sum(
                row["directions"][d][TOKENIZED_BLEU] for d in directions
            ) / len(directions)
        if run is not base:
            row["bootstrap"] = {
                d: paired_bootstrap(
                    base.hypotheses[d], run.hypotheses[d], references[d], resamples, seed
                )["metrics"]
                for d in directions
            }
            if tokenized:
                for d in directions:
                    tok = segmenters[d].tokenized
                    row["bootstrap"][d].update(
                        paired_bootstrap(
                            [tok(h) for h in base.hypotheses[d]],
                            [tok(h) for h in run.hypotheses[d]],
                            [tok(r) for r in references[d]],
                            resamples,
                            seed,
                            tokenized_bleu_metrics(),
                        )["metrics"]
                    )
        rows.append(row)
    first = next(iter(directions.values()))
    base_decoding = rows[0]["decoding"]
    differs = [
        f"{row['name']}: "
        + ", ".join(
            f"{k} {row['decoding'][k]} (baseline {base_decoding[k]})"
            for k in OUTPUT_DECODING
            if row["decoding"][k] != base_decoding[k]
        )
        for row in rows[1:]
        if row["decoding"] != base_decoding
    ]
    result = {
        "split": base.report.get("split"),  # None: a file pair (eval.source)
        "eval_name": eval_name or split,
        "baseline": str(base.run_dir),
        "directions": list(directions),
        "lines": base.report["lines"],
        "signatures": {
            **{m: first["scores"][m]["signature"] for m in METRICS},
            **({TOKENIZED_BLEU: first["tokenized_bleu"]["tokenizer"]} if tokenized else {}),
        },
        "metrics": [*METRICS, *([TOKENIZED_BLEU] if tokenized else [])],
        "decoding_differs": differs,
        "bootstrap": {"resamples": resamples, "seed": seed, "significance": SIGNIFICANCE},
        "runs": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    result["plots"] = write_plots(runs, out_dir)
    atomic_write_text(out_dir / "compare.md", markdown_table(result))
    atomic_write_json(out_dir / "compare.json", result)
    return result


def _segmenters(run_dir: Path, directions: dict) -> dict:
    """Per direction, the target side's segmenter of the run's prepared data (None for
    sentencepiece data, or a run whose data are gone)."""
    run = RunDir(run_dir)
    if not run.manifest.is_file():
        return dict.fromkeys(directions)
    files = read_manifest(run.manifest)["files"]
    return {d: text_segmenter(run.data, files, d.split("-")[1]) for d in directions}


def _row(run: RunRecord, summaries: bool) -> dict:
    report, train = run.report, run.train
    valid = train.get("last_valid") or {}
    row = {
        "name": run.name,
        "run_dir": str(run.run_dir),
        "arch": (report.get("model") or {}).get("arch"),
        "engine": report.get("engine") or {"name": "fairseq"},  # reports before engines: fairseq
        # The macro average over the trained directions (a single pair's: its score).
        "scores": {m: report["average"][m]["score"] for m in METRICS},
        "directions": {
            d: {m: info["scores"][m]["score"] for m in METRICS}
            for d, info in report["directions"].items()
        },
        "parameters": report.get("parameters"),
        "active_parameters": None,
        "flops_per_token": None,
        "updates": train.get("num_updates"),
        "checkpoint_updates": (report.get("checkpoint") or {}).get("num_updates"),
        "epochs": train.get("epoch"),
        "train_wall_seconds": train.get("wall_seconds"),
        "train_cpu_seconds": train.get("cpu_seconds"),
        "sentences_per_second": decoding_speed(report)["sentences_per_second"],
        "activation_rate": _float(valid.get("moe_active")),
        "dropped_fraction": _float(valid.get("moe_dropped")),
        "checkpoint": report.get("checkpoint"),
        "checkpoint_choice": checkpoint_choice(report.get("checkpoint")),
        "decoding": {k: (report.get("decoding") or {}).get(k) for k in OUTPUT_DECODING},
    }
    if summaries:
        summary = model_summary(load_config(run.run_dir))
        row["active_parameters"] = summary.get("active_parameters")
        row["flops_per_token"] = summary.get("flops_per_token")
    return row


def checkpoint_choice(checkpoint: dict | None) -> str:
    """``last``, ``best``, ``average of 10 (checkpoint12.pt ... checkpoint21.pt)`` or a file
    name: which checkpoint a report scored."""
    if not checkpoint:
        return "-"
    choice = checkpoint.get("choice")
    if choice == "average":
        names = [Path(c["path"]).name for c in checkpoint.get("averaged", [])]
        span = f" ({names[0]} ... {names[-1]})" if len(names) > 1 else ""
        return f"average of {len(names)}{span}"
    if choice == "path":
        return Path(checkpoint.get("path", "?")).name
    return str(choice)


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fmt(value, spec: str = ",") -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(result: dict) -> str:
    metrics = result.get("metrics", METRICS)
    columns = ["run", "arch", *metrics, "params", "active/token", "ckpt updates", "updates",
               "epochs", "train wall s", "train CPU s", "sent/s", "act. rate",
               "dropped"]  # fmt: skip
    differs = result.get("decoding_differs") or []
    warning = (
        ["**Decoded otherwise than the baseline** (part of these differences is the decoding's): "
         + "; ".join(differs) + ".", ""]
        if differs
        else []
    )  # fmt: skip
    lines = [
        *warning,
        (f"Split `{result['split']}`" if result["split"] else "Test files (eval.source)")
        + f" ({result['lines']} lines, reports "
        f"`eval/{result['eval_name']}`); "
        f"baseline `{result['baseline']}`. `ckpt updates`: the evaluated checkpoint's; `updates`, "
        "`epochs`, `train wall s` and `train CPU s`: the whole training run's.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    for row in result["runs"]:
        cells = [row["name"], row["arch"] or "-"]
        for metric in metrics:
            cells.append(mean_score_cell(row, metric))
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
    if len(result["directions"]) > 1:
        lines += [
            "",
            f"Scores above: the unweighted mean of the {len(result['directions'])} directions'. "
            "BLEU per direction:",
            "",
            "| run | " + " | ".join(result["directions"]) + " |",
            "|" + " --- |" * (len(result["directions"]) + 1),
        ]
        for row in result["runs"]:
            cells = [direction_cell(row, d, "BLEU") for d in result["directions"]]
            lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "How each row was evaluated:",
        "",
        "| run | checkpoint | " + " | ".join(OUTPUT_DECODING) + " |",
        "|" + " --- |" * (len(OUTPUT_DECODING) + 2),
        *(
            f"| {row['name']} | {row['checkpoint_choice']} | "
            + " | ".join(_fmt(row["decoding"][k], "") for k in OUTPUT_DECODING)
            + " |"
            for row in result["runs"]
        ),
    ]
    lines += [
        "",
        "Scores are sacreBLEU's"
        + (
            f" ({TOKENIZED_BLEU}: fairseq-generate's BLEU4 on tokenised text)"
            if TOKENIZED_BLEU in metrics
            else ""
        )  # fmt: skip
        + "; against the baseline, `mean ± 95% CI (p)` of paired bootstrap "
        f"resampling ({result['bootstrap']['resamples']} resamples, seed "
        f"{result['bootstrap']['seed']}); `*`: p < {SIGNIFICANCE}.",
        "",
        *(f"- {m}: `{sig}`" for m, sig in result["signatures"].items()),
        "",
    ]
    return "\n".join(lines)


def direction_cell(row: dict, direction: str, metric: str) -> str:
    """A direction's score, with its bootstrap against the baseline where there is one."""
    bootstrap = (row.get("bootstrap") or {}).get(direction, {}).get(metric)
    return _score_cell(row["directions"][direction][metric], bootstrap)


def mean_score_cell(row: dict, metric: str) -> str:
    """The run's score (a single direction's, with its bootstrap; or the mean of several)."""
    if len(row["directions"]) == 1:
        return direction_cell(row, next(iter(row["directions"])), metric)
    return _score_cell(row["scores"][metric], None)


def _score_cell(score: float, bootstrap: dict | None) -> str:
    text = f"{score:.2f}"
    if bootstrap is None:
        return text
    star = "*" if bootstrap["p_value"] is not None and bootstrap["p_value"] < SIGNIFICANCE else ""
    return (
        f"{text} ({bootstrap['system_mean']:.2f} ± {bootstrap['system_ci95']:.2f}, "
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
