"""Speed of the MoE FFN layer against a dense FFN with the same active compute.

The dense FFN has one expert's width (``d -> f -> d``), so top-1 MoE does the same matmul FLOPs
per token (plus the router), top-2 twice as many. Both run in the same process, on the same
input, interleaved repeat by repeat; the table reports median times and the median of the
per-repeat ratios MoE / dense, for forward+backward (training mode) and forward only
(eval mode under ``torch.inference_mode``).

    flock /tmp/moemt-cpu.lock python benchmarks/moe_layer.py            # the documented table
    python benchmarks/moe_layer.py --tokens 2048 --experts 8 --k 1 --repeats 3   # quick look
    python benchmarks/moe_layer.py --device cuda --dtype bf16 --repeats 50     # on a GPU
    python benchmarks/moe_layer.py --device cuda --dtype bf16 --compile reduce-overhead
    flock /tmp/moemt-cpu.lock python benchmarks/moe_layer.py --activation swiglu --experts 8 --k 1

``--activation swiglu`` (or ``geglu``) gives both sides GLU FFNs of the same width ``f``
(Shazeer 2020: experts ``w1, w3, w2``; the dense FFN ``fc1`` gate and up projections, then
``fc2``): three ``d x f`` matrices per FFN instead of two, so more work per token than the GELU
table, on both sides alike.

On CUDA the step is timed between device synchronisations, and half precision runs under
``torch.autocast`` (fp32 weights, the router in fp32 as always). ``--dispatch-plan`` picks the
layer's plan (``auto``: static on CUDA, dynamic on the CPU; the other one for a before/after in
one process), ``--static-layout`` the static plan's expert layout (grouped GEMM over groups, or
``bmm`` over fixed capacity slots where ``--capacity-factor`` sets one, in training), and
``--compile`` runs both modules under ``torch.compile`` (``reduce-overhead``: with CUDA graphs,
which the static plan's fixed shapes allow). The last column is what an
expert-parallel step would move through all_to_all for this layer (dispatch and combine, forward
and backward: ``4 k T d`` elements in the activations' precision), the number a projection to
several devices starts from.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from moe_mt.models.glu import GLUProjection, identity
from moe_mt.moe import ExpertBank, MoEFeedForward, TopKRouter
from moe_mt.moe.experts import GLU_ACTIVATIONS, IMPLS
from moe_mt.moe.layer import LAYOUTS, PLANS

#: ``--activation``: the GELU FFN of the documented table, or a GLU FFN on both sides.
ACTIVATIONS = ("gelu", *GLU_ACTIVATIONS)


class DenseFFN(nn.Module):
    """``fc2(gelu(fc1(x)))``, or with a GLU ``fc2(act(x w1) * (x w3))`` (the dense baseline's
    :class:`~moe_mt.models.glu.GLUProjection` as ``fc1``)."""

    def __init__(self, d: int, f: int, activation: str = "gelu") -> None:
        super().__init__()
        if activation in GLU_ACTIVATIONS:
            self.fc1, self.act = (
                GLUProjection(nn.Linear(d, f), nn.Linear(d, f), activation),
                identity,
            )
        else:
            self.fc1, self.act = nn.Linear(d, f), F.gelu
        self.fc2 = nn.Linear(f, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _train_step(module: nn.Module, forward, x: torch.Tensor, grad: torch.Tensor) -> None:
    x.grad = None
    for p in module.parameters():
        p.grad = None  # as optimizer.zero_grad() in fairseq and torch: fresh grads every step
    forward(x).backward(grad)


def _infer_step(forward, x: torch.Tensor) -> None:
    with torch.inference_mode():
        forward(x)


def _forward(module: nn.Module, moe: bool, compile_mode: str):
    """``x -> y`` of the module, compiled whole if asked (the MoE layer returns its output's
    ``y``)."""
    fn = (lambda x: module(x).y) if moe else module
    if compile_mode == "none":
        return fn
    return torch.compile(fn, mode=compile_mode, fullgraph=True)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: wait for them
    return time.perf_counter() - start


def _precision(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def compare(
    dense,
    moe,
    x,
    grad,
    repeats: int,
    train: bool,
    dtype: torch.dtype = torch.float32,
    compile_mode: str = "none",
) -> tuple[float, float, float]:
    """Median dense time, median MoE time, median per-repeat ratio MoE / dense."""
    dense.train(train)
    moe.train(train)
    dense_fn, moe_fn = _forward(dense, False, compile_mode), _forward(moe, True, compile_mode)
    if train:
        steps = (
            lambda: _train_step(dense, dense_fn, x, grad),
            lambda: _train_step(moe, moe_fn, x, grad),
        )
    else:
        steps = (lambda: _infer_step(dense_fn, x), lambda: _infer_step(moe_fn, x))
    with _precision(x.device, dtype):
        for step in steps:  # warm-up (compilation, CUDA graph recording)
            for _ in range(3 if compile_mode != "none" else 1):
                step()
        dense_t, moe_t = [], []
        for _ in range(repeats):
            dense_t.append(_timed(steps[0], x.device))
            moe_t.append(_timed(steps[1], x.device))
    ratios = [m / d for m, d in zip(moe_t, dense_t, strict=True)]
    return statistics.median(dense_t), statistics.median(moe_t), statistics.median(ratios)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--f", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--impl", choices=list(IMPLS), default="auto")
    parser.add_argument("--activation", choices=ACTIVATIONS, default="gelu")
    parser.add_argument("--dispatch-plan", choices=list(PLANS), default="auto")
    parser.add_argument("--static-layout", choices=list(LAYOUTS), default="auto")
    parser.add_argument("--compile", choices=["none", "default", "reduce-overhead"], default="none")
    parser.add_argument("--capacity-factor", type=float, default=None, help="default: no drops")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    args = parser.parse_args(argv)

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # an FFN input inside a model
    x = torch.randn(args.tokens, args.d, device=device, requires_grad=True)
    grad = torch.randn(args.tokens, args.d, device=device)
    dense = DenseFFN(args.d, args.f, args.activation).to(device)
    where = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
    )
    print(
        f"torch {torch.__version__}, {where}, {args.dtype}, d={args.d}, f={args.f}, "
        f"T={args.tokens}, activation={args.activation}, impl={args.impl}, "
        f"plan={args.dispatch_plan}, "
        f"layout={args.static_layout}, "
        f"compile={args.compile}, capacity factor={args.capacity_factor}, "
        f"median of {args.repeats}"
    )
    print(
        "| E | k | max/mean load | fwd+bwd dense ms | fwd+bwd MoE ms | ratio "
        "| fwd dense ms | fwd MoE ms | ratio | all_to_all MB/step |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    element_bytes = torch.finfo(dtype).bits // 8
    ms = ".0f" if device.type == "cpu" else ".2f"
    for e in args.experts:
        for k in args.k:
            router = TopKRouter(args.d, e, k=k)
            bank = ExpertBank(e, args.d, args.f, activation=args.activation, impl=args.impl)
            moe = MoEFeedForward(
                router, bank, args.capacity_factor,
                dispatch_plan=args.dispatch_plan, static_layout=args.static_layout,
            ).to(device)  # fmt: skip
            with torch.no_grad():
                load = moe(x).stats.tokens_per_expert.float()
            train = compare(dense, moe, x, grad, args.repeats, True, dtype, args.compile)
            infer = compare(dense, moe, x, grad, args.repeats, False, dtype, args.compile)
            cells = [f"{(load.max() / load.mean()).item():.2f}"]
            cells += [f"{train[0] * 1e3:{ms}}", f"{train[1] * 1e3:{ms}}", f"{train[2]:.2f}"]
            cells += [f"{infer[0] * 1e3:{ms}}", f"{infer[1] * 1e3:{ms}}", f"{infer[2]:.2f}"]
            cells.append(f"{4 * k * args.tokens * args.d * element_bytes / 1e6:.1f}")
            print(f"| {e} | {k} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
