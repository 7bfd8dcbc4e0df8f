"""The static dispatch plan (the GPU's: fixed shapes, capacity as a mask, no host sync).

It must keep the same assignments as the CPU's dynamic plan and give the same outputs and
gradients, for every router and convention, and the layer must trace whole under
``torch.compile(fullgraph=True)``. The per-token reference tests of the layer
(``test_moe_layer.py``, ``test_moe_capacity.py``) pin the dynamic plan to hand-computed cases;
equality with it carries them over to the static one.
"""

from __future__ import annotations

import copy

import pytest
import torch

from moe_mt.models.mhmoe import MultiHeadMoE
from moe_mt.moe import (
    CosineRouter,
    ExpertBank,
    MoEFeedForward,
    RandomRouter,
    TopKRouter,
    plan_dispatch,
    plan_dispatch_static,
)
from moe_mt.moe.conventions import RoutingConventions
from moe_mt.moe.dispatch import combine, dispatch

D, F, E, T = 16, 32, 4, 64


def _router(kind: str, k: int):
    if kind == "topk":
        return TopKRouter(D, E, k=k, jitter=0.0)
    if kind == "cosine":
        return CosineRouter(D, E, k=k, d_route=8)
    if kind == "fixed":
        return RandomRouter(E, mode="fixed", fixed_expert=2)
    return RandomRouter(E, granularity="sentence", seed=3)


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, D, generator=g).to(dtype)
    pad = torch.zeros(T, dtype=torch.bool)
    pad[5:9] = pad[-11:] = True  # pads inside and at the end of the flat batch
    grad = torch.randn(T, D, generator=g).to(dtype)
    sentence = torch.arange(T) // 8
    return x, pad, grad, sentence


def _run(layer, x, pad, grad, sentence=None):
    x = x.detach().clone().requires_grad_(True)
    out = layer(x, pad, sentence)
    loss = (out.y.float() * grad.float()).sum() + sum(out.aux_losses.values())
    loss.backward()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
    return out, x.grad, grads


def _both(layer: MoEFeedForward, layout: str = "auto"):
    """The layer on the dynamic plan and an identical copy on the static one."""
    layer.dispatch_plan = "dynamic"
    static = copy.deepcopy(layer)
    static.dispatch_plan, static.static_layout = "static", layout
    return layer, static


def _assert_same(a, b):
    (out_a, dx_a, grads_a), (out_b, dx_b, grads_b) = a, b
    assert torch.equal(out_a.plan.kept, out_b.plan.kept)
    assert torch.equal(out_a.plan.counts, out_b.plan.counts)
    torch.testing.assert_close(out_b.y, out_a.y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx_b, dx_a, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-5, atol=1e-6, msg=name)
    for name, loss in out_a.aux_losses.items():
        torch.testing.assert_close(out_b.aux_losses[name], loss)


@pytest.mark.parametrize("router", ["topk", "cosine"])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("capacity", [None, 1.0, 0.5])
@pytest.mark.parametrize(
    "impl,layout",
    [("fused", "groups"), ("grouped_mm", "groups"), ("loop", "groups"), ("fused", "slots")],
)
def test_static_plan_keeps_and_computes_what_the_dynamic_plan_does(
    router, k, capacity, impl, layout
):
    if layout == "slots" and capacity is None:
        pytest.skip("fixed slots need a capacity")
    torch.manual_seed(0)
    layer = MoEFeedForward(_router(router, k), ExpertBank(E, D, F, impl=impl), capacity)
    dynamic, static = _both(layer.train(), layout)
    x, pad, grad, _ = _inputs()
    out = _run(static, x, pad, grad)
    assert (out[0].plan.slots is not None) == (layout == "slots")
    _assert_same(_run(dynamic, x, pad, grad), out)


