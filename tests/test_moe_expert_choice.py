"""Expert-choice routing (Zhou et al. 2022): hand-computed choices, pads, capacity over non-pad
tokens, and the layer on every dispatch plan against a per-token reference."""

import math

import pytest
import torch

from moe_mt.moe import ExpertBank, ExpertChoiceRouter, MoEFeedForward, router_z_loss
from moe_mt.moe.router_expert_choice import (
    DECODER_REFUSAL,
    EXPERT_PARALLEL_REFUSAL,
    top_tokens_per_expert,
)
from tests.test_moe_reference import expert_on_token, grads


def router_with_probs(probs, capacity_factor):
    """A router whose gate turns one-hot inputs into logits ``log(probs)``: ``S`` is ``probs``."""
    t, e = probs.shape
    router = ExpertChoiceRouter(t, e, capacity_factor).double()
    with torch.no_grad():
        router.weight.copy_(probs.log().t())
    return router, torch.eye(t, dtype=torch.float64)


S3 = [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]]
HAND_CASES = [
    # S [t, e], capacity factor c, chosen tokens per expert (C = ceil(c T / E)), without expert
    ([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]], 1.0, [[0, 2], [1, 3]], 0),
    (S3, 0.75, [[0], [3], [2]], 1),  # C = 1: token 1 is no expert's best
    (S3, 1.5, [[0, 1], [1, 3], [2, 3]], 0),  # C = 2: tokens 1 and 3 get two experts
    # ties go to the earliest tokens: both experts take tokens 0 and 1
    ([[0.5, 0.5]] * 4, 1.0, [[0, 1], [0, 1]], 2),
]


@pytest.mark.parametrize("probs,factor,chosen,without", HAND_CASES)
def test_hand_computed_choices(probs, factor, chosen, without):
    probs = torch.tensor(probs, dtype=torch.float64)
    t, e = probs.shape
    router, x = router_with_probs(probs, factor)
    routing = router(x)
    active = torch.zeros(t, e, dtype=torch.bool)
    for expert, tokens in enumerate(chosen):
        active[tokens, expert] = True
    assert torch.equal(routing.active, active)
    assert torch.equal(routing.expert_index, torch.arange(e).expand(t, e))
    torch.testing.assert_close(routing.probs, probs)
    torch.testing.assert_close(routing.combine_weight, probs * active)
    assert routing.stats["tokens_without_expert"].item() == without / t
    assert set(routing.aux_losses) == {"z"}


def test_pads_are_never_chosen_and_take_no_capacity():
    """Pads with the highest scores for every expert: skipped, C over the 5 real tokens."""
    probs = torch.tensor([[0.45, 0.45, 0.1]] * 3 + [[0.3, 0.2, 0.5]] * 5, dtype=torch.float64)
    pad = torch.tensor([True, True, True, False, False, False, False, False])
    router, x = router_with_probs(probs, 1.0)
    routing = router(x, pad)
    capacity = math.ceil(1.0 * 5 / 3)  # 2, not ceil(8 / 3) = 3
    assert not routing.active[pad].any()
    assert (routing.combine_weight[pad] == 0).all()
    assert routing.active.sum(0).tolist() == [capacity] * 3
    assert routing.active[3:5].all(), "ties among the real tokens: the earliest two"
    assert routing.stats["tokens_without_expert"].item() == pytest.approx(3 / 5)


def test_capacity_is_clamped_to_the_real_tokens():
    """c = E: every expert takes every real token, none of the pads."""
    torch.manual_seed(0)
    router = ExpertChoiceRouter(6, 3, capacity_factor=3.0)
    x, pad = torch.randn(7, 6), torch.tensor([False, True, False, False, True, True, False])
    routing = router(x, pad)
    assert torch.equal(routing.active, ~pad[:, None].expand(7, 3))
    assert routing.stats["tokens_without_expert"].item() == 0.0
    assert not router(x, torch.ones(7, dtype=torch.bool)).active.any()  # an all-pad batch


