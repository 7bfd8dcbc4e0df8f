"""torch.autograd.gradcheck (double precision) through the MoE layers on tiny shapes."""

import torch
from torch.func import functional_call

from moe_mt.moe import (
    ExpertBank,
    MoEFeedForward,
    SoftSlotRouter,
    TopKRouter,
    soft_combine,
    soft_counts,
    soft_dispatch,
)


def test_gradcheck_topk_layer_with_drops_and_pads():
    torch.manual_seed(0)
    layer = MoEFeedForward(TopKRouter(4, 3, k=2, init_scale=10.0), ExpertBank(3, 4, 6), 0.7)
    layer = layer.double().train()
    names = [n for n, _ in layer.named_parameters()]
    pad = torch.tensor([False, True, False, False, False, False])

    def f(x, *params):
        return functional_call(layer, dict(zip(names, params, strict=True)), (x, pad)).y

    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert not layer(x, pad).plan.kept[~pad].all(), "the case should drop something"
    assert torch.autograd.gradcheck(f, (x, *params))


def test_gradcheck_soft_moe():
    torch.manual_seed(0)
    router, bank = SoftSlotRouter(4, 2, 2).double(), ExpertBank(2, 4, 6).double()
    pad = torch.tensor([[False, False, True], [False, False, False]])

    def f(x, scale, slot_embed, w1):
        r = functional_call(router, {"scale": scale, "slot_embed": slot_embed}, (x, pad))
        grouped = functional_call(
            bank, {"w1": w1}, (soft_dispatch(x, r), soft_counts(r)), strict=False
        )
        return soft_combine(grouped, r)

    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    inputs = (
        x,
        router.scale.detach().clone(),
        router.slot_embed.detach().clone(),
        bank.w1.detach().clone(),
    )
    assert torch.autograd.gradcheck(f, tuple(t.requires_grad_() for t in inputs))
