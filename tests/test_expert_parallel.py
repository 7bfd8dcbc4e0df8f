"""Expert parallelism on 2 CPU processes (gloo, 127.0.0.1) against one process on the same batch.

Every case builds one MoE layer (same seed everywhere), gives each rank its own flat tokens
(different lengths, pads, sentences) and checks that the expert-parallel layer on 2 ranks gives,
for the concatenated batch, what the one-process layer gives: outputs, aux losses, and gradients
of the input and of every parameter (shared parameters: the sum over ranks, as DDP reduces them;
experts: each rank's shard). The per-rank loss is ``sum(y * c) + t_real * (0.3 balance + 0.7 z)``
so that the ranks' losses sum to the one-process loss on the whole batch. The reference
conventions (fairseq/GShard: balance over first choices, renormalisation after dropping, the
random or sampled second expert, fairseq's capacity formula) are cases too.
"""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import moe_mt  # noqa: F401  (compat patches before anything imports fairseq)
from moe_mt.models.mhmoe import MultiHeadMoE
from moe_mt.moe import CosineRouter, ExpertBank, MoEFeedForward, RandomRouter, TopKRouter
from moe_mt.moe.conventions import RoutingConventions
from moe_mt.moe.expert_parallel import (
    ExpertParallelMoE,
    expert_parallel_groups,
    kept_counts,
    queue_ahead,
    reduce_expert_grads,
)

WORLD = 2
D, F_HIDDEN, E = 8, 12, 4
LENGTHS = (13, 19)  # tokens per rank: unequal on purpose

CASES = {
    "top1": dict(router="topk", k=1, capacity=None, pads=False),
    "top1_drop_pad": dict(router="topk", k=1, capacity=0.6, pads=True),
    "top2_pad": dict(router="topk", k=2, capacity=None, pads=True),
    "top2_drop_pad": dict(router="topk", k=2, capacity=0.7, pads=True),
    "top1_jitter_drop": dict(router="topk", k=1, capacity=0.8, pads=True, jitter=0.3),
    "cosine_drop_pad": dict(router="cosine", k=1, capacity=0.6, pads=True),
    "mhmoe_top2_drop": dict(router="topk", k=2, capacity=0.7, pads=True, heads=2),
    "thor_batch": dict(router="random", granularity="batch", capacity=None, pads=True),
    "thor_sentence": dict(router="random", granularity="sentence", capacity=None, pads=True),
    "thor_token": dict(router="random", granularity="token", capacity=None, pads=True),
    # fairseq/GShard conventions: first-choice balance, weights renormalised after dropping,
    # the random second expert (drawn for the global batch), fairseq's capacity formula
    "top2_fairseq_conventions": dict(
        router="topk", k=2, capacity=0.5, pads=True,
        conventions=dict(
            balance_choices="first", renormalize="after", second_expert_policy="random",
            capacity_formula="fairseq",
        ),
    ),
    "top2_sampled_second": dict(
        router="topk", k=2, capacity=0.7, pads=True,
        conventions=dict(second_expert_policy="sampling"),
    ),
}  # fmt: skip


