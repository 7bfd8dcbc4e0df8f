"""The methods study: the MoE methods of 2024-2026 (docs/methods.md) against dense and Switch.

The method of the quality study (benchmarks/quality.py: Multi30k En-De from ../shared/data, one
joint 8k sentencepiece model prepared once and copied to every run, the demo backbone 3+3 layers,
d=256, FFN 1024, 4 heads, each recipe's demo settings, beam 5, ``moemt compare``'s paired
bootstrap), at a fixed update budget (``--updates``, default 1,000) and over seeds 1 and 2:

- ``dense``: recipes/demo.yaml;
- ``switch8``: recipes/demo_switch.yaml (8 experts, top-1, balance loss 0.01);
- ``deepseek``: recipes/demo_deepseek.yaml (32 quarter-width experts, top-3, a shared expert,
  sigmoid scores, bias balancing, the sequence-wise loss);
- ``switch8-bias``: recipes/demo_switch.yaml + recipes/pieces/moe/bias_balance.yaml (bias
  balancing, no balance loss);
- ``ec8``: recipes/demo_expert_choice.yaml (expert choice in encoder layer 1, c = 1);
- ``dense-wide``: the dense demo with ``model.ffn_embed_dim`` the multiple of 8 whose total
  parameter count is closest to the Switch demo's (Chirkova et al. 2024, arXiv 2407.01126),
  computed from the model summary once the first dense run has prepared the data.

Two views, each with the paired bootstrap per seed against the right baseline: every MoE run
and dense-wide against dense; switch8-bias, deepseek and ec8 against switch8; switch8 against
dense-wide.

- equal updates: every run's checkpoint at ``--updates``;
- equal time: per seed, every run trained as long (wall-clock) as that seed's slowest run took
  for ``--updates``: a faster run is resumed up to the update at which its own pace over the
  first ``--updates`` reaches that time (upcycling_study.equal_time_updates' rule); its last
  checkpoint. (Adding a family to a finished study can raise a seed's time: its runs are then
  trained further and their last checkpoints evaluated again.)

Also: each run's validation-loss curve (logs/train_summary.json), each family's mean and standard
deviation over the seeds, and for the MoE runs the load of every MoE layer's experts (max/mean of
the token assignments) at each interval checkpoint, from a teacher-forced pass over a fixed set
of ``--probe-batches`` batches of the valid split with that checkpoint loaded; and the goal row:
bias balancing without a balance loss within 10% of Switch's max/mean load, by update 1,000.

Writes into --out: the runs (ordinary moemt run directories), ``compare-{time,updates}`` (every
run against dense-s1, as quality.py), ``pairs-{view}-vs-{baseline}-s{seed}`` (the paired
bootstraps), ``expert-load/RUN.json``, ``wide_dense.json``, ``study.json``, ``study.md`` (a
block for docs/benchmarks.md, the command at its top), ``valid_loss.png`` and
``expert_load.png``. Rerunning skips what is finished and resumes a killed training; with
``--lock PATH`` every training, evaluation, probe and comparison holds an exclusive lock on PATH.

    nice -n 5 python benchmarks/methods_study.py --out runs/methods --lock /tmp/moemt-cpu.lock
    python benchmarks/methods_study.py --tiny --out /tmp/m   # a few updates each: the pipeline
    python benchmarks/methods_study.py --width-only          # the wide dense width; no training
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import (  # noqa: E402  (the quality study's runner, lock and summary)
    MULTI30K,
    ROOT,
    Family,
    Study,
    _cell,
    _mean_sd,
    checked_data,
    summarise,
)
from upcycling_study import _summary, _wall_at  # noqa: E402

BIAS_BALANCE_PIECE = ROOT / "recipes" / "pieces" / "moe" / "bias_balance.yaml"
WIDE = "dense-wide"  # its Family is built at run time: its width is computed (wide_dense)
FAMILIES = (
    Family("dense", "demo.yaml"),
    Family("switch8", "demo_switch.yaml"),  # 8 experts, top-1, capacity 1.25, balance loss
    Family("deepseek", "demo_deepseek.yaml"),  # 32 experts of width 256, top-3, 1 shared
    Family("switch8-bias", "demo_switch.yaml", (str(BIAS_BALANCE_PIECE),)),  # no balance loss
    Family("ec8", "demo_expert_choice.yaml"),  # encoder layer 1 only, c = 1
)
NAMES = (*(f.name for f in FAMILIES), WIDE)
MOE = ("switch8", "deepseek", "switch8-bias", "ec8")
#: (baseline, systems): the paired bootstraps, per seed and view.
COMPARISONS = (
    ("dense", ("switch8", "deepseek", "switch8-bias", "ec8", WIDE)),
    ("switch8", ("switch8-bias", "deepseek", "ec8")),
    (WIDE, ("switch8",)),
)
METRICS = ("BLEU", "chrF2", "TER")
SIGNIFICANCE = 0.05  # moemt compare's
#: The goal: bias balancing without a balance loss, max/mean load within 10% of Switch's.
GOAL = {"system": "switch8-bias", "reference": "switch8", "update": 1000, "tolerance": 0.10}
WIDTH_MULTIPLE = 8
CHECKPOINT = re.compile(r"checkpoint_\d+_(\d+)\.pt")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/methods", help="study directory")
    parser.add_argument(
        "--updates", type=int, help="update budget of every run (default 1000; --tiny 20)"
    )
    parser.add_argument(
        "--checkpoint-interval", type=int,
        help="updates between checkpoints, validations and load probes (default 100; --tiny 10)",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="training seeds")
    parser.add_argument("--families", nargs="+", default=list(NAMES), choices=NAMES)
    parser.add_argument(
        "--probe-batches", type=int, default=32,
        help="valid batches (evenly spaced over the length-sorted split) of each load probe",
    )  # fmt: skip
    parser.add_argument("--data", default=str(MULTI30K), help="Multi30k En-De directory")
    parser.add_argument("--lock", help="hold an exclusive lock on this file for each step")
    parser.add_argument("--tiny", action="store_true", help="a few updates per run (pipeline)")
    parser.add_argument(
        "--width-only", action="store_true",
        help="print the wide dense width and the parameter totals, and stop (builds the "
        "models only, trains nothing)",
    )  # fmt: skip
    parser.add_argument("--moemt", default=str(Path(sys.executable).with_name("moemt")))
    parser.set_defaults(minutes=None)  # quality.summarise's budget: updates here, not minutes
    args = parser.parse_args(argv)
    if args.updates is None:
        args.updates = 20 if args.tiny else 1000
    if args.checkpoint_interval is None:
        args.checkpoint_interval = 10 if args.tiny else 100
    if args.updates % args.checkpoint_interval:
        parser.error("--updates must be a multiple of --checkpoint-interval (equal updates view)")
    if "dense" not in args.families:
        parser.error("the study compares against dense: keep it in --families")
    order = [name for name in NAMES if name in args.families]  # dense first: it prepares
    data = checked_data(parser, args.data)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    study = MethodsStudy(args, out, data)
    known = {f.name: f for f in FAMILIES}

    if args.width_only:
        wide = wide_dense(study, args.seeds[0])
        print(json.dumps(wide, indent=2))
        return 0

    runs: list[dict] = []
    equal_time: dict[int, dict] = {}
    wide: dict | None = None
    for seed in args.seeds:
        seeded = []
        for name in order:
            if name == WIDE and wide is None:
                wide = wide_dense(study, args.seeds[0])  # the first dense run's dictionaries
                (out / "wide_dense.json").write_text(json.dumps(wide, indent=2) + "\n")
                print(f"wide dense: {wide['line']}", flush=True)
            family = wide_family(wide["ffn_embed_dim"]) if name == WIDE else known[name]
            seeded.append((family, study.train(family, seed, args.updates)))
        walls = {run["family"]: _wall_at(Path(run["dir"]), args.updates) for _, run in seeded}
        targets = equal_time_targets(walls, args.updates)
        equal_time[seed] = {"wall_seconds_at_updates": walls, "updates": targets}
        for family, _ in seeded:  # a run already there is not started again
            runs.append(study.train(family, seed, targets[family.name]))

    for run in runs:
        evaluate_last(study, run)
        study.evaluate_at(run, args.updates)
    loads = {}
    for run in runs:
        if run["family"] in MOE:
            probe = probe_run(study, run, args.probe_batches)
            loads.setdefault(run["family"], {})[str(run["seed"])] = probe

    names = [r["dir"] for r in runs]
    baseline = runs[0]["dir"]  # dense-s{first seed}, as quality.py
    view_eval = {"time": None, "updates": f"test@u{args.updates}"}
    for view, eval_name in view_eval.items():
        named = ("--eval-name", eval_name) if eval_name else ()
        study.moemt(
            "compare", *names, "--baseline", baseline, "--out", str(out / f"compare-{view}"),
            *named, locked=True,
        )  # fmt: skip
        for base, systems in COMPARISONS:
            for seed in args.seeds:
                found = {r["family"]: r["dir"] for r in runs if r["seed"] == seed}
                present = [found[s] for s in systems if s in found]
                if base in found and present:
                    study.moemt(
                        "compare", *present, "--baseline", found[base],
                        "--out", str(out / f"pairs-{view}-vs-{base}-s{seed}"), *named,
                        locked=True,
                    )  # fmt: skip

    summary = summarise(out, runs, args.updates, args)
    summary.update(
        command="python benchmarks/methods_study.py " + shlex.join(argv),
        updates=args.updates,
        checkpoint_interval=args.checkpoint_interval,
        probe_batches=args.probe_batches,
        wide_dense=wide,
        equal_time=equal_time,
        pairs={view: pairs(out, view, args.seeds, summary["views"][view]) for view in view_eval},
        curves=valid_curves(runs),
        expert_load=loads,
        goal=goal_row(loads, **GOAL),
    )
    (out / "study.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "study.md").write_text(study_markdown(out, summary), encoding="utf-8")
    plot_curves(summary["curves"], out / "valid_loss.png")
    plot_loads(loads, out / "expert_load.png")
    print(summary["goal"]["line"])
    print(f"wrote {out / 'study.md'}")
    return 0


# ---------------------------------------------------------------------------- the wide control


class MethodsStudy(Study):
    """quality.py's runner, with each family's own overrides last: the wide control's
    ``model.ffn_embed_dim`` wins over --tiny's."""

    def overrides(
        self, family: Family, seed: int, run_dir: Path, max_update: int | None = None
    ) -> list[str]:
        common = super().overrides(family, seed, run_dir, max_update)
        return [*(o for o in common if o not in family.overrides), *family.overrides]


