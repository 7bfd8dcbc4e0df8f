"""The quality study: do the MoE families beat dense at equal cost on Multi30k En-De?

Every family trains on the same prepared data (Multi30k En-De from ../shared/data, one joint
8k sentencepiece model), with the same backbone (the demo Transformer: 3+3 layers, d=256,
FFN 1024, 4 heads, so equal active compute per token except THOR's second pass) and the same
settings as its shipped demo recipe (recipes/demo*.yaml, chosen on the demo's *valid* split;
nothing here is tuned on test), under the same wall-clock budget on an otherwise idle machine
(``train.max_time_minutes``; CPU seconds are recorded too). Then it reports two views:

- equal time: each run's last checkpoint, ``moemt compare`` against dense;
- equal updates: every run's checkpoint at U updates, U the fewest any run reached (THOR's two
  passes cost about twice per update), rounded down to the checkpoint interval.

Runs, their evaluations and the comparisons are ordinary moemt run directories under --out;
rerunning the script skips what is finished (a killed training resumes). With --lock PATH each
training and evaluation holds an exclusive lock on PATH, so that nothing else sharing the
machine's cores and honouring the same lock runs beside it.

    python benchmarks/quality.py --minutes 6 --out runs/quality --lock /tmp/moemt-cpu.lock
    python benchmarks/quality.py --tiny --out /tmp/q   # a few updates each: the pipeline only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from moe_mt.locking import exclusive

ROOT = Path(__file__).resolve().parent.parent
MULTI30K = ROOT.parent / "shared" / "data" / "multi30k_en_de"


@dataclass(frozen=True)
class Family:
    name: str
    recipe: str  # the shipped demo recipe whose model and training settings it takes
    overrides: tuple[str, ...] = ()


FAMILIES = (
    Family("dense", "demo.yaml"),
    Family("switch8", "demo_switch.yaml"),  # 8 experts, top-1, capacity 1.25
    Family("thor2", "demo_thor.yaml", ("model.moe.num_experts=2",)),
    Family("thor4", "demo_thor.yaml"),  # 4 experts
    Family("mhmoe", "demo_mhmoe.yaml"),  # 8 experts, 4 sub-tokens, top-2
    Family("xmoe", "demo_xmoe.yaml"),  # 8 experts, cosine router
    Family("softmoe", "demo_soft_moe.yaml"),  # 8 experts x 1 slot, encoder only
)

# A few updates with a tiny model (two layers: the MoE families put experts in layer 1): checks
# the pipeline, not the question.
TINY = (
    "model.encoder_layers=2", "model.decoder_layers=2", "model.embed_dim=64",
    "model.ffn_embed_dim=128", "model.attention_heads=2", "data.spm.vocab_size=1000",
    "train.max_update=20", "train.warmup_updates=10", "train.max_tokens=2048",
    "eval.beam=1", "eval.thor_draws=1", "eval.max_len_b=5", "eval.max_len_a=1.0",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/quality", help="study directory")
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="training seeds")
    parser.add_argument(
        "--families", nargs="+", default=[f.name for f in FAMILIES], help="families to run"
    )
    parser.add_argument("--checkpoint-interval", type=int, default=200, help="updates")
    parser.add_argument("--data", default=str(MULTI30K), help="Multi30k En-De directory")
    parser.add_argument("--lock", help="hold an exclusive lock on this file while training")
    parser.add_argument("--tiny", action="store_true", help="a few updates per run (tests)")
    parser.add_argument("--moemt", default=str(Path(sys.executable).with_name("moemt")))
    args = parser.parse_args(argv)

    known = {f.name: f for f in FAMILIES}
    unknown = [name for name in args.families if name not in known]
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(known)}")
    if "dense" not in args.families:
        parser.error("the study compares against dense: keep it in --families")
    data = checked_data(parser, args.data)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    study = Study(args, out, data)
    runs = [
        study.run(known[name], seed) for seed in args.seeds for name in args.families
    ]  # dense first for each seed: it prepares the data the others copy
    updates = min(r["updates"] for r in runs)
    equal_updates = (updates // args.checkpoint_interval) * args.checkpoint_interval
    if args.tiny:
        equal_updates = updates
    for run in runs:
        study.evaluate_at(run, equal_updates)
    baseline = runs[0]["dir"]
    names = [r["dir"] for r in runs]
    study.moemt("compare", *names, "--baseline", baseline, "--out", str(out / "compare-time"))
    study.moemt(
        "compare", *names, "--baseline", baseline, "--out", str(out / "compare-updates"),
        "--eval-name", f"test@u{equal_updates}",
    )  # fmt: skip
    summary = summarise(out, runs, equal_updates, args)
    (out / "study.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "study.md").write_text(study_markdown(out, summary), encoding="utf-8")
    print(f"wrote {out / 'study.md'}")
    return 0


def checked_data(parser: argparse.ArgumentParser, path: str) -> Path:
    """The Multi30k En-De directory ``path``, resolved; a missing split file is a usage error."""
    data = Path(path).resolve()
    for split in ("train", "valid", "test"):
        for lang in ("en", "de"):
            if not (data / f"{split}.{lang}").is_file():
                parser.error(f"{data / f'{split}.{lang}'}: missing (Multi30k En-De)")
    return data


class Study:
    def __init__(self, args, out: Path, data: Path):
        self.args, self.out, self.data = args, out, data

    def moemt(self, *command: str, locked: bool = False) -> None:
        with self._lock() if locked else contextlib.nullcontext():
            print("+ moemt " + " ".join(command), flush=True)
            subprocess.run([self.args.moemt, *command], check=True)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        if not self.args.lock:
            yield
            return
        with open(self.args.lock, "a") as handle, exclusive(handle, RuntimeError, wait=True):
            yield

    def overrides(
        self, family: Family, seed: int, run_dir: Path, max_update: int | None = None
    ) -> list[str]:
        """The run's overrides; its budget: --minutes of wall-clock (with --tiny: TINY's few
        updates), or ``max_update`` updates (with --tiny: TINY's small model)."""
        if max_update is None:
            budget = (
                list(TINY)
                if self.args.tiny
                else ["train.max_update=0", f"train.max_time_minutes={self.args.minutes}"]
            )
        else:
            tiny = TINY if self.args.tiny else ()
            budget = [o for o in tiny if not o.startswith("train.max_update=")]
            budget.append(f"train.max_update={max_update}")
        return [
            f"name={run_dir.name}",
            f"run_dir={run_dir}",
            *(f"data.{split}={self.data / split}" for split in ("train", "valid", "test")),
            f"train.seed={seed}",
            f"train.save_interval_updates={self.args.checkpoint_interval}",
            "train.keep_interval_updates=-1",  # every interval checkpoint: equal-updates view
            f"train.validate_interval_updates={self.args.checkpoint_interval}",
            *family.overrides,
            *budget,
        ]

    def run(self, family: Family, seed: int) -> dict:
        """Prepare, train (the --minutes budget) and evaluate one run; its record."""
        run = self.train(family, seed)
        self.evaluate(run)
        return run

    def train(self, family: Family, seed: int, max_update: int | None = None) -> dict:
        """Prepare and train one run (resuming a killed one): for the --minutes budget, or up
        to ``max_update`` updates, where a run already there is not started again (a start adds
        its seconds to the run's wall-clock). Its record."""
        run_dir = self.out / f"{family.name}-s{seed}"
        recipe = str(ROOT / "recipes" / family.recipe)
        overrides = self.overrides(family, seed, run_dir, max_update)
        shared = self.out / f"dense-s{self.args.seeds[0]}" / "data"
        if not (run_dir / "data").exists() and shared.is_dir():
            shutil.copytree(shared, run_dir / "data")  # same data config: prep is then a no-op
        self.moemt("prep", recipe, *overrides)
        summary = run_dir / "logs" / "train_summary.json"
        if (
            max_update is None
            or not summary.is_file()
            or int(json.loads(summary.read_text())["num_updates"] or 0) < max_update
        ):
            self.moemt("train", recipe, *overrides, locked=True)
        train = json.loads(summary.read_text())
        return {
            "family": family.name,
            "seed": seed,
            "dir": str(run_dir),
            "recipe": recipe,
            "overrides": overrides,
            "updates": train["num_updates"],
        }

    def evaluate(self, run: dict) -> None:
        """``moemt eval`` of the run's last checkpoint (eval/test), unless it has a report."""
        if not (Path(run["dir"]) / "eval" / "test" / "report.json").is_file():
            self.moemt("eval", run["recipe"], *run["overrides"], locked=True)

    def evaluate_at(self, run: dict, updates: int) -> None:
        run_dir = Path(run["dir"])
        name = f"test@u{updates}"
        if (run_dir / "eval" / name / "report.json").is_file():
            return
        if updates == run["updates"]:
            checkpoint = "last"
        else:
            matches = sorted((run_dir / "checkpoints").glob(f"checkpoint_*_{updates}.pt"))
            if not matches:
                raise SystemExit(f"{run_dir}: no checkpoint at update {updates}")
            checkpoint = str(matches[0])
        self.moemt(
            "eval", run["recipe"], *run["overrides"], f"eval.checkpoint={checkpoint}",
            f"eval.name={name}", locked=True,
        )  # fmt: skip


def summarise(out: Path, runs: list[dict], equal_updates: int, args) -> dict:
    views = {}
    for view in ("time", "updates"):
        result = json.loads((out / f"compare-{view}" / "compare.json").read_text())
        by_family: dict[str, list[dict]] = {}
        for row, run in zip(result["runs"], runs, strict=True):
            by_family.setdefault(run["family"], []).append(row)
        views[view] = {
            family: {
                "seeds": len(rows),
                **{
                    metric: _mean_sd([r["scores"][metric] for r in rows])
                    for metric in ("BLEU", "chrF2", "TER")
                },
                "checkpoint_updates": [r["checkpoint_updates"] for r in rows],
                "train_cpu_seconds": [r["train_cpu_seconds"] for r in rows],
            }
            for family, rows in by_family.items()
        }
    return {
        "budget_minutes": None if args.tiny else args.minutes,
        "tiny": args.tiny,
        "seeds": args.seeds,
        "equal_updates": equal_updates,
        "data": str(args.data),
        "runs": runs,
        "views": views,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _mean_sd(values: list[float]) -> dict:
    return {
        "mean": round(statistics.fmean(values), 2),
        "sd": round(statistics.stdev(values), 2) if len(values) > 1 else None,
    }


def study_markdown(out: Path, summary: dict) -> str:
    budget = "tiny" if summary["tiny"] else f"{summary['budget_minutes']} min wall-clock per run"
    lines = [
        f"# Quality study ({budget}; seeds {summary['seeds']})",
        "",
        f"## Equal time: last checkpoints\n\n{(out / 'compare-time' / 'compare.md').read_text()}",
        f"## Equal updates: checkpoints at update {summary['equal_updates']}\n\n"
        f"{(out / 'compare-updates' / 'compare.md').read_text()}",
        "## Per family (mean and, with several seeds, standard deviation of test BLEU)",
        "",
        "| family | seeds | BLEU equal time | BLEU equal updates |",
        "| --- | --- | --- | --- |",
    ]
    for family, row in summary["views"]["time"].items():
        at_updates = summary["views"]["updates"][family]["BLEU"]
        lines.append(f"| {family} | {row['seeds']} | {_cell(row['BLEU'])} | {_cell(at_updates)} |")
    return "\n".join(lines) + "\n"


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.2f}" + ("" if stat["sd"] is None else f" ± {stat['sd']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