# -- running a function on 2 ranks -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world: int, port: int, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, args: tuple = (), world: int = WORLD, timeout: float = 120.0) -> None:
    """Run ``fn(rank, *args)`` on ``world`` spawned gloo processes; fail (not hang) on timeout."""
    ctx = mp.start_processes(
        _entry, args=(fn, world, free_port(), args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
            raise TimeoutError(f"ranks did not finish within {timeout} s")


# -- the layer and the data of a case ----------------------------------------------------------


def build_layer(case: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    heads = case.get("heads", 1)
    d_in = D // heads
    if case["router"] == "topk":
        router = TopKRouter(d_in, E, case["k"], jitter=case.get("jitter", 0.0), init_scale=1.0)
    elif case["router"] == "cosine":
        router = CosineRouter(d_in, E, case["k"], d_route=4)
    else:
        router = RandomRouter(E, granularity=case["granularity"])
    # a shared-draw generator in the same state everywhere (the models' SharedDraws)
    router.generator = torch.Generator().manual_seed(7)
    experts = ExpertBank(E, d_in, F_HIDDEN)
    conventions = RoutingConventions(**case.get("conventions", {}))
    layer = MoEFeedForward(router, experts, case["capacity"], case["capacity"], conventions)
    if heads > 1:
        layer = MultiHeadMoE(D, heads, layer)
    return layer


def rank_data(rank: int, case: dict) -> dict:
    g = torch.Generator().manual_seed(100 + rank)
    t = LENGTHS[rank]
    x = torch.randn(t, D, generator=g)
    pad = torch.rand(t, generator=g) < 0.25 if case["pads"] else None
    sentence = torch.randint(0, 3 + rank, (t,), generator=g).sort().values
    sentence[-1] = 2 + rank  # every sentence index up to the max occurs
    c = torch.randn(t, D, generator=g)
    return dict(x=x, pad=pad, sentence=sentence, c=c)


def rank_loss(out, data: dict) -> torch.Tensor:
    real = len(data["x"]) if data["pad"] is None else int((~data["pad"]).sum())
    loss = (out.y * data["c"]).sum()
    aux = out.aux_losses
    if aux:
        loss = loss + real * (0.3 * aux["balance"] + 0.7 * aux["z"])
    return loss


def _ep_layer(layer):
    groups = expert_parallel_groups(WORLD)
    if isinstance(layer, MultiHeadMoE):
        layer.moe = ExpertParallelMoE.from_layer(layer.moe, groups)
        return layer
    return ExpertParallelMoE.from_layer(layer, groups)


def _layer_worker(rank: int, out_dir: str) -> None:
    results = {}
    for name, case in CASES.items():
        layer = _ep_layer(build_layer(case))
        layer.train()
        data = rank_data(rank, case)
        x = data["x"].clone().requires_grad_(True)
        out = layer(x, data["pad"], data["sentence"])
        rank_loss(out, data).backward()
        results[name] = dict(
            y=out.y.detach(),
            aux={k: v.detach() for k, v in out.aux_losses.items()},
            grad_x=x.grad,
            grads={n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None},
            expert_index=out.routing.expert_index,
            kept=out.plan.kept,
        )
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ep_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ep")
    run_ranks(_layer_worker, (str(out),))
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def reference(case: dict) -> dict:
    """One process, all experts, on the ranks' concatenated batch."""
    layer = build_layer(case)
    layer.train()
    data = [rank_data(r, case) for r in range(WORLD)]
    x = torch.cat([d["x"] for d in data]).requires_grad_(True)
    pad = torch.cat([d["pad"] for d in data]) if case["pads"] else None
    offsets = [0, int(data[0]["sentence"].max()) + 1]
    sentence = torch.cat([d["sentence"] + o for d, o in zip(data, offsets, strict=True)])
    whole = dict(x=x, pad=pad, c=torch.cat([d["c"] for d in data]))
    out = layer(x, pad, sentence)
    rank_loss(out, whole).backward()
    return dict(layer=layer, out=out, grad_x=x.grad)


def close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("name", list(CASES))
def test_expert_parallel_layer_matches_one_process(ep_results, name):
    case = CASES[name]
    ref = reference(case)
    ranks = [r[name] for r in ep_results]
    close(torch.cat([r["y"] for r in ranks]), ref["out"].y.detach(), "output")
    close(torch.cat([r["grad_x"] for r in ranks]), ref["grad_x"], "input gradient")
    close(torch.cat([r["expert_index"] for r in ranks]), ref["out"].routing.expert_index, "route")
    close(torch.cat([r["kept"] for r in ranks]), ref["out"].plan.kept, "kept assignments")
    for key, value in ref["out"].aux_losses.items():
        for r in ranks:
            close(r["aux"][key], value.detach(), f"aux loss {key}")
    if case["capacity"] is not None:  # the case really drops (else it tests nothing)
        plan = ref["out"].plan
        assert int(plan.kept.sum()) < int(plan.num_assignments)
    for pname, param in ref["layer"].named_parameters():
        if param.grad is None:
            continue
        if ".experts." in f".{pname}" or pname.startswith("experts."):
            got = torch.cat([r["grads"][pname] for r in ranks])  # shard 0, then shard 1
        else:
            got = sum(r["grads"][pname] for r in ranks)  # DDP's reduction (a sum, here)
        close(got, param.grad, f"gradient of {pname}")


# -- the capacity rule, against a slow reference -----------------------------------------------


def _slow_kept(counts: torch.Tensor, capacity: int) -> torch.Tensor:
    """Walk the global priority order (choice, rank, position) one assignment at a time."""
    p, k, e = counts.shape
    kept = torch.zeros(p, e, dtype=torch.long)
    used = [0] * e
    for j in range(k):
        for r in range(p):
            for x in range(e):
                for _ in range(int(counts[r, j, x])):
                    if used[x] < capacity:
                        used[x] += 1
                        kept[r, x] += 1
    return kept


def test_kept_counts_follow_the_global_priority_order():
    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        p, k, e = 3, 2, 4
        counts = torch.randint(0, 6, (p, k, e), generator=g)
        capacity = int(torch.randint(1, 12, (1,), generator=g))
        assert torch.equal(kept_counts(counts, capacity), _slow_kept(counts, capacity))
        assert torch.equal(kept_counts(counts, None), counts.sum(1))
        # queue_ahead excludes this rank's own earlier choices and includes the others'
        for r in range(p):
            ahead = queue_ahead(counts, r)
            others = counts.sum(0) - counts[r]
            assert torch.equal(ahead[0], counts[:r, 0].sum(0))
            assert torch.equal(ahead[1], others[0] + counts[:r, 1].sum(0))


# -- gradient scaling --------------------------------------------------------------------------


def _scaling_worker(rank: int, out_dir: str) -> None:
    """W = P = 2: after reduce_expert_grads and fairseq's multiply by W / S, the expert gradient
    equals one process's gradient of the summed loss divided by S."""
    case = CASES["top1_drop_pad"]
    layer = _ep_layer(build_layer(case))
    data = rank_data(rank, case)
    rank_loss(layer(data["x"], data["pad"], data["sentence"]), data).backward()
    reduce_expert_grads(layer)
    sample_size = 10.0
    grads = {n: p.grad * (WORLD / sample_size) for n, p in layer.named_parameters()}
    torch.save(grads, Path(out_dir) / f"rank{rank}.pt")


def test_expert_gradient_scaling_matches_one_process(tmp_path):
    run_ranks(_scaling_worker, (str(tmp_path),))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    ref = reference(CASES["top1_drop_pad"])["layer"]
    for name in ("w1", "b1", "w2", "b2"):
        got = torch.cat([r[f"experts.{name}"] for r in ranks])
        close(got, getattr(ref.experts, name).grad / 10.0, f"scaled expert gradient {name}")


def test_expert_bank_shards_draw_like_one_process():
    """Building a shard from the full bank consumes no random numbers (same init elsewhere)."""
    from moe_mt.moe.expert_parallel import ExpertParallelGroups, ShardedExpertBank

    groups = ExpertParallelGroups(2, 1, 2, 1, None, 1, None)
    torch.manual_seed(0)
    bank = ExpertBank(E, D, F_HIDDEN)
    shard = ShardedExpertBank.from_bank(bank, groups)
    after = torch.rand(1)
    torch.manual_seed(0)
    ExpertBank(E, D, F_HIDDEN)
    assert torch.equal(after, torch.rand(1))
    assert torch.equal(shard.w1, bank.w1[2:]) and shard.num_global_experts == E
    assert all(getattr(p, "expert", False) for p in shard.parameters())
    # loading the logical (full) state keeps this shard's rows; the caller's dict stays whole
    state = {k: torch.randn_like(v) for k, v in bank.state_dict().items()}
    shard.load_state_dict(state)
    assert torch.equal(shard.w2, state["w2"][2:]) and state["w2"].shape[0] == E
    assert math.isclose(float(shard.b1.detach().sum()), float(state["b1"][2:].sum()), rel_tol=1e-6)


def test_shared_draws_depend_on_seed_layer_and_update_only():
    from moe_mt.moe.expert_parallel import SharedDraws

    def draws(seed, name, update, calls=1):
        shared = SharedDraws(seed, name)
        shared.set_num_updates(update)
        out = [torch.randint(1000, (4,), generator=shared.generator) for _ in range(calls)]
        shared.set_num_updates(update)  # the same update again: the stream goes on
        out.append(torch.randint(1000, (4,), generator=shared.generator))
        return torch.cat(out)

    assert torch.equal(draws(1, "encoder.layers.1", 5), draws(1, "encoder.layers.1", 5))
    assert not torch.equal(draws(1, "encoder.layers.1", 5), draws(1, "encoder.layers.1", 6))
    assert not torch.equal(draws(1, "encoder.layers.1", 5), draws(1, "decoder.layers.1", 5))
    assert not torch.equal(draws(1, "encoder.layers.1", 5), draws(2, "encoder.layers.1", 5))
    first = draws(1, "encoder.layers.1", 5)
    assert not torch.equal(first[:4], first[4:])  # a second draw in one update differs
