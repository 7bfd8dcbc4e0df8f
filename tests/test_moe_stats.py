"""Statistics definitions: tokens per expert, fraction dropped, activation rate, entropy."""

import math

import pytest
import torch

from moe_mt.moe import MoEStats, dispatch_stats, mean_stats, router_entropy


def test_dispatch_stats_definitions():
    stats = dispatch_stats(torch.tensor([3, 0, 2, 1]), torch.tensor(8))
    assert stats.tokens_per_expert.tolist() == [3.0, 0.0, 2.0, 1.0]
    assert stats.fraction_dropped.item() == pytest.approx(2 / 8)
    assert stats.activation_rate.item() == pytest.approx(3 / 4)  # expert 1 got no token
    assert math.isnan(stats.router_entropy.item())  # router without a distribution


def test_router_entropy_uniform_one_hot_and_pads():
    uniform = torch.full((3, 4), 0.25)
    one_hot = torch.eye(4)[:3]
    assert router_entropy(uniform).item() == pytest.approx(math.log(4))
    assert router_entropy(one_hot).item() == pytest.approx(0.0)
    mixed = torch.cat([uniform, one_hot])
    pad = torch.tensor([False] * 3 + [True] * 3)
    assert router_entropy(mixed, pad).item() == pytest.approx(math.log(4))


def test_mean_stats_over_layers():
    a = MoEStats(torch.tensor([2.0, 0.0]), torch.tensor(0.5), torch.tensor(0.5), torch.tensor(1.0))
    b = MoEStats(torch.tensor([1.0, 1.0]), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.0))
    m = mean_stats([a, b])
    assert m.tokens_per_expert.tolist() == [1.5, 0.5]
    assert m.activation_rate.item() == pytest.approx(0.75)
    assert set(m.as_dict()) == {
        "tokens_per_expert",
        "fraction_dropped",
        "activation_rate",
        "router_entropy",
    }
