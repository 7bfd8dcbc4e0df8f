"""Training speed of MH-MoE and Soft MoE against the dense baseline, and their activation rates.

Same method as ``benchmarks/train_speed.py`` (whose trainer builder and runner this reuses):
every model is built exactly as ``moemt train`` builds it from its demo recipe, and all train in
the same process on the same batches of the shipped corpus, interleaved in short rounds; the
median of the per-round words/s ratios against dense is the robust figure on a shared machine.

Models (demo backbone: 3+3 layers, d=256, FFN 1024, 4 heads; MoE layers at index 1):

- ``dense``: ``recipes/demo.yaml``;
- ``mhmoe``: ``recipes/demo_mhmoe.yaml``: 4 heads, top-2 of 8 experts of width 64 -> 512 -> 64,
  so the experts' FLOPs per token equal the dense FFN's, plus the two 256 x 256 projections
  (merge ``before`` the residual; ``--after`` adds a row with ``after``);
- ``soft_moe``: ``recipes/demo_soft_moe.yaml``: a Soft MoE encoder layer (8 experts of the dense
  FFN's size, 1 slot each), dense decoder;
- ``switch``: ``recipes/demo_switch.yaml`` (8 experts, top-1), for the activation-rate column.

Goals: MH-MoE >= 0.75x dense, Soft MoE encoder >= 0.8x.

After timing, each MoE model's expert activation rate (the core's definition: the share of a
layer's experts that received at least one token, or sub-token, in a forward pass; mean over MoE
layers) is measured in eval mode over the first ``--eval-batches`` validation batches of
``max_tokens`` (per batch), and over single sentences (per sentence: the same statistic for a
batch of one sentence, closer to what one token stream sees).

    flock /tmp/moemt-cpu.lock .venv/bin/python benchmarks/family_speed.py
    .venv/bin/python benchmarks/family_speed.py --rounds 2 --updates 3 --warmup 3   # quick look
    .venv/bin/python benchmarks/family_speed.py --checkpoints \
        mhmoe=runs/demo_mhmoe/checkpoints/checkpoint_last.pt   # activation rates of trained runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

import moe_mt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import Runner, _params, build_trainer, prepared_work_dir, run_interleaved  # noqa: E402

MODELS = {
    "dense": ("demo.yaml", []),
    "mhmoe": ("demo_mhmoe.yaml", []),
    "mhmoe, merge after": ("demo_mhmoe.yaml", ["model.moe.merge_placement=after"]),
    "soft_moe (encoder)": ("demo_soft_moe.yaml", []),
    "switch": ("demo_switch.yaml", []),
}


def activation_rates(
    task, model, max_tokens: int, eval_batches: int, sentences: int
) -> tuple[float, float]:
    """Mean activation rate over MoE layers: per validation batch, and per single sentence."""
    from moe_mt.models.moe_layers import collect_moe_outputs

    task.load_dataset("valid")
    dataset = task.dataset("valid")
    model.eval()

    def rate(sample) -> float:
        with torch.no_grad(), collect_moe_outputs() as outputs:
            model(**sample["net_input"])
        return statistics.mean(float(o.output.stats.activation_rate) for o in outputs)

    itr = task.get_batch_iterator(dataset, max_tokens=max_tokens, seed=1).next_epoch_itr(
        shuffle=False
    )
    per_batch = [rate(sample) for _, sample in zip(range(eval_batches), itr, strict=False)]
    per_sentence = [rate(dataset.collater([dataset[i]])) for i in range(sentences)]
    model.train()
    return statistics.mean(per_batch), statistics.mean(per_sentence)


def checkpoint_rates(args) -> None:
    """The activation-rate columns for trained checkpoints (``NAME=PATH``)."""
    from fairseq import checkpoint_utils

    print("| model | updates | activation rate per batch | per sentence |")
    print("| --- | --- | --- | --- |")
    for item in args.checkpoints:
        name, _, path = item.partition("=")
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path])
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
        updates = state["optimizer_history"][-1]["num_updates"]
        batch, sentence = activation_rates(
            task, models[0], args.max_tokens, args.eval_batches, args.sentences
        )
        print(f"| {name} | {updates} | {100 * batch:.2f}% | {100 * sentence:.2f}% |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=1024, help="as the demo recipes")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--updates", type=int, default=10, help="updates per model per round")
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-batches", type=int, default=20)
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--work-dir", type=Path, default=None, help="prepared data (reused)")
    parser.add_argument(
        "--checkpoints",
        nargs="+",
        metavar="NAME=CHECKPOINT",
        help="only measure the activation rates of these trained checkpoints (no timing)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    moe_mt.register()
    if args.checkpoints:
        checkpoint_rates(args)
        return
    work_dir = prepared_work_dir(args.work_dir)
    names = ["dense"] + [m for m in args.models if m != "dense"]
    runners = []
    for name in names:
        recipe, overrides = MODELS[name]
        trainer = build_trainer(
            recipe, work_dir, [f"train.max_tokens={args.max_tokens}", *overrides]
        )
        runners.append(Runner(name, *trainer))
    run_interleaved(runners, args.warmup, args.rounds, args.updates)

    print(
        f"torch {torch.__version__}, {args.threads} threads, max_tokens {args.max_tokens}, "
        f"{args.rounds} rounds x {args.updates} updates per model after {args.warmup} warm-up"
    )
    print(
        "| model | parameters | target words/s | ratio | median round ratio "
        "| activation rate per batch | per sentence |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    dense = runners[0]
    for runner in runners:
        ratio = runner.words_per_second() / dense.words_per_second()
        if runner.name == "dense":
            rates = "| - | - |"
        else:
            batch, sentence = activation_rates(
                runner.trainer.task, runner.trainer.model, args.max_tokens, args.eval_batches,
                args.sentences,
            )  # fmt: skip
            rates = f"| {100 * batch:.2f}% | {100 * sentence:.2f}% |"
        print(
            f"| {runner.name} | {_params(runner.trainer.model) / 1e6:.1f}M "
            f"| {runner.words_per_second():,.0f} | {ratio:.3f} "
            f"| {runner.median_round_ratio(dense):.3f} {rates}",
            flush=True,
        )


if __name__ == "__main__":
    main()
