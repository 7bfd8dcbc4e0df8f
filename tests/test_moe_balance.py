"""The 2024-2025 routing rules, each against a hand computation: sigmoid scores with top-k
renormalisation, auxiliary-loss-free bias balancing, the sequence-level and global-batch balance
losses, and shared experts."""

import math

import pytest
import torch

from moe_mt.moe import ExpertBank, MoEFeedForward, SharedExpertMoE, TopKRouter, route_top_k
from moe_mt.moe.balance import (
    BiasBalancer,
    GlobalBatchLoad,
    global_batch_balance_loss,
    sequence_balance_loss,
)
from moe_mt.moe.losses import load_balance_loss
from tests.test_expert_parallel import run_ranks
from tests.test_moe_reference import grads, reference_moe


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def identity_router(e: int, **kwargs) -> TopKRouter:
    """A top-k router over ``e`` experts whose logits are its input (``d = e``, W = I)."""
    router = TopKRouter(e, e, **kwargs)
    with torch.no_grad():
        router.weight.copy_(torch.eye(e))
    return router


# -- sigmoid scores ---------------------------------------------------------------------------


def test_sigmoid_top_k_renormalises_the_chosen_scores_and_scales_them():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]], dtype=torch.float64)
    r = route_top_k(logits, 2, score_func="sigmoid", scale=2.5)
    assert r.expert_index.tolist() == [[2, 1]]
    s2, s1 = sigmoid(2.0), sigmoid(1.0)
    want = [2.5 * s2 / (s2 + s1), 2.5 * s1 / (s2 + s1)]
    torch.testing.assert_close(r.combine_weight, torch.tensor([want], dtype=torch.float64))
    # probs: DeepSeek-V3's s' (eq. 19), the sigmoid scores normalised over experts
    s = [sigmoid(v) for v in (0.0, 1.0, 2.0, -1.0)]
    normalised = torch.tensor([[v / sum(s) for v in s]], dtype=torch.float64)
    torch.testing.assert_close(r.probs, normalised)
    raw = route_top_k(logits, 2, normalize_top_k=False, score_func="sigmoid")
    torch.testing.assert_close(raw.combine_weight, torch.tensor([[s2, s1]], dtype=torch.float64))


def test_sigmoid_weights_carry_the_gradient_of_each_score():
    logits = torch.tensor([[0.3, -0.2, 1.1]], dtype=torch.float64, requires_grad=True)
    w = route_top_k(logits, 1, score_func="sigmoid").combine_weight
    (g,) = torch.autograd.grad(w.sum(), logits)
    s = sigmoid(1.1)
    torch.testing.assert_close(g, torch.tensor([[0.0, 0.0, s * (1 - s)]], dtype=torch.float64))


def test_reference_conventions_are_refused_for_a_sigmoid_router():
    from moe_mt.moe import RoutingConventions

    with pytest.raises(ValueError, match="sigmoid scores"):
        MoEFeedForward(
            TopKRouter(4, 4, 2, score_func="sigmoid"), ExpertBank(4, 4, 8),
            conventions=RoutingConventions(renormalize="after"),
        )  # fmt: skip


# -- bias balancing -----------------------------------------------------------------------------


def test_the_bias_changes_the_selection_but_not_the_weights():
    router = identity_router(3, k=1, bias_update_rate=0.5)
    x = torch.tensor([[2.0, 1.5, 0.0]], dtype=torch.float64)
    router.double().eval()
    before = router(x)
    assert before.expert_index.tolist() == [[0]]
    router.balancer.bias_steps.copy_(torch.tensor([-1, 0, 0]))  # bias -0.5 on expert 0
    after = router(x)
    assert after.expert_index.tolist() == [[1]]
    probs = torch.softmax(x, -1)
    # The weight is expert 1's unbiased probability, not the biased score's.
    torch.testing.assert_close(after.combine_weight, probs[:, 1:2])
    torch.testing.assert_close(after.probs, probs)


def test_the_sign_update_moves_each_bias_toward_the_mean_load():
    balancer = BiasBalancer(4, 0.001)
    balancer.record(torch.tensor([[0], [0], [0], [0], [0], [1], [2], [3]]), None)
    balancer.end_update()
    # mean load 2: expert 0 is over (-u), the others under (+u)
    assert balancer.bias_steps.tolist() == [-1, 1, 1, 1]
    torch.testing.assert_close(balancer.bias, torch.tensor([-0.001, 0.001, 0.001, 0.001]))
    balancer.record(torch.tensor([[0], [1], [2], [3]]), None)
    balancer.end_update()
    assert balancer.bias_steps.tolist() == [-1, 1, 1, 1], "a load at the mean moves nothing"


