"""Training speed of the Switch Transformer against the dense baseline of equal active size.

Both models are built exactly as ``moemt train`` builds them (recipe -> fairseq args -> task,
model, criterion, fairseq's ``Trainer`` with Adam and the inverse-sqrt schedule), from
``recipes/demo.yaml`` (dense, ``moemt_transformer_demo``) and ``recipes/demo_switch.yaml``
(``switch_transformer_demo``: the same backbone, 8 experts of the dense FFN's width in every
other layer, top-1, so the same matmul FLOPs per token plus the router). They train in the same
process on the same batches of the shipped corpus (same seed, same iterator order), the same
number of updates, interleaved in short rounds (dense block, Switch block, ...) so that load from
other processes hits both alike. Reported: target words/s of each (tokens of the timed updates /
seconds) and the ratio Switch / dense (1.0 = as fast; the goal is >= 0.85), over all timed
updates and as the median of the per-round ratios (the robust figure on a shared machine: a
burst of outside load inflates a few rounds, not the median). A third row times Switch without a
capacity limit (every token processed), the worst case for speed.

    flock /tmp/moemt-cpu.lock python benchmarks/train_speed.py               # documented table
    python benchmarks/train_speed.py --rounds 2 --updates 5 --warmup 5      # quick look
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import moe_mt

REPO = Path(__file__).resolve().parent.parent


def build_trainer(recipe: str, work_dir: Path, overrides: list[str]):
    """fairseq's Trainer for ``recipe`` (with ``overrides``), data from ``work_dir``."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    from moe_mt.config import load_config
    from moe_mt.workflows.common.rundir import RunDir
    from moe_mt.workflows.train.fairseq_args import train_args

    cfg = load_config(REPO / "recipes" / recipe, [f"run_dir={work_dir}", *overrides])
    args = options.parse_args_and_arch(
        options.get_training_parser(), train_args(cfg, RunDir(cfg.run_dir))
    )
    fairseq_cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(fairseq_cfg.common.seed)
    task = tasks.setup_task(fairseq_cfg.task)
    task.load_dataset("train")
    model = task.build_model(fairseq_cfg.model)
    criterion = task.build_criterion(fairseq_cfg.criterion)
    trainer = Trainer(fairseq_cfg, task, model, criterion)
    return trainer, trainer.get_train_iterator(epoch=1)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


class Runner:
    """One model's trainer and batch stream; times blocks of updates."""

    def __init__(self, name: str, trainer, epoch_itr) -> None:
        self.name, self.trainer, self.epoch_itr = name, trainer, epoch_itr
        self.batches = epoch_itr.next_epoch_itr(shuffle=True)
        self.seconds: list[float] = []
        self.tokens: list[int] = []

    def _next(self):
        if not self.batches.has_next():  # the same epochs, in the same order, for every model
            self.batches = self.epoch_itr.next_epoch_itr(shuffle=True)
        return next(self.batches)

    def run(self, updates: int, timed: bool = True) -> None:
        samples = [self._next() for _ in range(updates)]
        start = time.perf_counter()
        for sample in samples:
            self.trainer.train_step([sample])
        elapsed = time.perf_counter() - start
        if timed:
            self.seconds.append(elapsed)
            self.tokens.append(sum(int(s["ntokens"]) for s in samples))

    def words_per_second(self) -> float:
        return sum(self.tokens) / sum(self.seconds)

    def median_round_ratio(self, baseline: Runner) -> float:
        """Median over rounds of this model's words/s over ``baseline``'s in the same round."""
        ratios = [
            (t / s) / (bt / bs)
            for t, s, bt, bs in zip(
                self.tokens, self.seconds, baseline.tokens, baseline.seconds, strict=True
            )
        ]
        return statistics.median(ratios)


def prepared_work_dir(work_dir: Path | None) -> Path:
    """The shipped corpus prepared as the demo recipe does, in ``work_dir`` (default: a
    temporary directory shared by the speed benchmarks), prepared once and then reused."""
    from moe_mt.config import load_config
    from moe_mt.workflows.prep.pipeline import prep

    work_dir = work_dir or Path(tempfile.gettempdir()) / "moemt-bench-train-speed"
    if not (work_dir / "data" / "manifest.json").exists():
        prep(load_config(REPO / "recipes" / "demo.yaml", [f"run_dir={work_dir}"]))
    return work_dir


def run_interleaved(runners: list[Runner], warmup: int, rounds: int, updates: int) -> None:
    """Untimed warm-up, then ``rounds`` rounds of ``updates`` timed updates per model, the
    models taking turns within each round (machine noise then hits them alike)."""
    for runner in runners:
        runner.run(warmup, timed=False)
    for _ in range(rounds):
        for runner in runners:
            runner.run(updates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=1024, help="as the demo recipes")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--updates", type=int, default=10, help="updates per model per round")
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--no-capacity-row",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time Switch with no capacity limit (no token dropped)",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="prepared data (reused)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    moe_mt.register()
    work_dir = prepared_work_dir(args.work_dir)
    common = [f"train.max_tokens={args.max_tokens}"]
    moe = [f"model.moe.num_experts={args.experts}", f"model.moe.top_k={args.top_k}"]
    runners = [
        Runner("dense", *build_trainer("demo.yaml", work_dir, common)),
        Runner("switch", *build_trainer("demo_switch.yaml", work_dir, common + moe)),
    ]
    if args.no_capacity_row:  # the worst case: every token processed, none dropped
        no_drop = common + moe + ["model.moe.capacity_factor=0"]
        runners.append(
            Runner("switch, no capacity", *build_trainer("demo_switch.yaml", work_dir, no_drop))
        )
    run_interleaved(runners, args.warmup, args.rounds, args.updates)

    print(
        f"torch {torch.__version__}, {args.threads} threads, max_tokens {args.max_tokens}, "
        f"{args.rounds} rounds x {args.updates} updates per model after {args.warmup} warm-up; "
        f"switch: {args.experts} experts, top-{args.top_k}"
    )
    print("| model | parameters | updates timed | target words/s | ratio | median round ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    dense = runners[0]
    for runner in runners:
        ratio = runner.words_per_second() / dense.words_per_second()
        print(
            f"| {runner.name} | {_params(runner.trainer.model) / 1e6:.1f}M "
            f"| {args.rounds * args.updates} | {runner.words_per_second():,.0f} | {ratio:.3f} "
            f"| {runner.median_round_ratio(dense):.3f} |"
        )


if __name__ == "__main__":
    main()
