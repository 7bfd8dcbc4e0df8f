"""Capacity: the formula, exact drop counts for constructed routings, priority, eval no-drop."""

import pytest
import torch

from moe_mt.moe import (
    ExpertBank,
    MoEFeedForward,
    Router,
    Routing,
    TopKRouter,
    expert_capacity,
    plan_dispatch,
)


class FixedRouter(Router):
    """Returns a constructed routing (weight 1 for every choice)."""

    def __init__(self, num_experts, expert_index):
        super().__init__()
        self.num_experts, self.k = num_experts, expert_index.shape[1]
        self.expert_index = expert_index

    def forward(self, x, pad_mask=None, sentence_index=None):
        weight = torch.ones(self.expert_index.shape, dtype=x.dtype)
        return Routing(self.expert_index, weight)


@pytest.mark.parametrize(
    "tokens,experts,k,factor,expected",
    [
        (10, 4, 1, 1.0, 3),  # ceil(2.5)
        (10, 4, 2, 1.25, 7),  # ceil(6.25)
        (8, 4, 1, 1.0, 2),
        (8, 4, 2, 2.0, 8),
        (3, 4, 1, None, None),  # no dropping
        (3, 4, 1, 0.0, None),
    ],
)
def test_capacity_formula(tokens, experts, k, factor, expected):
    assert expert_capacity(tokens, experts, k, factor) == expected


def test_top1_drop_counts_in_sequence_order_and_pads_take_no_capacity():
    # 6 real tokens (capacity ceil(1.0 * 6 / 3) = 2), 2 pads routed to the crowded expert 0.
    index = torch.tensor([[0], [0], [0], [1], [0], [2], [0], [0]])
    pad = torch.tensor([True, False, False, False, False, False, True, False])
    plan = plan_dispatch(index, 3, capacity=expert_capacity(6, 3, 1, 1.0), pad_mask=pad)
    # Expert 0's real tokens in order: 1, 2, 4, 7 -> keeps 1 and 2, drops 4 and 7.
    assert plan.kept[:, 0].tolist() == [False, True, True, True, False, True, False, False]
    assert plan.counts.tolist() == [2, 1, 1]
    assert plan.num_assignments.item() == 6
    assert plan.token_index.tolist() == [1, 2, 3, 5]  # grouped by expert, in priority order


def test_top2_first_choices_have_priority_over_second_choices():
    index = torch.tensor([[0, 1], [1, 0], [0, 1]])
    capacity = expert_capacity(3, 2, 2, 2 / 3)  # ceil(2) = 2
    plan = plan_dispatch(index, 2, capacity=capacity)
    # Expert 0: first choices of tokens 0, 2 beat token 1's second choice.
    # Expert 1: token 1's first choice, then token 0's second; token 2's second is dropped.
    assert plan.kept.tolist() == [[True, True], [True, False], [True, False]]
    assert plan.counts.tolist() == [2, 2]


def test_layer_drops_exactly_and_zeroes_dropped_tokens():
    torch.manual_seed(0)
    index = torch.tensor([[0], [0], [0], [0], [1], [1], [2], [0]])
    layer = MoEFeedForward(FixedRouter(4, index), ExpertBank(4, 8, 16), capacity_factor=1.0)
    out = layer(torch.randn(8, 8))  # capacity ceil(8 / 4) = 2: tokens 2, 3, 7 dropped
    assert out.plan.capacity == 2
    assert out.stats.tokens_per_expert.tolist() == [2.0, 2.0, 1.0, 0.0]
    assert out.stats.fraction_dropped.item() == pytest.approx(3 / 8)
    assert out.stats.activation_rate.item() == pytest.approx(3 / 4)
    dropped = torch.tensor([2, 3, 7])
    assert (out.y[dropped] == 0).all()
    assert (out.y[[0, 1, 4, 5, 6]].abs().sum(-1) > 0).all()


def test_eval_keeps_every_token_by_default():
    torch.manual_seed(0)
    router = TopKRouter(8, 4, k=2)
    with torch.no_grad():
        router.weight.zero_()
        router.weight[0, 0] = router.weight[1, 0] = 100.0  # nearly every token -> experts 0, 1
    layer = MoEFeedForward(router, ExpertBank(4, 8, 16), capacity_factor=0.25)
    x = torch.randn(64, 8)
    x[:, 0] = x[:, 0].abs() + 1
    assert layer.train()(x).stats.fraction_dropped.item() > 0.5
    out = layer.eval()(x)
    assert out.plan.capacity is None
    assert out.plan.kept.all()
    assert out.stats.fraction_dropped.item() == 0.0
    assert out.stats.tokens_per_expert.sum().item() == 128


def test_all_pad_batch_gives_zeros_and_finite_losses():
    torch.manual_seed(0)
    layer = MoEFeedForward(TopKRouter(8, 4, k=2), ExpertBank(4, 8, 16), capacity_factor=1.0)
    x = torch.randn(5, 8, requires_grad=True)
    out = layer(x, torch.ones(5, dtype=torch.bool))
    assert out.y.shape == (5, 8) and (out.y == 0).all()
    assert out.plan.counts.tolist() == [0, 0, 0, 0]
    assert out.stats.fraction_dropped.item() == 0.0
    assert all(torch.isfinite(v) for v in out.aux_losses.values())
    out.y.sum().backward()
    assert (x.grad == 0).all()


def test_fairseq_layout_drops_whole_sentences_not_late_positions():
    """On fairseq's ``[n, b, d]`` input the capacity priority is sentence by sentence, as in the
    references (fairseq's MoE layer, tutel, Switch/GShard groups). Regression: time-major
    priority dropped the late positions of every sentence (target ends and EOS most), so an
    unbalanced router (X-MoE's) taught the model to predict them without the FFN that evaluation,
    with every token kept, then gives them: over-long, looping outputs."""
    n, b, e = 6, 4, 4
    crowded = torch.zeros(b * n, 1, dtype=torch.long)  # every token -> expert 0
    layer = MoEFeedForward(FixedRouter(e, crowded), ExpertBank(e, 8, 16), capacity_factor=1.0)
    padding_mask = torch.zeros(b, n, dtype=torch.bool)
    padding_mask[3, 4:] = True  # sentence 3 is two tokens shorter
    torch.manual_seed(0)
    out = layer.train().forward_tbd(torch.randn(n, b, 8), padding_mask)
    assert out.plan.capacity == 6  # ceil(1.0 * 22 real tokens / 4)
    kept = out.y.abs().sum(-1) > 0  # [n, b]; dropped tokens and pads get zero output
    assert kept[:, 0].all()  # sentence 0 keeps every position, its last one included ...
    assert not kept[:, 1:].any()  # ... and the later sentences lose theirs, first to last
