"""Reference conventions as options (moe_mt/moe/conventions.py), each against a hand-computed case;
and Expert Output Masking (moe_mt/moe/eom.py)."""

import math

import pytest
import torch

from moe_mt.moe import ExpertBank, MoEFeedForward, TopKRouter, route_top_k
from moe_mt.moe.conventions import (
    RoutingConventions,
    apply_routing_conventions,
    fairseq_capacity,
    gumbel_second_choice,
    renormalize_kept,
)
from moe_mt.moe.eom import expert_output_mask


def close(tensor, expected):
    torch.testing.assert_close(tensor, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def routing_of(probs, k=2, pad_mask=None):
    return route_top_k(torch.tensor(probs).log(), k, pad_mask)


# Token 0: first e0, second e1; token 1: first e1, second e2 (E = 3).
PROBS = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]


def test_balance_over_all_choices_is_the_default():
    # f = (1, 2, 1) / 4 assignments, P = (0.4, 0.4, 0.2): 3 * (0.1 + 0.2 + 0.05) = 1.05
    r = apply_routing_conventions(routing_of(PROBS), RoutingConventions())
    assert float(r.aux_losses["balance"]) == pytest.approx(1.05)


def test_balance_over_first_choices_only():
    # GShard / fairseq: f = (1, 1, 0) / 2 first choices: 3 * (0.5 * 0.4 + 0.5 * 0.4) = 1.2,
    # which is fairseq's mean(me * ce) * E^2 = (0.4*0.5 + 0.4*0.5 + 0) / 3 * 9.
    r = apply_routing_conventions(routing_of(PROBS), RoutingConventions(balance_choices="first"))
    assert float(r.aux_losses["balance"]) == pytest.approx(1.2)


def test_renormalize_after_dropping_over_the_kept_choices():
    weight = torch.tensor([[0.6, 0.3], [0.5, 0.3]])
    kept = torch.tensor([[True, False], [True, True]])
    close(renormalize_kept(weight, kept), [[1.0, 0.0], [0.625, 0.375]])
    none_kept = renormalize_kept(weight, torch.zeros(2, 2, dtype=torch.bool))
    assert none_kept.tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_after_leaves_the_raw_probabilities_to_the_layer():
    r = apply_routing_conventions(routing_of(PROBS), RoutingConventions(renormalize="after"))
    close(r.combine_weight, [[0.6, 0.3], [0.5, 0.3]])
    before = apply_routing_conventions(routing_of(PROBS), RoutingConventions())
    close(before.combine_weight, [[2 / 3, 1 / 3], [0.625, 0.375]])


def two_expert_layer(renormalize: str) -> tuple[MoEFeedForward, torch.Tensor]:
    """E = 2, top-2, capacity 1 per expert: token 0 prefers e0, token 1 e1, so both second
    choices are dropped. Router logits x W^T with W = I: probs softmax(x[:2])."""
    torch.manual_seed(0)
    router = TopKRouter(2, 2, k=2)
    with torch.no_grad():
        router.weight.copy_(torch.eye(2))
    layer = MoEFeedForward(
        router, ExpertBank(2, 2, 3), capacity_factor=0.5,
        conventions=RoutingConventions(renormalize=renormalize),
    )  # fmt: skip
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    return layer.train(), x


@pytest.mark.parametrize("renormalize", ["before", "after"])
def test_layer_top2_weight_after_a_dropped_second_choice(renormalize):
    layer, x = two_expert_layer(renormalize)
    out = layer(x)
    assert out.plan.capacity == 1 and out.plan.kept[:, 1].tolist() == [False, False]
    p_first = torch.softmax(x, dim=1).max(dim=1).values  # E = 2: p1 + p2 = 1 before dropping
    first = torch.stack([layer.experts.forward_expert(x[i : i + 1], i)[0] for i in range(2)])
    scale = p_first if renormalize == "before" else torch.ones(2)  # after: p1 / p1
    torch.testing.assert_close(out.y, scale[:, None] * first)


def test_sampled_second_expert_follows_the_remaining_probabilities():
    # Gumbel-max: P(second = j | first = 0) = p_j / (1 - p_0) = (0.6, 0.3, 0.1) for e1..e3.
    t = 40_000
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05]).expand(t, 4)
    gen = torch.Generator().manual_seed(3)
    second = gumbel_second_choice(probs, torch.zeros(t, dtype=torch.long), gen)
    assert (second != 0).all()
    share = torch.bincount(second, minlength=4).float() / t
    assert share.tolist() == pytest.approx([0.0, 0.6, 0.3, 0.1], abs=0.01)


def test_sampling_policy_replaces_the_second_choice_and_recounts_the_balance():
    t = 2000
    probs = [[0.5, 0.3, 0.15, 0.05]] * t
    torch.manual_seed(5)
    r = apply_routing_conventions(
        routing_of(probs), RoutingConventions(second_expert_policy="sampling")
    )
    assert (r.expert_index[:, 0] == 0).all() and (r.expert_index[:, 1] != 0).all()
    assert len(set(r.expert_index[:, 1].tolist())) == 3
    p = torch.tensor(probs[0])
    w = p[r.expert_index]
    torch.testing.assert_close(r.combine_weight, w / w.sum(1, keepdim=True))
    counts = torch.bincount(r.expert_index.reshape(-1), minlength=4).float() / (2 * t)
    assert float(r.aux_losses["balance"]) == pytest.approx(4 * float((counts * p).sum()))


