"""Share of an expert-parallel MoE layer's step spent in all_to_all (gloo, 2 CPU processes).

Runs, in one invocation: (a) the expert-parallel layer (:class:`~moe_mt.moe.ExpertParallelMoE`)
on 2 processes (gloo, 127.0.0.1), each with ``--tokens`` tokens and half of the ``--experts``
experts; (b) the same layer (all experts) in one process on ``--tokens`` tokens, the baseline.
A step is forward + backward of ``sum(y * c)``; every process uses ``--threads`` threads. Time in
``all_to_all_single`` (forward and backward exchanges) and in the small collectives (counts, aux
sums) is measured around the calls; the median step over ``--steps`` is reported, after
``--warmup``. Prints the ratios: all_to_all share of the 2-rank step, 2-rank step / 1-process
step (same tokens per process, so the ideal is 1.0 plus communication).

    flock /tmp/moemt-cpu.lock .venv/bin/python benchmarks/all_to_all.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moe_mt.moe import ExpertBank, MoEFeedForward, TopKRouter
from moe_mt.moe.expert_parallel import ExpertParallelMoE, expert_parallel_groups


def build(args) -> MoEFeedForward:
    torch.manual_seed(0)
    router = TopKRouter(args.d_model, args.experts, 1)
    experts = ExpertBank(args.experts, args.d_model, args.d_ff)
    return MoEFeedForward(router, experts, args.capacity_factor)


class Timer:
    """Wraps a torch.distributed function and accumulates the seconds spent in it."""

    def __init__(self, name: str) -> None:
        self.name, self.seconds = name, 0.0
        self.inner = getattr(dist, name)
        setattr(dist, name, self)

    def __call__(self, *a, **k):
        start = time.perf_counter()
        try:
            return self.inner(*a, **k)
        finally:
            self.seconds += time.perf_counter() - start


def steps(layer, x, c, n: int, timers=()) -> list[tuple[float, float, float]]:
    """``n`` timed steps: (step seconds, all_to_all seconds, other-collective seconds)."""
    out = []
    for _ in range(n):
        for t in timers:
            t.seconds = 0.0
        if dist.is_initialized():
            dist.barrier()
        start = time.perf_counter()
        (layer(x).y * c).sum().backward()
        step = time.perf_counter() - start
        a2a = sum(t.seconds for t in timers if t.name == "all_to_all_single")
        other = sum(t.seconds for t in timers if t.name != "all_to_all_single")
        out.append((step, a2a, other))
        layer.zero_grad(set_to_none=True)
    return out


def data(args, rank: int):
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.tokens, args.d_model, generator=g).requires_grad_(True)
    return x, torch.randn(args.tokens, args.d_model, generator=g)


def worker(rank: int, args, port: int, results) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    timers = [Timer(n) for n in ("all_to_all_single", "all_gather", "all_reduce")]
    layer = ExpertParallelMoE.from_layer(build(args), expert_parallel_groups(2))
    x, c = data(args, rank)
    steps(layer, x, c, args.warmup, timers)
    results[rank] = steps(layer, x, c, args.steps, timers)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-ff", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per process")
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    from moe_mt.workflows.train.distributed import free_port

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(worker, args=(args, free_port(), results), nprocs=2, join=True)
    ranks = [results[0], results[1]]
    # the step of the slower rank, per step
    ep = [max(a[0], b[0]) for a, b in zip(*ranks, strict=True)]
    a2a = [max(a[1], b[1]) for a, b in zip(*ranks, strict=True)]
    other = [max(a[2], b[2]) for a, b in zip(*ranks, strict=True)]

    torch.set_num_threads(args.threads)
    layer = build(args)
    x, c = data(args, 0)
    steps(layer, x, c, args.warmup)
    one = [s[0] for s in steps(layer, x, c, args.steps)]

    ep_step, one_step = statistics.median(ep), statistics.median(one)
    print(
        f"d={args.d_model} d_ff={args.d_ff} E={args.experts} T={args.tokens}/process top-1 "
        f"capacity {args.capacity_factor}, {args.threads} thread(s) per process, gloo, "
        f"torch {torch.__version__}"
    )
    print(f"1 process, all experts        step {one_step * 1e3:8.1f} ms")
    print(f"2 ranks, expert parallel      step {ep_step * 1e3:8.1f} ms")
    print(f"  in all_to_all_single        {statistics.median(a2a) * 1e3:8.1f} ms")
    print(f"  in counts / aux collectives {statistics.median(other) * 1e3:8.1f} ms")
    print(f"all_to_all share of the 2-rank step: {statistics.median(a2a) / ep_step:.3f}")
    print(f"2-rank step / 1-process step:        {ep_step / one_step:.2f}")


if __name__ == "__main__":
    main()