def wide_family(width: int) -> Family:
    return Family(WIDE, "demo.yaml", (f"model.ffn_embed_dim={width}",))


def wide_dense(study: MethodsStudy, seed: int) -> dict:
    """The dense demo's FFN width (a multiple of 8) whose total parameter count is closest to the
    Switch demo's, with the study's overrides (data, --tiny's model) and the dictionaries that
    ``dense-s{seed}`` prepared (before its prep, a stand-in of data.spm.vocab_size symbols: the
    chosen width is the same, the embeddings being the same in both models)."""
    from moe_mt.config import load_config
    from moe_mt.workflows.train.model_summary import model_summary

    run_dir = study.out / f"dense-s{seed}"

    def parameters(family: Family) -> int:
        overrides = study.overrides(family, seed, run_dir, study.args.updates)
        return int(model_summary(load_config(ROOT / "recipes" / family.recipe, overrides))[
            "parameters"
        ])  # fmt: skip

    known = {f.name: f for f in FAMILIES}
    switch, dense = parameters(known["switch8"]), parameters(known["dense"])
    totals: dict[int, int] = {}

    def wide_total(width: int) -> int:
        if width not in totals:
            totals[width] = parameters(wide_family(width))
        return totals[width]

    width = closest_width(wide_total, switch, WIDTH_MULTIPLE)
    prepared = (run_dir / "data" / "bin").is_dir()
    result = {
        "ffn_embed_dim": width,
        "parameters": wide_total(width),
        "switch_parameters": switch,
        "dense_parameters": dense,
        "difference": wide_total(width) - switch,
        "dictionaries": f"prepared ({run_dir.name})" if prepared else "stand-in (not prepared)",
    }
    result["line"] = (
        f"model.ffn_embed_dim={width}: {result['parameters']:,} parameters, Switch demo "
        f"{switch:,} ({result['difference']:+,}), dense demo {dense:,}"
    )
    return result


