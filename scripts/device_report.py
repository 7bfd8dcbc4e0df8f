"""The markdown report of ``scripts/device_check.sh``: its steps, the layer benchmark, and the
training speed of the dense, Switch and THOR demo models with the issue's ratios.

    python3 scripts/device_report.py WORK_DIR REPORT_MD

Standard library only, and every input optional: the report is written whatever failed before
it (a missing number reads ``n/a``, with the failed step in the steps table).

Training speed comes from fairseq's ``train_inner`` log lines in ``<run>/logs/train.log``
(one per ``train.log_interval`` updates): ``wps`` is target tokens (sentencepiece pieces, the
EOS included) per second over the interval, ``wpb`` target tokens per update, so an interval's
seconds per update are ``wpb / wps``. The first interval holds the start-up (CUDA context,
kernel autotuning, the first batches' allocations) and is left out when there are others; the
median of the rest is reported. Switch is compared with dense by words per second (the same data
and active compute per token); THOR by seconds per update (each update runs the model twice).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

MODELS = ("dense", "switch", "thor")
#: The issue's goals: Switch words/s at least 0.8x dense; a THOR update at most 2.1x dense's.
SWITCH_WPS_GOAL = 0.8
THOR_UPDATE_GOAL = 2.1
TAIL_LINES = 40


def train_speed(train_log: Path) -> dict | None:
    """Median target words/s and seconds/update over the ``train_inner`` intervals of one log
    (the first left out when there are several), or None without any."""
    intervals = []
    for line in train_log.read_text(errors="replace").splitlines():
        if "| train_inner |" not in line:
            continue
        try:
            stats = json.loads(line.split("| train_inner |", 1)[1])
            wps, wpb = float(stats["wps"]), float(stats["wpb"])
        except (ValueError, KeyError):
            continue
        if wps > 0:
            intervals.append((wps, wpb / wps, int(float(stats.get("num_updates", 0)))))
    if not intervals:
        return None
    kept = intervals[1:] if len(intervals) > 1 else intervals
    return {
        "wps": statistics.median(w for w, _, _ in kept),
        "sec_per_update": statistics.median(s for _, s, _ in kept),
        "intervals": len(kept),
        "updates": intervals[-1][2],
    }


def _read(path: Path) -> str | None:
    return path.read_text(errors="replace") if path.is_file() else None


def _tail(text: str | None, lines: int = TAIL_LINES) -> str:
    if not text:
        return "(no output)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _steps(work: Path) -> list[list[str]]:
    text = _read(work / "steps.tsv") or ""
    return [row.split("\t") for row in text.splitlines() if row.strip()]


def _eval_scores(run: Path) -> tuple[float | None, float | None]:
    report = run / "eval" / "test" / "report.json"
    try:
        average = json.loads(report.read_text())["average"]
        return average["BLEU"]["score"], average["chrF2"]["score"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def _verdict(ratio: float | None, goal: float, at_least: bool) -> str:
    if ratio is None:
        return "n/a"
    met = ratio >= goal if at_least else ratio <= goal
    return "met" if met else "not met"


def report(work: Path) -> str:
    logs = work / "logs"
    note = _env_note(work)
    out = ["# moemt device check", "", note]
    setup = _read(logs / "setup.log") or ""
    versions = [line for line in setup.splitlines() if line.startswith("device_setup: python")]
    out += ["", f"Environment: {versions[-1][len('device_setup: ') :] if versions else 'n/a'}", ""]
    if "rehearsal" in note:
        out += ["A CPU rehearsal: tiny sizes, a few updates; no number here is a GPU figure.", ""]

    out += ["## Steps", "", "| step | status | seconds | budget (s) |", "| --- | --- | --- | --- |"]
    steps = _steps(work)
    out += [f"| {' | '.join(row)} |" for row in steps]
    total = sum(int(row[2]) for row in steps if len(row) > 2 and row[2].isdigit())
    out += ["", f"Steps took {total} s in all.", ""]

    out += ["## Training speed", ""]
    speeds, rows = {}, []
    for name in MODELS:
        run = work / "runs" / name
        precision = (_read(work / "runs" / f"{name}.precision") or "n/a").strip()
        log = run / "logs" / "train.log"
        speed = train_speed(log) if log.is_file() else None
        speeds[name] = speed
        bleu, chrf = _eval_scores(run)
        rows.append(
            f"| {name} | {precision} | {speed['updates'] if speed else 'n/a'} | "
            f"{_fmt(speed and speed['wps'], '.0f')} | "
            f"{_fmt(speed and speed['sec_per_update'] * 1000, '.1f')} | "
            f"{speed['intervals'] if speed else 'n/a'} | "
            f"{_fmt(bleu, '.2f')} | {_fmt(chrf, '.2f')} |"
        )
    out += [
        "| model | precision | updates | target words/s | ms/update | intervals | BLEU | chrF2 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "Medians over the `train_inner` log intervals after the first (start-up); BLEU/chrF2 of "
        "`moemt eval` on the demo test set (barely trained models: a smoke test, not quality).",
        "",
    ]
    dense, switch, thor = (speeds[m] for m in MODELS)
    switch_ratio = _ratio(switch and switch["wps"], dense and dense["wps"])
    thor_ratio = _ratio(thor and thor["sec_per_update"], dense and dense["sec_per_update"])
    out += [
        "| ratio | value | goal | |",
        "| --- | --- | --- | --- |",
        f"| Switch / dense, words/s | {_fmt(switch_ratio, '.2f')} | >= {SWITCH_WPS_GOAL} | "
        f"{_verdict(switch_ratio, SWITCH_WPS_GOAL, at_least=True)} |",
        f"| THOR / dense, seconds per update | {_fmt(thor_ratio, '.2f')} | <= {THOR_UPDATE_GOAL} | "
        f"{_verdict(thor_ratio, THOR_UPDATE_GOAL, at_least=False)} |",
        "",
    ]

    out += ["## MoE layer benchmark (benchmarks/moe_layer.py)", ""]
    for name in [row[0] for row in steps if row[0].startswith("bench_")] or ["bench_fp32"]:
        out += [f"### {name}", "", "```", _tail(_read(logs / f"{name}.log")), "```", ""]
    out += ["## CUDA tests", "", "```", _tail(_read(logs / "cuda_tests.log"), 25), "```", ""]

    failed = [row[0] for row in steps if len(row) > 1 and row[1] != "ok"]
    if failed:
        out += ["## Output of the steps that did not succeed", ""]
        for name in failed:
            out += [f"### {name}", "", "```", _tail(_read(logs / f"{name}.log")), "```", ""]
    return "\n".join(out).rstrip() + "\n"


def _env_note(work: Path) -> str:
    """``env.txt`` of device_check.sh: mode, date, commit, GPU; one markdown line each."""
    note = _read(work / "env.txt")
    if not note:
        return "(no environment note)"
    return "\n".join(f"- {line}" for line in note.strip().splitlines())


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: device_report.py WORK_DIR REPORT_MD", file=sys.stderr)
        return 2
    work, target = Path(argv[0]), Path(argv[1])
    text = report(work)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
