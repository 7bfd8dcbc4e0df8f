"""Speed of the MoE FFN layer against a dense FFN with the same active compute.

The dense FFN has one expert's width (``d -> f -> d``), so top-1 MoE does the same matmul FLOPs
per token (plus the router), top-2 twice as many. Both run in the same process, on the same
input, interleaved repeat by repeat; the table reports median times and the median of the
per-repeat ratios MoE / dense, for forward+backward (training mode) and forward only
(eval mode under ``torch.inference_mode``).

    flock /tmp/moemt-cpu.lock python benchmarks/moe_layer.py            # the documented table
    python benchmarks/moe_layer.py --tokens 2048 --experts 8 --k 1 --repeats 3   # quick look
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from moe_mt.moe import ExpertBank, MoEFeedForward, TopKRouter


class DenseFFN(nn.Module):
    def __init__(self, d: int, f: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(f, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _train_step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, moe: bool) -> None:
    x.grad = None
    for p in module.parameters():
        p.grad = None  # as optimizer.zero_grad() in fairseq and torch: fresh grads every step
    y = module(x).y if moe else module(x)
    y.backward(grad)


def _infer_step(module: nn.Module, x: torch.Tensor, moe: bool) -> None:
    with torch.inference_mode():
        y = module(x)
        _ = y.y if moe else y


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(dense, moe, x, grad, repeats: int, train: bool) -> tuple[float, float, float]:
    """Median dense time, median MoE time, median per-repeat ratio MoE / dense."""
    dense.train(train)
    moe.train(train)
    if train:
        steps = (
            lambda: _train_step(dense, x, grad, False),
            lambda: _train_step(moe, x, grad, True),
        )
    else:
        steps = (lambda: _infer_step(dense, x, False), lambda: _infer_step(moe, x, True))
    for step in steps:  # warm-up
        step()
    dense_t, moe_t = [], []
    for _ in range(repeats):
        dense_t.append(_timed(steps[0]))
        moe_t.append(_timed(steps[1]))
    ratios = [m / d for m, d in zip(moe_t, dense_t, strict=True)]
    return statistics.median(dense_t), statistics.median(moe_t), statistics.median(ratios)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--f", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--impl", choices=["fused", "loop", "grouped_mm"], default="fused")
    parser.add_argument("--capacity-factor", type=float, default=None, help="default: no drops")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x = torch.randn(args.tokens, args.d, requires_grad=True)  # an FFN input inside a model
    grad = torch.randn(args.tokens, args.d)
    dense = DenseFFN(args.d, args.f)
    print(
        f"torch {torch.__version__}, {args.threads} threads, d={args.d}, f={args.f}, "
        f"T={args.tokens}, impl={args.impl}, capacity factor={args.capacity_factor}, "
        f"median of {args.repeats}"
    )
    print(
        "| E | k | max/mean load | fwd+bwd dense ms | fwd+bwd MoE ms | ratio "
        "| fwd dense ms | fwd MoE ms | ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for e in args.experts:
        for k in args.k:
            router = TopKRouter(args.d, e, k=k)
            bank = ExpertBank(e, args.d, args.f, impl=args.impl)
            moe = MoEFeedForward(router, bank, capacity_factor=args.capacity_factor)
            with torch.no_grad():
                load = moe(x).stats.tokens_per_expert
            train = compare(dense, moe, x, grad, args.repeats, train=True)
            infer = compare(dense, moe, x, grad, args.repeats, train=False)
            cells = [f"{(load.max() / load.mean()).item():.2f}"]
            cells += [f"{train[0] * 1e3:.0f}", f"{train[1] * 1e3:.0f}", f"{train[2]:.2f}"]
            cells += [f"{infer[0] * 1e3:.0f}", f"{infer[1] * 1e3:.0f}", f"{infer[2]:.2f}"]
            print(f"| {e} | {k} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