@pytest.mark.parametrize(("renormalize", "keep"), [("before", 0.75), ("after", 0.6)])
def test_random_policy_keeps_the_second_choice_with_probability_2p2(renormalize, keep):
    # p = (0.5, 0.3, 0.2): second e1 with p2 = 0.3 raw (after: 2 * 0.3 = 0.6 kept) or
    # 0.3 / 0.8 = 0.375 normalised (before: 0.75 kept), GShard's 2 * g2 > U.
    t = 40_000
    conventions = RoutingConventions(second_expert_policy="random", renormalize=renormalize)
    torch.manual_seed(7)
    r = apply_routing_conventions(routing_of([[0.5, 0.3, 0.2]] * t), conventions)
    assert r.active[:, 0].all()
    assert float(r.active[:, 1].float().mean()) == pytest.approx(keep, abs=0.01)
    assert (r.combine_weight[:, 1][~r.active[:, 1]] == 0).all()


def test_random_policy_dropped_choices_take_no_capacity():
    torch.manual_seed(0)
    router = TopKRouter(4, 3, k=2)
    layer = MoEFeedForward(
        router, ExpertBank(3, 4, 5), capacity_factor=None,
        conventions=RoutingConventions(second_expert_policy="random"),
    )  # fmt: skip
    out = layer(torch.randn(50, 4))
    made = int(out.routing.active.sum())
    assert made < 100 and int(out.plan.num_assignments) == made == int(out.plan.counts.sum())


def test_second_expert_policy_needs_top2():
    with pytest.raises(ValueError, match="moe_second_expert_policy=sampling needs moe_top_k=2"):
        MoEFeedForward(
            TopKRouter(4, 3, k=1), ExpertBank(3, 4, 5),
            conventions=RoutingConventions(second_expert_policy="sampling"),
        )  # fmt: skip


def test_fairseq_capacity_counts_pads():
    # S = 10 tokens, 3 of them pads, E = 4, cf = 1.0.
    assert fairseq_capacity(10, 4, 1, 1.0, None, training=True) == 3  # int(1 * ceil(10 / 4))
    assert fairseq_capacity(10, 4, 2, 1.0, None, training=True) == 6  # fairseq top-2: 2 ceil(S/E)
    assert fairseq_capacity(10, 4, 1, 1.25, None, training=True) == 3  # int(1.25 * 3) = int(3.75)
    assert fairseq_capacity(10, 4, 1, 1.0, 0.25, training=False) == 3  # ceil(0.25 * 10)
    assert fairseq_capacity(10, 4, 1, 1.0, None, training=False) == 3  # training formula
    assert fairseq_capacity(10, 4, 1, 0.0, None, training=True) is None
    conventions = RoutingConventions(capacity_formula="fairseq", eval_capacity_token_fraction=0.5)
    layer = MoEFeedForward(
        TopKRouter(4, 4), ExpertBank(4, 4, 5), capacity_factor=1.0, conventions=conventions
    )
    assert layer.train().capacity(7, 1, 10) == 3
    assert layer.eval().capacity(7, 1, 10) == 5  # ceil(0.5 * 10)
    moemt = MoEFeedForward(TopKRouter(4, 4), ExpertBank(4, 4, 5), capacity_factor=1.0)
    assert moemt.train().capacity(7, 1, 10) == math.ceil(7 / 4) == 2  # non-pad tokens only


def test_fairseq_capacity_in_the_layer_counts_the_pads_of_the_batch():
    layer = MoEFeedForward(
        TopKRouter(4, 2), ExpertBank(2, 4, 5), capacity_factor=1.0,
        conventions=RoutingConventions(capacity_formula="fairseq"),
    )  # fmt: skip
    pad = torch.tensor([False] * 3 + [True] * 5)
    assert layer(torch.randn(8, 4), pad).plan.capacity == 4  # int(1 * ceil(8 / 2)); moemt: 2


def test_eom_masks_assignments_in_training_and_scales_at_inference():
    w = torch.full((20_000, 2), 0.5)
    torch.manual_seed(1)
    masked = expert_output_mask(w, 0.2, training=True)
    assert set(masked.unique().tolist()) == {0.0, 0.5}
    assert float((masked == 0).float().mean()) == pytest.approx(0.2, abs=0.01)
    assert expert_output_mask(w, 0.2, training=False).unique().tolist() == [pytest.approx(0.4)]
    assert expert_output_mask(w, 0.0, training=True) is w


def test_layer_eom_at_inference_scales_the_moe_output():
    torch.manual_seed(0)
    plain = MoEFeedForward(TopKRouter(4, 3), ExpertBank(3, 4, 5), capacity_factor=None).eval()
    eom = MoEFeedForward(plain.router, plain.experts, capacity_factor=None, eom=0.25).eval()
    x = torch.randn(6, 4)
    torch.testing.assert_close(eom(x).y, 0.75 * plain(x).y)
    eom.train()
    dropped = (eom(torch.randn(4000, 4)).y.abs().sum(1) == 0).float().mean()
    assert float(dropped) == pytest.approx(0.25, abs=0.03)
