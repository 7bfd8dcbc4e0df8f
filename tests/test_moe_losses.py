"""Balance loss and z-loss against hand-computed values; pads excluded; combination over layers."""

import math

import pytest
import torch

from moe_mt.moe import TopKRouter, combine_aux_losses, load_balance_loss, router_z_loss

LN3 = math.log(3.0)
# Three real tokens and one pad; softmax rows: [.25, .75], [.75, .25], [.75, .25].
LOGITS = torch.tensor([[0.0, LN3], [LN3, 0.0], [LN3, 0.0], [10.0, -10.0]], dtype=torch.float64)
PAD = torch.tensor([False, False, False, True])
INDEX = torch.tensor([[1], [0], [0], [0]])


def test_balance_loss_hand_computed_with_pad_excluded():
    probs = LOGITS.softmax(-1)
    # f = [2/3, 1/3]; P = [1.75/3, 1.25/3]; E * sum f P = 2 * 4.75 / 9.
    expected = 2 * (2 / 3 * 1.75 / 3 + 1 / 3 * 1.25 / 3)
    assert load_balance_loss(probs, INDEX, PAD).item() == pytest.approx(expected, abs=1e-12)
    # Dropping the pad row by hand gives the same value; keeping it would not.
    assert load_balance_loss(probs[:3], INDEX[:3]).item() == pytest.approx(expected, abs=1e-12)
    assert load_balance_loss(probs, INDEX).item() != pytest.approx(expected, abs=1e-3)


def test_balance_loss_gradient_flows_through_mean_probability_only():
    probs = LOGITS.softmax(-1).requires_grad_()
    load_balance_loss(probs, INDEX, PAD).backward()
    f = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    expected = (2 * f / 3).expand(4, 2) * (~PAD)[:, None]  # d/dp_ti of E * sum_i f_i mean_t p_ti
    torch.testing.assert_close(probs.grad, expected)


def test_z_loss_hand_computed_with_pad_excluded():
    # logsumexp of every real row is log(1 + 3) = log 4.
    expected = math.log(4.0) ** 2
    assert router_z_loss(LOGITS, PAD).item() == pytest.approx(expected, abs=1e-12)
    assert router_z_loss(LOGITS).item() != pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("k", [1, 2])
def test_balance_loss_is_one_when_uniform(k):
    e, t = 4, 8
    uniform = torch.full((t, e), 1.0 / e)
    any_index = torch.randint(e, (t, k))
    assert load_balance_loss(uniform, any_index).item() == pytest.approx(1.0)
    # Perfectly balanced assignments with non-uniform probabilities: also exactly 1.
    probs = torch.rand(t, e).softmax(-1)
    balanced = (torch.arange(t * k) % e).view(t, k)
    assert load_balance_loss(probs, balanced).item() == pytest.approx(1.0)


def test_uniform_router_reports_balance_one():
    router = TopKRouter(8, 4, k=2)
    with torch.no_grad():
        router.weight.zero_()
    routing = router(torch.randn(10, 8))
    assert routing.aux_losses["balance"].item() == pytest.approx(1.0)
    assert routing.aux_losses["z"].item() == pytest.approx(math.log(4.0) ** 2)


def test_combine_aux_losses_means_over_layers_then_weights():
    layers = [
        {"balance": torch.tensor(1.0), "z": torch.tensor(2.0)},
        {"balance": torch.tensor(3.0)},
        {},
    ]
    total, means = combine_aux_losses(layers, {"balance": 0.01, "z": 0.001})
    assert means["balance"].item() == pytest.approx(2.0)
    assert means["z"].item() == pytest.approx(2.0)
    assert total.item() == pytest.approx(0.01 * 2.0 + 0.001 * 2.0)
    assert combine_aux_losses(layers, {"other": 1.0})[0] is None