def test_pads_change_nothing_for_the_real_tokens():
    """Pads inserted among real tokens (with large inputs): same choices, weights, z-loss and
    stats as the real tokens alone."""
    torch.manual_seed(0)
    router = ExpertChoiceRouter(8, 4, capacity_factor=1.5, init_scale=10.0).double()
    x = torch.randn(20, 8, dtype=torch.float64)
    pad = torch.zeros(20, dtype=torch.bool)
    pad[[0, 6, 7, 13, 19]] = True
    x_junk = x.clone()
    x_junk[pad] = 1e3 * torch.randn(int(pad.sum()), 8, dtype=torch.float64)
    with_pads, alone = router(x_junk, pad), router(x[~pad])
    assert torch.equal(with_pads.active[~pad], alone.active)
    torch.testing.assert_close(with_pads.combine_weight[~pad], alone.combine_weight)
    torch.testing.assert_close(with_pads.aux_losses["z"], alone.aux_losses["z"])
    for name, value in with_pads.stats.items():
        torch.testing.assert_close(value, alone.stats[name])
    torch.testing.assert_close(with_pads.aux_losses["z"], router_z_loss(router.logits(x_junk), pad))


def reference_choice(scores, capacity, pad_mask):
    """Each expert's ``capacity`` best real tokens, ties to the earliest, by a stable sort."""
    t, e = scores.shape
    active = torch.zeros(t, e, dtype=torch.bool)
    for j in range(e):
        real = [i for i in range(t) if pad_mask is None or not pad_mask[i]]
        best = sorted(real, key=lambda i: (-float(scores[i, j]), i))[:capacity]
        active[best, j] = True
    return active


@pytest.mark.parametrize("seed", range(5))
def test_choice_with_many_ties_matches_a_stable_sort(seed):
    g = torch.Generator().manual_seed(seed)
    t, e = 30, 5
    scores = torch.randint(0, 4, (t, e), generator=g).double()  # ties everywhere
    pad = torch.rand(t, generator=g) < 0.3
    capacity = int(torch.randint(0, int((~pad).sum()) + 1, (), generator=g))
    masked = scores.masked_fill(pad[:, None], float("-inf"))
    got = top_tokens_per_expert(masked, torch.tensor(capacity), t)
    assert torch.equal(got, reference_choice(scores, capacity, pad))


def test_tokens_without_expert_counts_real_tokens():
    torch.manual_seed(1)
    router = ExpertChoiceRouter(8, 4, capacity_factor=1.0, init_scale=10.0)
    x, pad = torch.randn(40, 8), torch.rand(40) < 0.25
    routing = router(x, pad)
    unchosen = sum(1 for i in range(40) if not pad[i] and not routing.active[i].any())
    assert unchosen > 0, "the case should leave some token without an expert"
    want = unchosen / int((~pad).sum())
    assert routing.stats["tokens_without_expert"].item() == pytest.approx(want)
    assert not routing.stats["tokens_without_expert"].requires_grad


D, F_, E, T = 8, 12, 4, 23


def reference_expert_choice(x, pad_mask, router, bank):
    """``y[i] = sum_{e chose i} S[i, e] * expert_e(x[i])``, one token at a time; the choice by a
    stable sort of each expert's scores over the real tokens."""
    probs = router.logits(x).softmax(dim=-1)
    real = x.shape[0] if pad_mask is None else int((~pad_mask).sum())
    capacity = min(math.ceil(router.capacity_factor * real / router.num_experts), real)
    active = reference_choice(probs.detach(), capacity, pad_mask)
    rows = []
    for i in range(x.shape[0]):
        acc = x.new_zeros(bank.d_out)
        for e in range(router.num_experts):
            if active[i, e]:
                acc = acc + probs[i, e] * expert_on_token(bank, e, x[i])
        rows.append(acc)
    return torch.stack(rows), active


def make_layer(plan, capacity_factor=None, impl="fused", factor=2.0, seed=0):
    torch.manual_seed(seed)
    router = ExpertChoiceRouter(D, E, factor, init_scale=10.0)  # large init: varied routing
    bank = ExpertBank(E, D, F_, impl=impl)
    dispatch_plan, _, layout = plan.partition("-")
    layer = MoEFeedForward(
        router, bank, capacity_factor=capacity_factor, dispatch_plan=dispatch_plan,
        static_layout=layout or "auto",
    )  # fmt: skip
    return layer.double().train()


PLANS = ["dynamic", "static-groups", "static-slots"]