def test_pads_count_no_load_and_an_update_starts_from_none():
    balancer = BiasBalancer(2, 0.01)
    pad = torch.tensor([False, True, True])
    balancer.record(torch.tensor([[0], [1], [1]]), pad)
    balancer.end_update()
    assert balancer.bias_steps.tolist() == [-1, 1]
    balancer.record(torch.tensor([[1]]), None)
    balancer.end_update()
    assert balancer.bias_steps.tolist() == [0, 0], "the last update's load was not counted again"


def test_the_load_is_that_of_the_whole_update_across_micro_batches():
    torch.manual_seed(0)
    x = torch.randn(40, 6)
    one = TopKRouter(6, 4, 2, init_scale=10.0, bias_update_rate=0.01).train()
    two = TopKRouter(6, 4, 2, init_scale=10.0, bias_update_rate=0.01).train()
    two.load_state_dict(one.state_dict())
    for router, batches in ((one, [x]), (two, [x[:15], x[15:]])):
        for batch in batches:
            router(batch)
        router.balancer.end_update()
    assert one.balancer.bias_steps.abs().sum() > 0
    assert torch.equal(one.balancer.bias_steps, two.balancer.bias_steps)


def test_bias_balancing_evens_out_a_skewed_router():
    """Repeated updates on fixed skewed scores bring every expert near the mean load (the sign
    rule oscillates by about one step around it: the mean over the last updates is compared)."""
    torch.manual_seed(0)
    e = 4
    router = identity_router(e, k=1, bias_update_rate=0.01).train()
    x = torch.randn(400, e) * 0.3 + torch.tensor([1.0, 0.5, 0.0, -0.5])
    loads = []
    for _ in range(250):
        with torch.no_grad():
            routing = router(x)
        router.balancer.end_update()
        loads.append(torch.bincount(routing.expert_index[:, 0], minlength=e).float())
    first, last = loads[0], torch.stack(loads[-50:]).mean(0)
    assert first.max() / first.mean() > 2.0, "the case should start unbalanced"
    assert last.max() / last.mean() < 1.1


def test_the_bias_is_a_checkpointed_buffer_exact_in_half_precision():
    router = TopKRouter(4, 4, 1, bias_update_rate=0.001)
    router.balancer.bias_steps.copy_(torch.tensor([1001, -3, 0, 7]))
    state = router.state_dict()
    assert "balancer.bias_steps" in state
    router.half()  # what fairseq's --fp16 does to floating buffers
    assert router.balancer.bias_steps.dtype == torch.long
    fresh = TopKRouter(4, 4, 1, bias_update_rate=0.001)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.balancer.bias, torch.tensor([1.001, -0.003, 0.0, 0.007]))


def _bias_worker(rank: int, out: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(40, 6)
    router = TopKRouter(6, 4, 2, init_scale=10.0, bias_update_rate=0.01).train()
    layer = MoEFeedForward(router, ExpertBank(4, 6, 8), balance_scope="global_batch").train()
    mine = x[:25] if rank == 0 else x[25:]  # unequal shares: the sum, not a mean, counts
    layer.global_load.set_num_updates(0)
    loss = layer(mine).aux_losses["balance"]
    router.balancer.end_update()
    torch.save(
        {"bias": router.balancer.bias_steps, "load": layer.global_load.load, "loss": loss},
        f"{out}/rank{rank}.pt",
    )


def test_two_gloo_ranks_count_the_load_of_the_concatenated_batch(tmp_path):
    run_ranks(_bias_worker, (str(tmp_path),), world=2)
    torch.manual_seed(0)
    x = torch.randn(40, 6)
    router = TopKRouter(6, 4, 2, init_scale=10.0, bias_update_rate=0.01).train()
    layer = MoEFeedForward(router, ExpertBank(4, 6, 8), balance_scope="global_batch").train()
    layer.global_load.set_num_updates(0)
    layer(x)
    router.balancer.end_update()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for got in ranks:
        assert torch.equal(got["bias"], router.balancer.bias_steps)
        assert torch.equal(got["load"], layer.global_load.load)
    # Each rank's loss uses the global frequencies with its own P.
    routing = router(x[:25])
    f = layer.global_load.load.double() / layer.global_load.load.sum()
    want = 4 * (f * routing.probs.double().mean(0)).sum()
    torch.testing.assert_close(ranks[0]["loss"].double(), want, rtol=1e-6, atol=1e-6)


# -- the balance losses' scopes -----------------------------------------------------------------


def test_sequence_balance_loss_is_the_mean_of_per_sentence_switch_losses():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(7, 3, dtype=torch.float64), -1)
    index = probs.topk(1, -1).indices
    sentence = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    pad = torch.tensor([False, False, True, False, False, True, True])  # sentence 2: all pads
    got = sequence_balance_loss(probs, index, sentence, pad)
    want = torch.stack(
        [load_balance_loss(probs[rows], index[rows]) for rows in ([0, 1], [3, 4])]
    ).mean()
    torch.testing.assert_close(got, want)
    # one sentence: the micro-batch loss
    whole = torch.zeros(7, dtype=torch.long)
    torch.testing.assert_close(
        sequence_balance_loss(probs, index, whole, pad), load_balance_loss(probs, index, pad)
    )


