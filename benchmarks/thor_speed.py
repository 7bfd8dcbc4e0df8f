"""THOR's cost against the dense baseline: per training update, and per decoded token.

Training: the dense demo (``recipes/demo.yaml``) and THOR (``recipes/demo_thor.yaml``: the same
backbone, 4 experts of the dense FFN's width in every other layer from the first, criterion
``thor_label_smoothed_cross_entropy``: two forward passes and one backward through both) are
built exactly as ``moemt train`` builds them and trained on the same batches, interleaved in
short rounds, with the Trainer and Runner of ``benchmarks/train_speed.py``. Reported: target
words/s and the cost of an update relative to dense (expected about 2: two passes).

Inference: beam search (beam 5, ``max_len_a`` 1.2, ``max_len_b`` 10, as ``moemt eval``) on the
first batches of the test split with the dense model and THOR in each inference mode (``fixed``:
expert 0 everywhere; ``random``: one keyed expert per layer per sentence; ``mean``: all experts),
interleaved round by round. The models are freshly initialised (no checkpoint needed): nearly
every hypothesis runs to the maximum length, so every model decodes about the same number of
tokens (the table shows them). Reported: generated tokens/s and the speed relative to dense
(goal >= 0.9 for fixed and random).

    flock /tmp/moemt-cpu.lock python benchmarks/thor_speed.py            # documented table
    python benchmarks/thor_speed.py --rounds 1 --updates 3 --warmup 2 --batches 2   # quick look
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import moe_mt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import Runner, build_trainer, prepared_work_dir, run_interleaved  # noqa: E402

MODES = ("fixed", "random", "mean")


def training_table(work_dir: Path, args) -> list[str]:
    common = [f"train.max_tokens={args.max_tokens}"]
    thor = common + [f"model.moe.num_experts={args.experts}"]
    runners = [
        Runner("dense", *build_trainer("demo.yaml", work_dir, common)),
        Runner("THOR (2 passes)", *build_trainer("demo_thor.yaml", work_dir, thor)),
    ]
    run_interleaved(runners, args.warmup, args.rounds, args.updates)
    dense = runners[0]
    rows = [
        "| model | updates timed | target words/s | ms per update | cost per update vs dense "
        "| median round ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for runner in runners:
        per_update = 1000 * sum(runner.seconds) / (args.rounds * args.updates)
        rounds = [s / ds for s, ds in zip(runner.seconds, dense.seconds, strict=True)]
        rows.append(
            f"| {runner.name} | {args.rounds * args.updates} | {runner.words_per_second():,.0f} "
            f"| {per_update:.0f} | {dense.words_per_second() / runner.words_per_second():.2f}x "
            f"| {statistics.median(rounds):.2f}x |"
        )
    return rows


def _decoder(work_dir: Path, recipe: str, overrides: list[str], batches: int, beam: int):
    from fairseq.dataclass.configs import GenerationConfig

    trainer, _ = build_trainer(recipe, work_dir, overrides)
    task, model = trainer.task, trainer.model
    model.eval()
    task.load_dataset("test")
    generator = task.build_generator(
        [model], GenerationConfig(beam=beam, max_len_a=1.2, max_len_b=10)
    )
    itr = task.get_batch_iterator(
        dataset=task.dataset("test"), max_tokens=6000, disable_iterator_cache=True
    ).next_epoch_itr(shuffle=False)
    samples = [next(itr) for _ in range(batches)]

    def decode() -> tuple[float, int]:
        start = time.perf_counter()
        tokens = 0
        for sample in samples:
            for hypos in task.inference_step(generator, [model], sample):
                tokens += hypos[0]["tokens"].numel()
        return time.perf_counter() - start, tokens

    return model, decode, sum(len(s["id"]) for s in samples)


def inference_table(work_dir: Path, args) -> list[str]:
    _, dense, sentences = _decoder(work_dir, "demo.yaml", [], args.batches, args.beam)
    thor, thor_decode, _ = _decoder(
        work_dir, "demo_thor.yaml", [f"model.moe.num_experts={args.experts}"], args.batches,
        args.beam,
    )  # fmt: skip

    def in_mode(mode: str):
        def decode():
            thor.set_inference(mode, expert=0, seed=12345)
            return thor_decode()

        return decode

    decoders = {"dense": dense, **{f"THOR {mode}": in_mode(mode) for mode in MODES}}
    seconds = {name: [] for name in decoders}
    tokens = {}
    for decode in decoders.values():
        decode()  # warm-up
    for _ in range(args.inference_rounds):
        for name, decode in decoders.items():
            elapsed, tokens[name] = decode()
            seconds[name].append(elapsed)
    rows = [
        f"{sentences} sentences, beam {args.beam}",
        "| model | generated tokens | tokens/s (median round) | speed vs dense |",
        "| --- | --- | --- | --- |",
    ]
    dense_rate = tokens["dense"] / statistics.median(seconds["dense"])
    for name in decoders:
        rate = tokens[name] / statistics.median(seconds[name])
        rows.append(f"| {name} | {tokens[name]:,} | {rate:,.0f} | {rate / dense_rate:.2f}x |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", type=int, default=4, help="as recipes/demo_thor.yaml")
    parser.add_argument("--max-tokens", type=int, default=1024, help="as the demo recipes")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--updates", type=int, default=10, help="updates per model per round")
    parser.add_argument("--warmup", type=int, default=10, help="untimed updates per model")
    parser.add_argument("--batches", type=int, default=4, help="test batches decoded per round")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--inference-rounds", type=int, default=3)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=None, help="prepared data (reused)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    moe_mt.register()
    work_dir = prepared_work_dir(args.work_dir)
    print(
        f"torch {torch.__version__}, {args.threads} threads; THOR: {args.experts} experts, "
        f"every other layer from the first"
    )
    if not args.skip_training:
        print(
            f"training: max_tokens {args.max_tokens}, {args.rounds} rounds x {args.updates} "
            f"updates per model after {args.warmup} warm-up"
        )
        print("\n".join(training_table(work_dir, args)))
    print(f"inference: {args.inference_rounds} rounds after one warm-up")
    print("\n".join(inference_table(work_dir, args)))


if __name__ == "__main__":
    main()