def test_fixed_slots_are_sized_by_the_capacity_without_pads():
    layer = MoEFeedForward(TopKRouter(D, E, k=2), ExpertBank(E, D, F), 1.0, dispatch_plan="static")
    layer.static_layout = "slots"
    x, pad, _, _ = _inputs()
    plan = layer(x, pad).plan
    assert plan.slots == 2 * T // E  # ceil(1.0 * k * T / E), pads counted: a host bound
    assert int(plan.capacity) == -(-2 * int((~pad).sum()) // E)  # the capacity itself
    assert plan.token_index.shape[0] == E * plan.slots
    layer.capacity_factor = None  # no capacity: groups
    assert layer(x, pad).plan.slots is None


@pytest.mark.parametrize(
    "conventions",
    [
        RoutingConventions(balance_choices="first", renormalize="after"),
        RoutingConventions(second_expert_policy="random", capacity_formula="fairseq"),
    ],
    ids=["first-after", "random-fairseq"],
)
def test_static_plan_under_reference_conventions(conventions):
    torch.manual_seed(0)
    router = TopKRouter(D, E, k=2)
    router.generator = torch.Generator().manual_seed(5)
    layer = MoEFeedForward(router, ExpertBank(E, D, F), 1.0, conventions=conventions)
    dynamic, static = _both(layer.train())
    x, pad, grad, _ = _inputs()
    router.generator.manual_seed(5)
    a = _run(dynamic, x, pad, grad)
    static.router.generator.manual_seed(5)
    _assert_same(a, _run(static, x, pad, grad))


@pytest.mark.parametrize("training", [True, False])
def test_static_plan_for_thor_random_routing_per_sentence(training):
    torch.manual_seed(0)
    layer = MoEFeedForward(_router("random", 1), ExpertBank(E, D, F), None, None)
    dynamic, static = _both(layer.train(training))
    x, pad, grad, sentence = _inputs()
    dynamic.router.generator.manual_seed(3)
    a = _run(dynamic, x, pad, grad, sentence)
    static.router.generator.manual_seed(3)
    _assert_same(a, _run(static, x, pad, grad, sentence))


def test_static_plan_for_mhmoe_sub_tokens():
    torch.manual_seed(0)
    inner = MoEFeedForward(TopKRouter(D // 2, E, k=2), ExpertBank(E, D // 2, F), 1.0)
    layer = MultiHeadMoE(D, 2, inner).train()
    static = copy.deepcopy(layer)
    layer.moe.dispatch_plan, static.moe.dispatch_plan = "dynamic", "static"
    x, pad, grad, _ = _inputs()
    _assert_same(_run(layer, x, pad, grad), _run(static, x, pad, grad))


@pytest.mark.parametrize("capacity", [None, 3])
def test_aligned_groups_hold_each_experts_rows_in_priority_order(capacity):
    g = torch.Generator().manual_seed(2)
    index = torch.randint(E, (T, 2), generator=g)
    pad = torch.zeros(T, dtype=torch.bool)
    pad[-7:] = True
    ref = plan_dispatch(index, E, capacity, pad)
    plan = plan_dispatch_static(index, E, capacity, pad, align=16)
    assert plan.token_index.shape[0] == 2 * T + E * 15  # fixed by the shapes, not the routing
    assert torch.equal(plan.kept, ref.kept) and torch.equal(plan.counts, ref.counts)
    assert (plan.group_sizes % 16 == 0).all() and (plan.group_sizes >= plan.counts).all()
    start = 0
    sizes, counts = plan.group_sizes.tolist(), ref.counts.tolist()
    for e, (size, count) in enumerate(zip(sizes, counts, strict=True)):
        rows = slice(start, start + count)
        ref_rows = slice(int(ref.counts[:e].sum()), int(ref.counts[: e + 1].sum()))
        assert torch.equal(plan.token_index[rows], ref.token_index[ref_rows])
        assert torch.equal(plan.choice_index[rows], ref.choice_index[ref_rows])
        assert plan.row_valid[rows].all() and not plan.row_valid[start + count : start + size].any()
        start += size
    assert not plan.row_valid[start:].any()
    # Through dispatch, a grouped GEMM over the padded groups and combine: the same output.
    bank = ExpertBank(E, D, F, impl="grouped_mm")
    x = torch.randn(T, D, generator=g)
    weight = torch.rand(T, 2, generator=g)
    y_ref = combine(bank(dispatch(x, ref), ref.counts), ref, weight, T)
    y = combine(bank(dispatch(x, plan), plan.rows_per_group), plan, weight, T)
    torch.testing.assert_close(y, y_ref)


@pytest.mark.parametrize(
    "router,k,capacity",
    [("topk", 1, 1.25), ("topk", 2, 1.0), ("cosine", 2, None), ("fixed", 1, None)],
)
@pytest.mark.parametrize("layout", ["groups", "slots"])
def test_layer_compiles_whole_and_matches_eager(router, k, capacity, layout):
    """``torch.compile(fullgraph=True)`` traces forward and backward with no graph break (it
    raises on one). ``aot_eager`` traces as inductor does without generating code, which the
    slow test below also does.

    THOR's random draws are the exception: they come from a ``torch.Generator`` object (seeded
    per update, shared by the ranks of expert parallelism), which dynamo cannot trace; its
    fixed-expert mode is traced here, and its random mode runs sync-free on CUDA
    (``test_moe_cuda.py``)."""
    if layout == "slots" and capacity is None:
        pytest.skip("fixed slots need a capacity")
    _compile_and_compare(router, k, capacity, "aot_eager", layout)


def test_mhmoe_compiles_whole():
    torch._dynamo.reset()
    torch.manual_seed(0)
    inner = MoEFeedForward(
        TopKRouter(D // 2, E, k=2), ExpertBank(E, D // 2, F, impl="grouped_mm"), 1.0,
        dispatch_plan="static",
    )  # fmt: skip
    layer = MultiHeadMoE(D, 2, inner).to(torch.bfloat16).train()
    x, pad, _, _ = _inputs(torch.bfloat16)
    compiled = torch.compile(lambda x, pad: layer(x, pad).y, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, pad), layer(x, pad).y, rtol=2e-2, atol=2e-2)


@pytest.mark.slow
def test_layer_compiles_with_inductor():
    _compile_and_compare("topk", 2, 1.0, "inductor", "groups")


def _compile_and_compare(router, k, capacity, backend, layout):
    torch._dynamo.reset()
    torch.manual_seed(0)
    # bf16: torch's grouped_mm traces only in bf16 (the dtype of GPU training).
    bank = ExpertBank(E, D, F, impl="grouped_mm")
    layer = MoEFeedForward(
        _router(router, k), bank, capacity, dispatch_plan="static", static_layout=layout
    )
    layer = layer.to(torch.bfloat16).train()
    compiled_layer = copy.deepcopy(layer)
    x, pad, grad, sentence = _inputs(torch.bfloat16)

    def step(module, x, pad, sentence):
        out = module(x, pad, sentence)
        return out.y, sum(out.aux_losses.values(), torch.zeros(()))

    def run(fn, module):
        if router == "random":
            module.router.generator.manual_seed(3)
        xx = x.detach().clone().requires_grad_(True)
        y, aux = fn(module, xx, pad, sentence)
        ((y.float() * grad.float()).sum() + aux).backward()
        return y, xx.grad, {n: p.grad for n, p in module.named_parameters() if p.grad is not None}

    y, dx, grads = run(step, layer)
    cy, cdx, cgrads = run(torch.compile(step, fullgraph=True, backend=backend), compiled_layer)
    torch.testing.assert_close(cy, y, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(cdx, dx, rtol=2e-2, atol=2e-2)
    assert grads.keys() == cgrads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(cgrads[name], g, rtol=2e-2, atol=2e-2, msg=name)
