"""Every dispatch path equals a slow per-token reference, in outputs and gradients.

The references (``reference_*``, ``dense_expert_mean``) are imported by the other MoE tests."""

import pytest
import torch
import torch.nn.functional as F

from moe_mt.moe import (
    ExpertBank,
    MoEFeedForward,
    RandomRouter,
    SoftSlotRouter,
    TopKRouter,
    soft_combine,
    soft_counts,
    soft_dispatch,
)
from moe_mt.moe.experts import ACTIVATIONS, GLU_ACTIVATIONS


def expert_on_token(bank: ExpertBank, e: int, x_i: torch.Tensor) -> torch.Tensor:
    """Expert ``e`` of ``bank`` on one token ``x_i`` ``[d]`` (no dropout); a GLU bank's as
    Shazeer 2020 eq. 6 with biases: ``W2(act(x W1 + b1) * (x W3 + b3)) + b2``."""
    h = x_i @ bank.w1[e] + (bank.b1[e] if bank.b1 is not None else 0)
    h = ACTIVATIONS[GLU_ACTIVATIONS.get(bank.activation, bank.activation)](h)
    if bank.activation in GLU_ACTIVATIONS:
        h = h * (x_i @ bank.w3[e] + (bank.b3[e] if bank.b3 is not None else 0))
    return h @ bank.w2[e] + (bank.b2[e] if bank.b2 is not None else 0)


def dense_expert_mean(experts: ExpertBank, x: torch.Tensor) -> torch.Tensor:
    """Mean of all experts' outputs on each row of ``x`` ``[t, d]`` -> ``[t, o]``: what a layer
    that sends every token to every expert with equal weight (THOR's ``mean`` inference, the
    random router's ``mean`` mode) must give."""
    return torch.stack([experts.forward_expert(x, e) for e in range(experts.num_experts)]).mean(0)


def reference_kept(expert_index, num_experts, capacity, pad_mask):
    """Priority rule spelled out: choice 0 for every token in order, then choice 1, ..."""
    t, k = expert_index.shape
    used = [0] * num_experts
    kept = torch.zeros(t, k, dtype=torch.bool)
    for j in range(k):
        for i in range(t):
            if pad_mask is not None and pad_mask[i]:
                continue
            e = int(expert_index[i, j])
            if capacity is None or used[e] < capacity:
                kept[i, j] = True
                used[e] += 1
    return kept


def reference_moe(x, pad_mask, expert_index, combine_weight, bank, capacity):
    """``y[i] = sum_j kept[i, j] * w[i, j] * expert_{index[i, j]}(x[i])``, one token at a time."""
    kept = reference_kept(expert_index, bank.num_experts, capacity, pad_mask)
    rows = []
    for i in range(x.shape[0]):
        acc = x.new_zeros(bank.d_out)
        for j in range(expert_index.shape[1]):
            if kept[i, j]:
                e = int(expert_index[i, j])
                acc = acc + combine_weight[i, j].to(x.dtype) * expert_on_token(bank, e, x[i])
        rows.append(acc)
    return torch.stack(rows), kept