def closest_width(total: Callable[[int], int], target: int, multiple: int = WIDTH_MULTIPLE) -> int:
    """The multiple of ``multiple`` whose ``total(width)`` is closest to ``target`` (the smaller
    width on a tie); ``total`` grows linearly with the width (a dense FFN's weights and biases),
    so two evaluations place it and two more decide."""
    a, b = multiple, 2 * multiple
    slope = (total(b) - total(a)) / (b - a)
    if slope <= 0:
        raise ValueError("the parameter count does not grow with the FFN width")
    guess = a + (target - total(a)) / slope
    low = max(multiple, int(guess // multiple) * multiple)
    return min((low, low + multiple), key=lambda w: (abs(total(w) - target), w))


# ---------------------------------------------------------------------------- equal time


def equal_time_targets(walls: dict[str, float], updates: int) -> dict[str, int]:
    """Per run (its training wall-clock seconds at ``updates``): the update at which, at its own
    pace over those updates, it has trained as long as the slowest run did for ``updates``."""
    budget = max(walls.values())
    return {name: max(updates, round(budget * updates / wall)) for name, wall in walls.items()}


def evaluate_last(study: Study, run: dict) -> None:
    """``moemt eval`` of the run's last checkpoint, unless its report already scored a
    checkpoint of the run's update count (a run trained further since is evaluated again)."""
    report = Path(run["dir"]) / "eval" / "test" / "report.json"
    if report.is_file():
        scored = (json.loads(report.read_text()).get("checkpoint") or {}).get("num_updates")
        if scored == run["updates"]:
            return
    study.moemt("eval", run["recipe"], *run["overrides"], locked=True)


# ---------------------------------------------------------------------------- expert load


def max_over_mean(counts: Sequence[float]) -> float | None:
    """The busiest expert's load over the mean load (1.0: balanced); None without any load."""
    total = float(sum(counts))
    if not counts or total <= 0:
        return None
    return round(max(counts) * len(counts) / total, 4)


def layer_loads(batches: Iterable[Iterable[tuple[str, Sequence[float]]]]) -> dict[str, dict]:
    """Per MoE layer (in order of first appearance), from each batch's ``(layer, load per
    expert)``: the loads summed over the batches, their max/mean, and the mean over the batches
    of each batch's max/mean."""
    totals: dict[str, list[float]] = {}
    per_batch: dict[str, list[float]] = {}
    for batch in batches:
        for name, counts in batch:
            counts = [float(c) for c in counts]
            total = totals.setdefault(name, [0.0] * len(counts))
            if len(total) != len(counts):
                raise ValueError(f"{name}: {len(counts)} experts, earlier {len(total)}")
            for i, c in enumerate(counts):
                total[i] += c
            ratio = max_over_mean(counts)
            if ratio is not None:
                per_batch.setdefault(name, []).append(ratio)
    return {
        name: {
            "experts": len(total),
            "assignments": round(sum(total)),
            "tokens_per_expert": [round(c) for c in total],
            "max_over_mean": max_over_mean(total),
            "batch_max_over_mean": (
                round(statistics.fmean(per_batch[name]), 4) if per_batch.get(name) else None
            ),
        }
        for name, total in totals.items()
    }


def spread(items: Sequence, n: int) -> list:
    """``n`` items evenly spaced over ``items``, first and last included (all when there are
    no more than ``n``; ``n`` <= 0: all)."""
    if n <= 0 or len(items) <= n:
        return list(items)
    if n == 1:
        return [items[len(items) // 2]]
    return [items[i * (len(items) - 1) // (n - 1)] for i in range(n)]


def saved_checkpoints(checkpoints: Path, last_updates: int) -> dict[int, Path]:
    """Update -> checkpoint: every interval checkpoint (``checkpoint_E_U.pt``), and the last one
    where no interval checkpoint has its update."""
    found = {}
    for path in checkpoints.glob("checkpoint_*_*.pt"):
        match = CHECKPOINT.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    last = checkpoints / "checkpoint_last.pt"
    if last_updates not in found and last.is_file():
        found[last_updates] = last
    return dict(sorted(found.items()))


def probe_run(study: Study, run: dict, num_batches: int) -> dict:
    """The run's expert loads at each saved checkpoint (``study.out/expert-load/RUN.json``,
    extended as checkpoints appear; probed under the lock)."""
    from moe_mt.config import load_config

    run_dir = Path(run["dir"])
    path = study.out / "expert-load" / f"{run_dir.name}.json"
    settings = {
        "split": "valid",
        "batches": num_batches,
        "max_tokens": int(load_config(run_dir).train.max_tokens),  # as training batches
    }
    record = json.loads(path.read_text()) if path.is_file() else {}
    done = record.get("checkpoints", {}) if record.get("settings") == settings else {}
    wanted = saved_checkpoints(run_dir / "checkpoints", int(run["updates"]))
    missing = {u: p for u, p in wanted.items() if str(u) not in done}
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        with study._lock():
            for updates, checkpoint in missing.items():
                print(f"+ load probe {run_dir.name} {checkpoint.name} (update {updates})")
                done[str(updates)] = {
                    "checkpoint": checkpoint.name,
                    **teacher_forced_loads(run_dir, checkpoint, settings),
                }
                record = {"settings": settings, "checkpoints": done}
                path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    checkpoints = {u: done[str(u)] for u in wanted}
    return {"settings": settings, "checkpoints": {str(u): c for u, c in checkpoints.items()}}


def teacher_forced_loads(run_dir: Path, checkpoint: Path, settings: dict) -> dict:
    """Every MoE layer's expert loads (``MoEStats.tokens_per_expert``: assignments, no capacity
    in eval mode) in a teacher-forced pass of ``checkpoint`` over ``settings['batches']``
    batches of the split, evenly spaced over its length-sorted batches."""
    import torch
    from routing_decode import batches as split_batches  # fairseq's batching of a split

    from moe_mt.models.moe_layers import collect_moe_outputs
    from moe_mt.workflows.translate.translator import DecodeOptions, Translator

    translator = Translator.load(run_dir, checkpoint, DecodeOptions())
    model, task = translator.models[0], translator.task
    _, items = split_batches(task, settings["split"], settings["max_tokens"], None)
    chosen = spread(items, settings["batches"])
    per_batch, tokens = [], 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for sample in chosen:
            net = {k: v.to(device) for k, v in sample["net_input"].items()}
            with collect_moe_outputs() as outs:
                model(**net)
            per_batch.append(
                [(o.name, o.output.stats.tokens_per_expert.float().cpu().tolist()) for o in outs]
            )
            tokens += int(sample["ntokens"])
    return {
        "updates": translator.num_updates,
        "batches": len(chosen),
        "target_tokens": tokens,
        "layers": layer_loads(per_batch),
    }


def nearest(updates: Iterable[int], target: int) -> int:
    """The update nearest ``target`` (the earlier on a tie)."""
    return min(updates, key=lambda u: (abs(u - target), u))


def load_at(probe: dict, target: int) -> tuple[int, float | None]:
    """(checkpoint update nearest ``target``, mean over the MoE layers of max/mean load)."""
    checkpoints = probe["checkpoints"]
    if not checkpoints:
        return target, None
    at = nearest((int(u) for u in checkpoints), target)
    ratios = [
        layer["max_over_mean"]
        for layer in checkpoints[str(at)]["layers"].values()
        if layer["max_over_mean"] is not None
    ]
    return at, (round(statistics.fmean(ratios), 4) if ratios else None)


def goal_row(
    loads: dict, system: str, reference: str, update: int, tolerance: float
) -> dict:  # fmt: skip
    """``system``'s max/mean expert load (mean over layers and seeds, at each run's checkpoint
    nearest ``update``) against ``reference``'s: met when at most ``1 + tolerance`` times it
    (lower is better balanced; better than the reference meets it)."""
    row: dict = {"system": system, "reference": reference, "update": update}
    for role, family in (("system", system), ("reference", reference)):
        at = {seed: load_at(probe, update) for seed, probe in loads.get(family, {}).items()}
        values = [v for _, v in at.values() if v is not None]
        row[f"{role}_checkpoints"] = {seed: u for seed, (u, _) in at.items()}
        row[f"{role}_max_over_mean"] = round(statistics.fmean(values), 4) if values else None
    sys_, ref = row["system_max_over_mean"], row["reference_max_over_mean"]
    claim = (
        f"{system} (bias balancing, no balance loss) max/mean expert load within "
        f"{tolerance:.0%} of {reference}'s (its balance loss) by update {update:,}"
    )
    if sys_ is None or ref is None:
        row.update(ratio=None, met=None, line=f"goal: {claim}: NOT MEASURED (runs missing)")
        return row
    row["ratio"] = round(sys_ / ref, 4)
    row["met"] = row["ratio"] <= 1 + tolerance
    checkpoints = sorted(
        {*row["system_checkpoints"].values(), *row["reference_checkpoints"].values()}
    )
    row["line"] = (
        f"goal: {claim}: {'PASS' if row['met'] else 'FAIL'}: {system} {sys_:.3f}, {reference} "
        f"{ref:.3f}, ratio {row['ratio']:.3f} (limit {1 + tolerance:.2f}; mean over MoE layers "
        f"and seeds at checkpoint update(s) {', '.join(map(str, checkpoints))})"
    )
    return row


# ---------------------------------------------------------------------------- reports


def pairs(out: Path, view: str, seeds: list[int], families: dict) -> list[dict]:
    """Each (system, baseline) of COMPARISONS: per seed the paired bootstrap of its
    ``pairs-{view}-vs-{baseline}-s{seed}`` table; the mean and sd over seeds of the difference;
    ``claim`` per metric: every seed's p < 0.05 with a difference of one sign, and the mean
    difference outside both families' seed-to-seed sd."""
    found = []
    for base, systems in COMPARISONS:
        for system in systems:
            per_seed = {}
            for seed in seeds:
                path = out / f"pairs-{view}-vs-{base}-s{seed}" / "compare.json"
                if not path.is_file():
                    continue
                rows = {r["name"]: r for r in json.loads(path.read_text())["runs"]}
                row = rows.get(f"{system}-s{seed}")
                if row is None:
                    continue
                bootstrap = next(iter(row["bootstrap"].values()))  # the one direction, en-de
                per_seed[str(seed)] = {m: pair_cell(bootstrap[m]) for m in METRICS}
            if per_seed:
                found.append(pair_summary(system, base, per_seed, families))
    return found


def pair_cell(bootstrap: dict) -> dict:
    return {
        "system": bootstrap["system"],
        "baseline": bootstrap["baseline"],
        "delta": round(bootstrap["system"] - bootstrap["baseline"], 2),
        "system_mean": bootstrap["system_mean"],
        "system_ci95": bootstrap["system_ci95"],
        "p_value": bootstrap["p_value"],
    }


def pair_summary(system: str, base: str, per_seed: dict, families: dict) -> dict:
    """The mean difference over seeds and whether it is a claim (see :func:`pairs`)."""
    mean_delta, claim = {}, {}
    for metric in METRICS:
        deltas = [cells[metric]["delta"] for cells in per_seed.values()]
        mean_delta[metric] = _mean_sd(deltas)
        significant = all(
            c[metric]["p_value"] is not None and c[metric]["p_value"] < SIGNIFICANCE
            for c in per_seed.values()
        )
        one_sign = all(d > 0 for d in deltas) or all(d < 0 for d in deltas)
        spreads = [
            (families.get(f) or {}).get(metric, {}).get("sd") for f in (system, base)
        ]  # fmt: skip
        spread_sd = max((s for s in spreads if s is not None), default=None)
        outside = spread_sd is None or abs(mean_delta[metric]["mean"]) > spread_sd
        claim[metric] = significant and one_sign and outside
    return {
        "system": system,
        "baseline": base,
        "seeds": per_seed,
        "mean_delta": mean_delta,
        "claim": claim,
    }


def valid_curves(runs: list[dict]) -> dict:
    """Per family, per seed: each validation (updates, loss, training wall-clock s)."""
    curves: dict = {}
    for run in runs:
        curves.setdefault(run["family"], {})[str(run["seed"])] = [
            {
                "updates": int(v["num_updates"]),
                "loss": float(v["loss"]),
                "wall_seconds": float(v["wall_seconds"]),
            }
            for v in _summary(Path(run["dir"])).get("valid_history", [])
        ]
    return curves


def _stat_cell(values: list[float], digits: int = 3) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _short(layer: str) -> str:
    """``encoder.layers.1`` -> ``enc1``."""
    side, _, index = layer.partition(".layers.")
    return side[:3] + index


def _pair_text(cell: dict) -> str:
    star = "*" if cell["p_value"] is not None and cell["p_value"] < SIGNIFICANCE else ""
    return f"{cell['delta']:+.2f} (p={cell['p_value']:.3f}){star}"


def study_markdown(out: Path, summary: dict) -> str:
    u, seeds = summary["updates"], summary["seeds"]
    wide = summary["wide_dense"]
    lines = [
        "## MoE methods of 2024-2026 at demo scale (`benchmarks/methods_study.py`)",
        "",
        f"    {summary['command']}",
        "",
        f"Multi30k En-De, demo backbone, {'--tiny, ' if summary['tiny'] else ''}{u:,} updates "
        f"per run (checkpoints, validations and load probes every "
        f"{summary['checkpoint_interval']}), seeds {', '.join(map(str, seeds))}; beam 5 on the "
        f"test split. Equal updates: every run's checkpoint at update {u:,}. Equal time: per "
        "seed, every run trained as long as that seed's slowest run took for "
        f"{u:,} updates (its last checkpoint). Created {summary['created']}.",
        "",
    ]
    if wide:
        lines += [f"Wide dense control (Chirkova et al. 2024): {wide['line']}.", ""]
    lines += ["Equal time, per seed (training wall-clock s at the update budget -> updates):", ""]
    for seed, et in summary["equal_time"].items():
        cells = ", ".join(
            f"{f} {et['wall_seconds_at_updates'][f]:.0f} s -> {et['updates'][f]:,}"
            for f in et["updates"]
        )
        lines.append(f"- seed {seed}: {cells}")
    lines += [
        "",
        "**How to read this.** Each difference below is the system's score minus its baseline's, "
        "per seed, with the p-value of `moemt compare`'s paired bootstrap (1000 resamples; `*` "
        "p < 0.05). The bootstrap covers the test sample only; the seed-to-seed spread (sd over "
        "the seeds) covers training noise. A difference inside the bootstrap interval or inside "
        "the seed spread is no claim: `claim` says yes only where every seed's p < 0.05 with "
        "the same sign and the mean difference exceeds both families' seed sd.",
        "",
    ]
    for view, title in (("updates", f"Equal updates ({u:,})"), ("time", "Equal time")):
        lines += [
            f"### {title}: paired bootstrap against the baseline",
            "",
            "| system | baseline | "
            + " | ".join(f"{m} s{s}" for m in METRICS for s in seeds)
            + " | " + " | ".join(f"{m} mean Δ" for m in METRICS) + " | claim |",
            "|" + " --- |" * (3 + len(METRICS) * (len(seeds) + 1)),
        ]  # fmt: skip
        for pair in summary["pairs"][view]:
            cells = [
                _pair_text(pair["seeds"][str(s)][m]) if str(s) in pair["seeds"] else ""
                for m in METRICS
                for s in seeds
            ]
            cells += [_cell(pair["mean_delta"][m]) for m in METRICS]
            claims = [m for m in METRICS if pair["claim"][m]]
            cells.append(", ".join(claims) or "none")
            lines.append(f"| {pair['system']} | {pair['baseline']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "### Per family: mean ± sd over the seeds",
        "",
        "| family | seeds | BLEU eq. updates | chrF2 eq. updates | BLEU eq. time | "
        "chrF2 eq. time | updates eq. time | valid loss at update budget |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    curves = summary["curves"]
    for family, row in summary["views"]["time"].items():
        at_u = summary["views"]["updates"][family]
        loss = [
            p["loss"]
            for curve in curves.get(family, {}).values()
            for p in curve
            if p["updates"] == u
        ]
        lines.append(
            f"| {family} | {row['seeds']} | {_cell(at_u['BLEU'])} | {_cell(at_u['chrF2'])} | "
            f"{_cell(row['BLEU'])} | {_cell(row['chrF2'])} | "
            f"{', '.join(f'{n:,}' for n in row['checkpoint_updates'])} | {_stat_cell(loss)} |"
        )
    interval = summary["checkpoint_interval"]
    points = sorted(
        {
            p["updates"]
            for runs in curves.values()
            for curve in runs.values()
            for p in curve
            if p["updates"] % interval == 0
        }
    )
    lines += [
        "",
        "### Validation loss (mean ± sd over the seeds; every run's curve in study.json and "
        "valid_loss.png)",
        "",
        "| updates | " + " | ".join(curves) + " |",
        "|" + " --- |" * (len(curves) + 1),
    ]
    for n in points:
        cells = [
            _stat_cell([p["loss"] for curve in runs.values() for p in curve if p["updates"] == n])
            for runs in curves.values()
        ]
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    lines += expert_load_markdown(summary)
    lines += [
        "",
        "### Every run against dense-s1 (the quality study's tables; the bootstrap of a seed-2 "
        "row is against dense-s1, the pairs above pair each seed with its own baseline)",
        "",
        f"Equal time:\n\n{(out / 'compare-time' / 'compare.md').read_text()}",
        f"Equal updates:\n\n{(out / 'compare-updates' / 'compare.md').read_text()}",
    ]
    return "\n".join(lines) + "\n"


def expert_load_markdown(summary: dict) -> list[str]:
    loads, goal = summary["expert_load"], summary["goal"]
    columns = []  # (family, layer)
    for family, seeds in loads.items():
        for probe in seeds.values():
            for checkpoint in probe["checkpoints"].values():
                for layer in checkpoint["layers"]:
                    if (family, layer) not in columns:
                        columns.append((family, layer))
    points = sorted(
        {int(u) for seeds in loads.values() for p in seeds.values() for u in p["checkpoints"]}
    )
    settings = next((p["settings"] for s in loads.values() for p in s.values()), None)
    probe = (
        f"{settings['batches']} batches of at most {settings['max_tokens']} tokens of the "
        f"{settings['split']} split, evenly spaced over its length-sorted batches"
        if settings
        else "no MoE run"
    )
    lines = [
        "",
        "### Expert load over training: max/mean token assignments per MoE layer",
        "",
        f"Teacher-forced pass of each saved checkpoint in eval mode (no capacity) over {probe}; "
        "the loads summed over those batches, mean ± sd over the seeds. 1.0 is a uniform load; "
        "expert choice's is 1.0 by construction; the DeepSeek piece has 32 routed experts (its "
        "shared expert is not routed).",
        "",
        f"**{goal['line']}**",
        "",
        "| updates | " + " | ".join(f"{f} {_short(layer)}" for f, layer in columns) + " |",
        "|" + " --- |" * (len(columns) + 1),
    ]
    for n in points:
        cells = []
        for family, layer in columns:
            values = [
                c["layers"][layer]["max_over_mean"]
                for p in loads[family].values()
                if (c := p["checkpoints"].get(str(n))) and layer in c["layers"]
            ]
            cells.append(_stat_cell([v for v in values if v is not None]))
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    return lines


def plot_curves(curves: dict, path: Path) -> None:
    """Validation loss against updates and against training wall-clock, a line per run
    (colour: family; line: seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, (family, runs) in enumerate(curves.items()):
        for j, (seed, curve) in enumerate(runs.items()):
            points = [p for p in curve if p["updates"] > 0]
            for ax, key in zip(axes, ("updates", "wall_seconds"), strict=True):
                ax.plot(
                    [p[key] for p in points], [p["loss"] for p in points], color=f"C{i}",
                    linestyle=("-", "--", ":", "-.")[j % 4], label=f"{family} s{seed}",
                )  # fmt: skip
    axes[0].set_xlabel("updates")
    axes[1].set_xlabel("training wall-clock (s)")
    axes[0].set_ylabel("validation loss")
    axes[1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_loads(loads: dict, path: Path) -> None:
    """Max/mean expert load against updates, a line per MoE layer and run (colour: family;
    line: layer; marker: seed)."""
    if not loads:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (family, seeds) in enumerate(loads.items()):
        for j, (seed, probe) in enumerate(seeds.items()):
            layers = {}
            for u, checkpoint in probe["checkpoints"].items():
                for layer, stats in checkpoint["layers"].items():
                    if stats["max_over_mean"] is not None:
                        layers.setdefault(layer, []).append((int(u), stats["max_over_mean"]))
            for k, (layer, points) in enumerate(layers.items()):
                points.sort()
                ax.plot(
                    *zip(*points, strict=True), color=f"C{i}", marker=("o", "x", "^")[j % 3],
                    linestyle=("-", "--", ":")[k % 3], label=f"{family} s{seed} {_short(layer)}",
                )  # fmt: skip
    ax.set_xlabel("updates")
    ax.set_ylabel("max / mean expert load (valid, teacher forced)")
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