def test_global_batch_loss_counts_the_micro_batches_of_the_update_so_far():
    load = GlobalBatchLoad(3)
    load.set_num_updates(0)
    load.add(torch.tensor([4, 0, 0]))
    so_far = load.add(torch.tensor([0, 2, 2]))
    assert so_far.tolist() == [4, 2, 2]
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]], dtype=torch.float64)
    got = global_batch_balance_loss(probs, so_far)
    f = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    torch.testing.assert_close(got, 3 * (f * probs.mean(0)).sum())
    load.set_num_updates(1)
    assert load.load is None, "a new update starts from no counts"


def test_a_layers_scoped_balance_loss_replaces_the_micro_batch_one():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 5)  # [n, b, d]
    pad = torch.tensor([[False, False, True], [False, False, False]])
    layer = MoEFeedForward(TopKRouter(5, 4, 1, init_scale=10.0), ExpertBank(4, 5, 6))
    layer.balance_scope = "sequence"
    out = layer.forward_tbd(x, pad)  # flat token j * n + i: position i of sentence j
    probs = out.routing.probs
    want = torch.stack(
        [load_balance_loss(probs[r], out.routing.expert_index[r]) for r in ([0, 1], [3, 4, 5])]
    ).mean()
    torch.testing.assert_close(out.aux_losses["balance"], want)


# -- shared experts ---------------------------------------------------------------------------


@pytest.mark.parametrize("gated", [False, True])
def test_shared_experts_add_a_dense_ffn_to_the_routed_output(gated):
    torch.manual_seed(0)
    layer = MoEFeedForward(TopKRouter(6, 4, 2, init_scale=10.0), ExpertBank(4, 6, 5)).double()
    shared = ExpertBank(1, 6, 10).double()
    block = SharedExpertMoE(layer, shared, gate=gated).double()
    x = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    pad = torch.tensor([False] * 7 + [True] * 2)
    out = block(x, pad)
    routed = layer(x, pad).y
    dense = shared.forward_expert(x, 0)
    g = torch.sigmoid(x @ block.gate.weight[0])[:, None] if gated else 1.0
    want = (routed + g * dense) * (~pad)[:, None]
    torch.testing.assert_close(out.y, want)
    params = [x, *block.parameters()]
    for got, ref in zip(grads(out.y, params), grads(want, params), strict=True):
        torch.testing.assert_close(got, ref)
    if gated:
        torch.testing.assert_close(out.aux_losses["shared_gate"], g[:7].mean())


# -- the per-token reference on both plans ------------------------------------------------------


@pytest.mark.parametrize("plan", ["dynamic", "static-groups", "static-slots"])
@pytest.mark.parametrize("k,factor", [(2, None), (2, 0.6), (1, 0.5)])
def test_sigmoid_biased_router_matches_the_per_token_reference(plan, k, factor):
    torch.manual_seed(0)
    router = TopKRouter(8, 4, k, init_scale=10.0, score_func="sigmoid", bias_update_rate=0.3)
    router.balancer.bias_steps.copy_(torch.tensor([2, -1, 0, 1]))
    layer = MoEFeedForward(router, ExpertBank(4, 8, 12), factor, factor).double().train()
    layer.dispatch_plan, _, layout = plan.partition("-")
    layer.static_layout = layout or "auto"
    x = torch.randn(23, 8, dtype=torch.float64, requires_grad=True)
    pad = torch.rand(23) < 0.3
    out = layer(x, pad)
    routing = layer.router(x, pad)
    capacity = layer.capacity(23 - int(pad.sum()), k)
    ref, kept = reference_moe(
        x, pad, routing.expert_index, routing.combine_weight, layer.experts, capacity
    )
    assert torch.equal(out.plan.kept, kept)
    torch.testing.assert_close(out.y, ref)
    params = [x, *layer.parameters()]
    for got, want in zip(grads(out.y, params), grads(ref, params), strict=True):
        torch.testing.assert_close(got, want)