def reference_soft_moe(x, pad_mask, router, bank):
    """Soft MoE one sentence at a time, with the paper's equations on the real tokens only."""
    b, n, d = x.shape
    e, s = router.num_experts, router.slots_per_expert
    out = x.new_zeros(b, n, bank.d_out)
    phi = F.normalize(router.slot_embed, dim=-1).reshape(e * s, d)
    for bi in range(b):
        real = [i for i in range(n) if pad_mask is None or not pad_mask[bi, i]]
        if not real:
            continue
        xb = x[bi, real]  # [n_b, d]
        logits = router.scale * F.normalize(xb, dim=-1) @ phi.t()  # [n_b, e*s]
        dispatch_w = logits.softmax(dim=0)  # over tokens
        combine_w = logits.softmax(dim=1)  # over slots
        slots = dispatch_w.t() @ xb  # [e*s, d]
        slot_out = torch.stack([expert_on_token(bank, j // s, slots[j]) for j in range(e * s)])
        out[bi, real] = combine_w @ slot_out
    return out


D, F_, E, T = 8, 12, 4, 23


def make_layer(k, impl, dtype, factor, seed=0, **bank_kwargs):
    torch.manual_seed(seed)
    router = TopKRouter(D, E, k=k, init_scale=10.0)  # large init: varied routing
    bank = ExpertBank(E, D, F_, impl=impl, **bank_kwargs)
    layer = MoEFeedForward(router, bank, capacity_factor=factor, eval_capacity_factor=factor)
    return layer.to(dtype).train()


def grads(out, inputs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * g).sum(), inputs)


CASES = [
    # k, capacity factor (None = no dropping), with padding, impl, dtype, tolerance
    (1, None, False, "loop", torch.float64, 1e-10),
    (1, None, True, "loop", torch.float64, 1e-10),
    (1, 0.5, True, "loop", torch.float64, 1e-10),
    (1, 1.0, False, "loop", torch.float64, 1e-10),
    (2, None, True, "loop", torch.float64, 1e-10),
    (2, 0.6, False, "loop", torch.float64, 1e-10),
    (2, 0.6, True, "loop", torch.float64, 1e-10),
    (1, None, True, "fused", torch.float64, 1e-10),
    (1, 0.5, True, "fused", torch.float64, 1e-10),
    (2, None, False, "fused", torch.float64, 1e-10),
    (2, 0.6, True, "fused", torch.float64, 1e-10),
    (2, 0.6, True, "fused", torch.float32, 1e-5),
    (1, 0.5, True, "grouped_mm", torch.float32, 1e-5),
    (2, 0.6, True, "grouped_mm", torch.float32, 1e-5),
    (2, None, False, "grouped_mm", torch.float32, 1e-5),
]


@pytest.mark.parametrize("k,factor,padded,impl,dtype,tol", CASES)
@pytest.mark.parametrize("plan", ["dynamic", "static-groups", "static-slots"])
def test_layer_matches_per_token_reference(k, factor, padded, impl, dtype, tol, plan):
    """Both dispatch plans (the CPU's and CUDA's) and the static plan's two layouts."""
    layer = make_layer(k, impl, dtype, factor)
    layer.dispatch_plan, _, layout = plan.partition("-")
    layer.static_layout = layout or "auto"
    x = torch.randn(T, D, dtype=dtype, requires_grad=True)
    pad = torch.rand(T) < 0.3 if padded else None
    out = layer(x, pad)
    routing = layer.router(x, pad)
    capacity = layer.capacity(T - (int(pad.sum()) if padded else 0), k)
    ref, kept = reference_moe(
        x, pad, routing.expert_index, routing.combine_weight, layer.experts, capacity
    )
    assert torch.equal(out.plan.kept, kept)
    if factor is not None and factor < 1:
        assert not kept.all(), "the case should drop something"
    torch.testing.assert_close(out.y, ref, atol=tol, rtol=tol)
    params = [x, *layer.parameters()]
    for got, want in zip(grads(out.y, params), grads(ref, params), strict=True):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    if padded:
        assert (out.y[pad] == 0).all()


@pytest.mark.parametrize("impl", ["fused", "loop"])
@pytest.mark.parametrize("activation", ["relu", "silu", "gelu_tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_bank_variants_match_reference(impl, activation, bias):
    layer = make_layer(2, impl, torch.float64, 0.6, activation=activation, bias=bias)
    x = torch.randn(T, D, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    routing = layer.router(x)
    ref, _ = reference_moe(
        x, None, routing.expert_index, routing.combine_weight, layer.experts, layer.capacity(T, 2)
    )
    torch.testing.assert_close(out.y, ref)
    params = [x, *layer.parameters()]
    for got, want in zip(grads(out.y, params), grads(ref, params), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("impl", ["fused", "loop"])
def test_bank_with_output_width_other_than_input(impl):
    """MH-MoE's experts see sub-tokens narrower than the model: widths are the bank's own."""
    layer = make_layer(2, impl, torch.float64, None, d_out=3)
    x = torch.randn(T, D, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    routing = layer.router(x)
    ref, _ = reference_moe(
        x, None, routing.expert_index, routing.combine_weight, layer.experts, None
    )
    assert out.y.shape == (T, 3)
    torch.testing.assert_close(out.y, ref)
    params = [x, *layer.parameters()]
    for got, want in zip(grads(out.y, params), grads(ref, params), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("k,factor,bias", [(1, 0.5, True), (2, None, False), (2, 0.6, True)])
def test_inference_path_matches_reference(k, factor, bias):
    """Without autograd the fused bank takes its inference path: same outputs."""
    layer = make_layer(k, "fused", torch.float64, factor, bias=bias).eval()
    layer.eval_capacity_factor = factor
    x = torch.randn(T, D, dtype=torch.float64)
    pad = torch.rand(T) < 0.3
    with torch.inference_mode():
        out = layer(x, pad)
        routing = layer.router(x, pad)
        capacity = layer.capacity(int((~pad).sum()), k)
        ref, _ = reference_moe(
            x, pad, routing.expert_index, routing.combine_weight, layer.experts, capacity
        )
    torch.testing.assert_close(out.y, ref)


def test_expert_dropout_matches_loop_under_the_same_seed():
    """Fused and loop draw one mask per step over the same rows; same seed, same result."""
    x = torch.randn(T, D)
    results = []
    for impl in ("fused", "loop"):
        layer = make_layer(1, impl, torch.float32, None, dropout=0.5)
        torch.manual_seed(5)
        results.append(layer(x).y)
    torch.testing.assert_close(*results)
    assert not torch.equal(results[0], layer.eval()(x).y)


def test_tbd_helper_matches_flat():
    layer = make_layer(2, "loop", torch.float64, 1.0)
    n, b = 5, 3
    x = torch.randn(n, b, D, dtype=torch.float64)
    padding_mask = torch.zeros(b, n, dtype=torch.bool)
    padding_mask[1, 3:] = True
    out = layer.forward_tbd(x, padding_mask)
    # Sentence by sentence: flat row j * n + i is position i of sentence j.
    flat = layer(x.transpose(0, 1).reshape(b * n, D), padding_mask.reshape(b * n))
    assert out.y.shape == (n, b, D)
    torch.testing.assert_close(out.y.transpose(0, 1).reshape(b * n, D), flat.y)
    assert (out.y[3:, 1] == 0).all()


def test_padding_never_influences_real_tokens():
    """Pads inserted between real tokens change neither outputs, losses nor stats."""
    layer = make_layer(2, "loop", torch.float64, 0.7)
    x = torch.randn(T, D, dtype=torch.float64)
    pad = torch.zeros(T, dtype=torch.bool)
    pad[[1, 5, 6, 17]] = True
    x_junk = x.clone()
    x_junk[pad] = 1e3 * torch.randn(int(pad.sum()), D, dtype=torch.float64)
    with_pads = layer(x_junk, pad)
    without = layer(x[~pad])
    torch.testing.assert_close(with_pads.y[~pad], without.y)
    for name in ("balance", "z"):
        torch.testing.assert_close(with_pads.aux_losses[name], without.aux_losses[name])
    for name, value in with_pads.stats.as_dict().items():
        torch.testing.assert_close(value, without.stats.as_dict()[name])


def test_random_router_modes_match_references():
    torch.manual_seed(0)
    bank = ExpertBank(E, D, F_).double()
    x = torch.randn(T, D, dtype=torch.float64)
    pad = torch.zeros(T, dtype=torch.bool)
    pad[-3:] = True
    router = RandomRouter(E, granularity="token", mode="mean")
    layer = MoEFeedForward(router, bank, capacity_factor=None).eval()
    out = layer(x, pad)
    torch.testing.assert_close(out.y[~pad], dense_expert_mean(bank, x[~pad]))
    assert (out.y[pad] == 0).all()
    router.mode, router.fixed_expert = "fixed", 2
    torch.testing.assert_close(layer(x).y, bank.forward_expert(x, 2))
    router.mode = "random"
    out = layer(x, pad)
    ref, _ = reference_moe(x, pad, out.routing.expert_index, out.routing.combine_weight, bank, None)
    torch.testing.assert_close(out.y, ref)


@pytest.mark.parametrize("slots", [1, 2])
def test_soft_moe_matches_per_sentence_reference(slots):
    torch.manual_seed(0)
    b, n = 3, 5
    router = SoftSlotRouter(D, E, slots).double()
    with torch.no_grad():
        router.scale.fill_(3.0)
    bank = ExpertBank(E, D, F_).double()
    x = torch.randn(b, n, D, dtype=torch.float64, requires_grad=True)
    pad = torch.zeros(b, n, dtype=torch.bool)
    pad[1, 3:] = True
    pad[2, :] = True  # an all-pad sentence
    routing = router(x, pad)
    y = soft_combine(bank(soft_dispatch(x, routing), soft_counts(routing)), routing)
    ref = reference_soft_moe(x, pad, router, bank)
    torch.testing.assert_close(y, ref)
    assert (y[pad] == 0).all()
    params = [x, *router.parameters(), *bank.parameters()]
    for got, want in zip(grads(y, params), grads(ref, params), strict=True):
        torch.testing.assert_close(got, want)
