"""Router numerics and interfaces: fp32 under autocast, jitter, init, cosine gate, soft slots."""

import math

import pytest
import torch

from moe_mt.moe import CosineRouter, RandomRouter, SoftSlotRouter, TopKRouter


@pytest.mark.parametrize("router_fn", [lambda: TopKRouter(16, 4, k=2), lambda: CosineRouter(16, 4)])
def test_router_math_is_fp32_under_bf16_autocast(router_fn):
    router = router_fn()
    x = torch.randn(10, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = router(x)
    assert routing.probs.dtype == torch.float32
    assert routing.combine_weight.dtype == torch.float32
    assert routing.aux_losses["balance"].dtype == torch.float32


def test_topk_router_weights_and_small_init():
    torch.manual_seed(0)
    router = TopKRouter(512, 8, k=2)
    assert router.weight.std().item() == pytest.approx(math.sqrt(0.1 / 512), rel=0.15)
    routing = router(torch.randn(50, 512))
    torch.testing.assert_close(routing.combine_weight.sum(-1), torch.ones(50))
    top = routing.probs.topk(2, dim=-1).indices
    assert torch.equal(routing.expert_index, top)
    torch.testing.assert_close(routing.probs.sum(-1), torch.ones(50))


def test_topk_router_k1_weight_is_the_probability():
    router = TopKRouter(8, 4, k=1)
    routing = router(torch.randn(6, 8))
    expected = routing.probs.gather(1, routing.expert_index)
    torch.testing.assert_close(routing.combine_weight, expected)


def test_jitter_only_in_training_and_bounded():
    torch.manual_seed(0)
    router = TopKRouter(8, 4, jitter=0.01)
    x = torch.randn(20, 8)
    clean = x @ router.weight.t()
    torch.testing.assert_close(router.eval().logits(x), clean)
    noisy = router.train().logits(x)
    assert not torch.allclose(noisy, clean)
    bound = 0.01 * (x.abs() @ router.weight.abs().t())
    assert ((noisy - clean).abs() <= bound + 1e-6).all()


def test_cosine_router_scores_are_bounded_cosines_over_temperature():
    torch.manual_seed(0)
    router = CosineRouter(32, 6, k=2, d_route=8, init_temperature=0.5)
    logits = router.logits(torch.randn(40, 32))
    assert logits.abs().max().item() <= 1.0 / 0.5 + 1e-5
    routing = router(torch.randn(40, 32))
    routing.aux_losses["balance"].backward()
    assert router.log_inv_temperature.grad is not None
    assert router.proj.grad.abs().sum() > 0


def test_random_router_pads_and_modes():
    router = RandomRouter(4, "token")
    pad = torch.tensor([False, True, False])
    routing = router(torch.randn(3, 8), pad)
    assert routing.combine_weight.tolist() == [[1.0], [0.0], [1.0]]
    assert routing.aux_losses == {}
    router.mode = "mean"
    assert router.k == 4
    routing = router(torch.randn(3, 8))
    assert routing.expert_index.tolist() == [[0, 1, 2, 3]] * 3
    torch.testing.assert_close(routing.combine_weight, torch.full((3, 4), 0.25))
    with pytest.raises(ValueError, match="sentence_index"):
        RandomRouter(4, "sentence")(torch.randn(3, 8))


def test_soft_router_softmax_axes_and_pads():
    torch.manual_seed(0)
    router = SoftSlotRouter(8, 3, slots_per_expert=2)
    assert router.scale.item() == 1.0
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0, 3:] = True
    routing = router(torch.randn(2, 5, 8), pad)
    assert routing.dispatch_weight.shape == (2, 5, 3, 2)
    # dispatch: softmax over the tokens of a sentence; pads get no weight.
    torch.testing.assert_close(routing.dispatch_weight.sum(1), torch.ones(2, 3, 2))
    assert (routing.dispatch_weight[pad] == 0).all()
    # combine: softmax over all slots, per real token.
    torch.testing.assert_close(routing.combine_weight.sum((2, 3))[~pad], torch.ones(8))
    assert (routing.combine_weight[pad] == 0).all()


def test_layer_under_bf16_autocast_computes_in_bf16_with_fp32_router():
    from moe_mt.moe import ExpertBank, MoEFeedForward

    torch.manual_seed(0)
    layer = MoEFeedForward(TopKRouter(16, 4, k=2), ExpertBank(4, 16, 32), 1.0)
    x = torch.randn(20, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        with torch.no_grad():
            y_inference = layer(x).y
    assert out.y.dtype == torch.bfloat16 and y_inference.dtype == torch.bfloat16
    assert out.routing.combine_weight.dtype == torch.float32
    out.y.float().sum().backward()
    assert layer.experts.w1.grad.dtype == torch.float32
    reference = layer(x).y
    torch.testing.assert_close(out.y.float(), reference, atol=0.05, rtol=0.05)
