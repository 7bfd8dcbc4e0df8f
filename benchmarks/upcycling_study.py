"""The upcycling and NLLB-regulariser study on Multi30k En-De (docs/benchmarks.md, last section).

The method of the quality study (benchmarks/quality.py: the same data, demo backbone and demo
settings, beam 5 on the last checkpoint, ``moemt compare``'s paired bootstrap), at fixed update
budgets instead of a wall-clock one:

- dense trained for N updates (``dense<N>``); then (a) dense continued for M more
  (``--finetune-from``, a fresh optimizer and the upcycled run's short warmup) against (b) the
  Switch demo (8 experts, top-1) upcycled from the same checkpoint (``recipes/demo_upcycle.yaml``)
  for M updates. Equal added updates: the continuation's checkpoint at M. Equal added time: the
  continuation is resumed up to the update K at which its training wall-clock, at its own pace
  over the first M updates, equals the upcycled run's (K > M: a Switch update costs more);
- Switch, Switch + EOM, Switch + CMR (``recipes/demo_switch{,_eom,_cmr}.yaml``) and THOR
  (``recipes/demo_thor.yaml``) from scratch for N + M updates each, against Switch; the dense
  continuation's checkpoint at M (N + M dense updates in all) as the dense column.

Every step holds ``--lock`` (an exclusive flock) while it runs; rerunning the script skips what
is finished and resumes a killed training.

    nice -n 5 python benchmarks/upcycling_study.py --out runs/upcycling --lock /tmp/moemt-cpu.lock
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import MULTI30K, ROOT, Study  # noqa: E402  (the quality study's runner and lock)

CONTINUATION_WARMUP = 100  # the upcycled recipe's warmup (recipes/demo_upcycle.yaml)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/upcycling", help="study directory")
    parser.add_argument("--dense-updates", type=int, default=600, help="N")
    parser.add_argument("--added-updates", type=int, default=400, help="M")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--interval", type=int, default=100, help="checkpoints and validations")
    parser.add_argument("--skip-thor", action="store_true", help="leave THOR out")
    parser.add_argument("--data", default=str(MULTI30K), help="Multi30k En-De directory")
    parser.add_argument("--lock", help="hold an exclusive lock on this file for each step")
    parser.add_argument("--moemt", default=str(Path(sys.executable).with_name("moemt")))
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(Study(args, out, Path(args.data).resolve()), args)
    n, m = args.dense_updates, args.added_updates
    total = n + m

    dense = runner.train("dense", "demo.yaml", n)
    start = str(Path(dense["dir"]) / "checkpoints" / "checkpoint_last.pt")
    upcycled = runner.train("upcycled", "demo_upcycle.yaml", m, (f"train.upcycle_from={start}",))
    continued = runner.train(
        "dense-continued", "demo.yaml", m, (f"train.warmup_updates={CONTINUATION_WARMUP}",), start
    )
    k = equal_time_updates(continued, upcycled, m)
    if k > continued["updates"]:
        continued = runner.train(
            "dense-continued", "demo.yaml", k, (f"train.warmup_updates={CONTINUATION_WARMUP}",),
            start,
        )  # fmt: skip
    for run in (dense, upcycled, continued):
        runner.evaluate(run)
    runner.study.evaluate_at(continued, m)
    at_m = str(Path(continued["dir"]) / "eval" / f"test@u{m}")
    runner.compare("compare-upcycle-updates", at_m, upcycled["dir"], dense["dir"])
    runner.compare("compare-upcycle-time", continued["dir"], upcycled["dir"])

    scratch = [
        runner.train(name, recipe, total)
        for name, recipe in (
            ("switch", "demo_switch.yaml"),
            ("switch-eom", "demo_switch_eom.yaml"),
            ("switch-cmr", "demo_switch_cmr.yaml"),
            *(() if args.skip_thor else (("thor", "demo_thor.yaml"),)),
        )
    ]
    for run in scratch:
        runner.evaluate(run)
    runner.compare("compare-regularisers", *(r["dir"] for r in scratch), at_m)

    runs = [dense, continued, upcycled, *scratch]
    summary = {"equal_time_updates": k, "runs": runs, "curves": valid_curves(runs, n)}
    (out / "study.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "study.md").write_text(study_markdown(out, summary), encoding="utf-8")
    plot_curves(summary["curves"], out / "valid_loss.png")
    print(f"wrote {out / 'study.md'}")
    return 0


class Runner:
    """Trains, evaluates and compares runs of the study, each step under the lock."""

    def __init__(self, study: Study, args):
        self.study, self.args = study, args

    def overrides(self, name: str, max_update: int, extra: tuple[str, ...]) -> list[str]:
        run_dir = self.study.out / f"{name}-s{self.args.seed}"
        data = self.study.data
        return [
            f"name={run_dir.name}",
            f"run_dir={run_dir}",
            *(f"data.{split}={data / split}" for split in ("train", "valid", "test")),
            f"train.seed={self.args.seed}",
            f"train.save_interval_updates={self.args.interval}",
            "train.keep_interval_updates=-1",  # the continuation's checkpoint at M
            f"train.validate_interval_updates={self.args.interval}",
            f"train.max_update={max_update}",
            *extra,
        ]

    def train(
        self,
        name: str,
        recipe: str,
        max_update: int,
        extra: tuple[str, ...] = (),
        finetune_from: str | None = None,
    ) -> dict:
        """Prepare (a copy of the first run's data: one vocabulary, which upcycling needs) and
        train ``recipe`` to ``max_update`` updates, or resume it; a finished run is left alone."""
        overrides = self.overrides(name, max_update, extra)
        run_dir = Path(overrides[1].removeprefix("run_dir="))
        recipe_path = str(ROOT / "recipes" / recipe)
        shared = self.study.out / f"dense-s{self.args.seed}" / "data"
        if not (run_dir / "data").exists() and shared.is_dir():
            shutil.copytree(shared, run_dir / "data")  # the same data config: prep is a no-op
        self.study.moemt("prep", recipe_path, *overrides, locked=True)
        if _updates(run_dir) < max_update:
            started = (run_dir / "checkpoints" / "checkpoint_last.pt").is_file()
            # --finetune-from on a started run would set its checkpoints aside and start over.
            start = () if finetune_from is None or started else ("--finetune-from", finetune_from)
            self.study.moemt("train", recipe_path, *overrides, *start, locked=True)
        return {
            "name": name,
            "dir": str(run_dir),
            "recipe": recipe_path,
            "overrides": overrides,
            "updates": _updates(run_dir),
            **{key: _summary(run_dir)[key] for key in ("wall_seconds", "cpu_seconds")},
        }

    def evaluate(self, run: dict) -> None:
        if not (Path(run["dir"]) / "eval" / "test" / "report.json").is_file():
            self.study.moemt("eval", run["recipe"], *run["overrides"], locked=True)

    def compare(self, name: str, *runs: str) -> None:
        out = self.study.out / name
        if not (out / "compare.json").is_file():
            self.study.moemt("compare", *runs, "--out", str(out), locked=True)


def equal_time_updates(continued: dict, upcycled: dict, added: int) -> int:
    """The update at which the dense continuation, at its pace over its first ``added`` updates,
    has trained as long (wall-clock) as the upcycled run did for its ``added``."""
    pace = _wall_at(Path(continued["dir"]), added) / added
    return max(added, round(_wall_at(Path(upcycled["dir"]), added) / pace))


def _wall_at(run_dir: Path, updates: int) -> float:
    """Training wall-clock seconds up to ``updates``: the validation there (its cumulative time),
    else the whole run's when it stopped there."""
    for validation in _summary(run_dir)["valid_history"]:
        if int(validation.get("num_updates", -1)) == updates:  # the log's values are strings
            return float(validation["wall_seconds"])
    summary = _summary(run_dir)
    if _updates(run_dir) != updates:
        raise SystemExit(f"{run_dir}: no validation at update {updates}")
    return float(summary["wall_seconds"])


def valid_curves(runs: list[dict], dense_updates: int) -> dict:
    """Each run's validations: (updates since the run's start, since scratch, loss, wall s)."""
    continuing = {"dense-continued", "upcycled"}
    return {
        run["name"]: [
            {
                "updates": int(v["num_updates"]),
                "total_updates": int(v["num_updates"])
                + (dense_updates if run["name"] in continuing else 0),
                "loss": float(v["loss"]),
                "wall_seconds": v["wall_seconds"],
            }
            for v in _summary(Path(run["dir"]))["valid_history"]
        ]
        for run in runs
    }


def plot_curves(curves: dict, path: Path) -> None:
    """Validation loss against updates from scratch, one line per run (the continued and the
    upcycled runs start at the dense run's last point); moemt compare's own plots count each
    run's updates from its own start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    start = curves["dense"][-1]
    for name, curve in curves.items():
        points = [p for p in curve if p["updates"] > 0]
        if name in ("dense-continued", "upcycled"):
            points = [start, *points]
        ax.plot(
            [p["total_updates"] for p in points], [p["loss"] for p in points], marker="o",
            label=name,
        )  # fmt: skip
    ax.set_xlabel("updates from scratch")
    ax.set_ylabel("validation loss (label-smoothed CE, base 2)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def study_markdown(out: Path, summary: dict) -> str:
    lines = [
        "# Upcycling and NLLB-MoE's regularisers (Multi30k En-De, demo backbone)",
        "",
        f"## Equal added updates\n\n{(out / 'compare-upcycle-updates' / 'compare.md').read_text()}",
        f"## Equal added time (dense continued to update {summary['equal_time_updates']})\n\n"
        f"{(out / 'compare-upcycle-time' / 'compare.md').read_text()}",
        f"## Regularisers at equal updates\n\n"
        f"{(out / 'compare-regularisers' / 'compare.md').read_text()}",
        "## Validation loss (updates from scratch: loss, training wall s)",
        "",
    ]
    curves = summary["curves"]
    points = sorted({p["total_updates"] for c in curves.values() for p in c})
    lines += ["| updates | " + " | ".join(curves) + " |", "| --- |" + " --- |" * len(curves)]
    for u in points:
        cells = []
        for curve in curves.values():
            hit = [p for p in curve if p["total_updates"] == u]
            cells.append(f"{hit[-1]['loss']:.3f} ({hit[-1]['wall_seconds']:.0f})" if hit else "")
        lines.append(f"| {u} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _summary(run_dir: Path) -> dict:
    path = run_dir / "logs" / "train_summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _updates(run_dir: Path) -> int:
    return int(_summary(run_dir).get("num_updates") or 0)


if __name__ == "__main__":
    sys.exit(main())
