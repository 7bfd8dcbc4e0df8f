"""Conditional MoE Routing (moe_mt/moe/cmr.py) against hand-computed cases."""

import pytest
import torch

from moe_mt.moe import ConditionalMoE, ExpertBank, MoEFeedForward, TopKRouter


def cmr_block(gate_dropout: float = 0.0) -> ConditionalMoE:
    torch.manual_seed(0)
    moe = MoEFeedForward(TopKRouter(4, 3), ExpertBank(3, 4, 6), capacity_factor=None)
    block = ConditionalMoE(moe, ExpertBank(1, 4, 6), gate_dropout)
    with torch.no_grad():
        block.gate.weight.copy_(torch.tensor([[1.0, -1.0, 0.5, 0.0]]))
        block.gate.bias.fill_(0.25)
    return block


def test_output_mixes_the_shared_ffn_and_the_moe_by_the_gate():
    block = cmr_block().eval()
    x = torch.randn(5, 4)
    pad = torch.tensor([False, False, True, False, False])
    out = block(x, pad)
    g = torch.sigmoid(x[:, 0] - x[:, 1] + 0.5 * x[:, 2] + 0.25)  # by hand: x w + b
    shared = block.shared.forward_expert(x, 0)
    moe = block.moe(x, pad).y
    expected = (1 - g)[:, None] * shared + g[:, None] * moe
    expected[2] = 0.0  # pads: zero output
    torch.testing.assert_close(out.y, expected)
    real = ~pad
    assert float(out.aux_losses["cmr_gate"]) == pytest.approx(float(g[real].mean()))
    assert "balance" in out.aux_losses and out.routing is not None


def test_gate_dropout_sends_a_share_of_tokens_to_the_shared_ffn_alone():
    block = cmr_block(gate_dropout=0.3).train()
    x = torch.randn(4000, 4)
    g = block.gate_values(x, None)
    plain = torch.sigmoid(x @ block.gate.weight[0] + block.gate.bias).detach()
    dropped = g == 0
    assert float(dropped.float().mean()) == pytest.approx(0.3, abs=0.03)
    # torch's (inverted) dropout, as fairseq's CMRGate: kept gates are scaled by 1 / (1 - p).
    torch.testing.assert_close(g[~dropped].detach(), plain[~dropped] / 0.7)


def test_the_gate_learns():
    block = cmr_block().train()
    block(torch.randn(8, 4)).y.square().sum().backward()
    assert block.gate.weight.grad is not None and block.gate.weight.grad.abs().sum() > 0
    assert block.moe.router.weight.grad.abs().sum() > 0