@pytest.mark.parametrize("factor", [1.0, 2.0])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("impl", ["fused", "loop"])
@pytest.mark.parametrize("plan", PLANS)
def test_layer_matches_per_token_reference(plan, impl, padded, factor):
    """capacity_factor=None: the router enforces C, the layer drops nothing."""
    layer = make_layer(plan, impl=impl, factor=factor)
    x = torch.randn(T, D, dtype=torch.float64, requires_grad=True)
    pad = torch.rand(T) < 0.3 if padded else None
    out = layer(x, pad)
    ref, active = reference_expert_choice(x, pad, layer.router, layer.experts)
    experts_per_token = active.sum(1) if pad is None else active.sum(1)[~pad]
    assert experts_per_token.max() > 1, "the case should give some token several experts"
    if factor == 1.0:
        assert experts_per_token.min() == 0, "the case should leave some token without one"
    assert torch.equal(out.routing.active, active)
    assert torch.equal(out.plan.kept, active)
    assert out.stats.fraction_dropped.item() == 0.0
    real = T - (int(pad.sum()) if padded else 0)
    capacity = math.ceil(factor * real / E)
    assert out.stats.tokens_per_expert.tolist() == [capacity] * E
    torch.testing.assert_close(out.y, ref, atol=1e-10, rtol=1e-10)
    params = [x, *layer.parameters()]
    for got, want in zip(grads(out.y, params), grads(ref, params), strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    if padded:
        assert (out.y[pad] == 0).all()


@pytest.mark.parametrize("plan", PLANS)
def test_a_layer_capacity_of_one_drops_nothing(plan):
    """With k = E a layer capacity ``ceil(1.0 * E * T / E) = T`` holds every choice; it is what
    makes the static plan take its fixed-slot layout (without a capacity it takes groups)."""
    layer = make_layer(plan, capacity_factor=1.0)
    x = torch.randn(T, D, dtype=torch.float64, requires_grad=True)
    pad = torch.rand(T) < 0.3
    out = layer(x, pad)
    assert (out.plan.slots is not None) == (plan == "static-slots")
    ref, active = reference_expert_choice(x, pad, layer.router, layer.experts)
    assert torch.equal(out.plan.kept, active)
    torch.testing.assert_close(out.y, ref, atol=1e-10, rtol=1e-10)
    params = [x, *layer.parameters()]
    for got, want in zip(grads(out.y, params), grads(ref, params), strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_gradient_reaches_the_gate():
    layer = make_layer("dynamic")
    x = torch.randn(T, D, dtype=torch.float64)
    out = layer(x)
    (out.y.square().sum() + out.aux_losses["z"]).backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


def test_a_sentence_depends_on_its_batch():
    """Routing over the flat batch (the paper's design, hence encoder-only): changing sentence 1
    changes sentence 0's output. Flat order is batch-major (flatten_tbd)."""
    layer = make_layer("dynamic").eval()
    n, b = 6, 2
    x = torch.randn(n, b, D, dtype=torch.float64)
    y = layer.forward_tbd(x).y
    x2 = x.clone()
    x2[:, 1] = 3 * torch.randn(n, D, dtype=torch.float64)
    assert not torch.allclose(layer.forward_tbd(x2).y[:, 0], y[:, 0])
    flat = layer(x.transpose(0, 1).reshape(b * n, D)).y
    torch.testing.assert_close(y.transpose(0, 1).reshape(b * n, D), flat)


def test_router_math_in_fp32_under_autocast():
    router = ExpertChoiceRouter(D, E)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = router(torch.randn(T, D).bfloat16())
    assert routing.probs.dtype == routing.combine_weight.dtype == torch.float32


def test_api():
    router = ExpertChoiceRouter(D, E, capacity_factor=1.5)
    assert router.choices_per_row() == 1.5 and isinstance(router.choices_per_row(), float)
    assert router.k == router.num_experts == E
    assert router.macs_per_row() == D * E
    assert not router.takes_conventions()
    std = router.weight.std().item()
    assert 0.3 * math.sqrt(0.1 / D) < std < 1.2 * math.sqrt(0.1 / D)
    for bad in (0.0, -1.0, E + 0.5):
        with pytest.raises(ValueError, match="capacity_factor"):
            ExpertChoiceRouter(D, E, capacity_factor=bad)
    for line in (DECODER_REFUSAL, EXPERT_PARALLEL_REFUSAL):
        assert "\n" not in line and line.startswith("expert-choice routing")
