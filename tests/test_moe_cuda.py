"""The MoE core on CUDA: mixed precision with the fp32 router, and CUDA against CPU.

Skipped without a GPU (CI has none); run on a GPU machine with
``python -m pytest tests/test_moe_cuda.py``. What it pins down:

- Under ``torch.autocast`` (bf16 or fp16), as under fairseq's ``--bf16`` / ``--fp16`` (whole model
  cast to half precision), the router's logits, probabilities and auxiliary losses stay fp32
  (Switch Transformer §2.4, selective precision) and the routing decisions are those of the fp32
  layer on the same input; the experts compute in half precision; outputs and gradients stay
  close to the fp32 layer's.
- The same fp32 layer gives the same routing, outputs and gradients on CUDA and on the CPU
  (the static dispatch plan on CUDA against the dynamic one on the CPU).
- A training step (forward and backward) and an inference forward of every router's layer never
  wait for the host (``torch.cuda.set_sync_debug_mode("error")`` raises on a synchronisation).
- GLU experts (swiglu, geglu: ``w3`` on every path) do both: CUDA fp32 equals the CPU, and the
  static plan never waits for the host.
- So do the routers and blocks of docs/methods.md: sigmoid scores with bias balancing and the
  sequence-level balance loss, expert choice, shared experts.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from moe_mt.models.mhmoe import MultiHeadMoE
from moe_mt.moe import (
    CosineRouter,
    ExpertBank,
    ExpertChoiceRouter,
    MoEFeedForward,
    RandomRouter,
    SharedExpertMoE,
    TopKRouter,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
D, F, E, T = 64, 128, 8, 512


def _layer(router: str, k: int, capacity: float | None, activation: str = "gelu") -> MoEFeedForward:
    torch.manual_seed(0)
    experts = ExpertBank(E, D, F, activation=activation)
    if router == "expert_choice":  # the router enforces its capacity: none in the layer
        return MoEFeedForward(ExpertChoiceRouter(D, E, capacity_factor=2.0), experts, None)
    if router == "topk-sigmoid-bias":
        gate = TopKRouter(D, E, k=k, score_func="sigmoid", bias_update_rate=0.01)
        gate.balancer.bias_steps.copy_(torch.arange(E) - E // 2)
        return MoEFeedForward(gate, experts, capacity, balance_scope="sequence")
    gate = TopKRouter(D, E, k=k) if router == "topk" else CosineRouter(D, E, k=k)
    return MoEFeedForward(gate, experts, capacity_factor=capacity)


def _inputs(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, D, generator=g)
    pad = torch.zeros(T, dtype=torch.bool)
    pad[-37:] = True  # a padded tail, as in a batch of unequal sentences
    grad = torch.randn(T, D, generator=g)
    return x.to(device), pad.to(device), grad.to(device)


def _run(layer: MoEFeedForward, x, pad, grad):
    x = x.detach().requires_grad_(True)
    out = layer(x, pad, torch.arange(T) // 16)  # sentences of 16 tokens, on the CPU
    loss = (out.y.float() * grad.float()).sum() + sum(out.aux_losses.values())
    loss.backward()
    grads = {name: p.grad.detach().float().cpu() for name, p in layer.named_parameters()}
    return out, x.grad.detach().float().cpu(), grads


@pytest.mark.parametrize(
    "router,k,capacity,activation",
    [
        *[(r, k, c, "gelu") for r in ("topk", "cosine") for k in (1, 2) for c in (None, 1.0)],
        *[("topk", k, c, a) for k in (1, 2) for c in (None, 1.0) for a in ("swiglu", "geglu")],
        ("topk-sigmoid-bias", 2, 1.0, "gelu"),
        ("expert_choice", E, None, "gelu"),
    ],
)
def test_cuda_fp32_matches_cpu(router, k, capacity, activation):
    layer = _layer(router, k, capacity, activation)
    cuda_layer = copy.deepcopy(layer).cuda()
    layer.train(), cuda_layer.train()
    cpu_out, cpu_dx, cpu_grads = _run(layer, *_inputs("cpu"))
    gpu_out, gpu_dx, gpu_grads = _run(cuda_layer, *_inputs("cuda"))
    assert torch.equal(cpu_out.routing.expert_index, gpu_out.routing.expert_index.cpu())
    assert torch.equal(cpu_out.plan.counts, gpu_out.plan.counts.cpu())
    torch.testing.assert_close(gpu_out.y.cpu(), cpu_out.y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu_dx, cpu_dx, rtol=1e-4, atol=1e-5)
    for name, g in cpu_grads.items():
        torch.testing.assert_close(gpu_grads[name], g, rtol=1e-3, atol=1e-5, msg=name)
    assert ("experts.w3" in cpu_grads) == (activation != "gelu")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("router", ["topk", "cosine"])
@pytest.mark.parametrize("mode", ["autocast", "half_model"])
def test_half_precision_keeps_the_router_fp32(precision, router, mode):
    dtype = HALF[precision]
    layer = _layer(router, 2, 1.25).cuda().train()
    x, pad, grad = _inputs("cuda")
    if mode == "autocast":  # torch AMP: fp32 weights, half-precision matmuls
        reference = copy.deepcopy(layer)
        ref_out, ref_dx, ref_grads = _run(reference, x, pad, grad)
        with torch.autocast("cuda", dtype=dtype):
            out, dx, grads = _run(layer, x, pad, grad)
    else:  # fairseq --fp16 / --bf16: the whole model and its activations in half precision
        layer, x = layer.to(dtype), x.to(dtype)
        # The fp32 reference sees the same rounded weights and inputs.
        reference = copy.deepcopy(layer).float()
        ref_out, ref_dx, ref_grads = _run(reference, x.float(), pad, grad)
        out, dx, grads = _run(layer, x, pad, grad.to(dtype))
        assert out.y.dtype == dtype  # the experts ran in half precision
    routing = out.routing
    assert routing.combine_weight.dtype == torch.float32
    assert all(loss.dtype == torch.float32 for loss in out.aux_losses.values())
    assert torch.equal(routing.expert_index, ref_out.routing.expert_index)  # same decisions
    assert torch.equal(out.plan.counts, ref_out.plan.counts)
    for name, loss in out.aux_losses.items():
        torch.testing.assert_close(loss, ref_out.aux_losses[name], rtol=1e-5, atol=1e-6)
    tol = {"bf16": 3e-2, "fp16": 5e-3}[precision]
    torch.testing.assert_close(out.y.float(), ref_out.y, rtol=tol, atol=tol)
    torch.testing.assert_close(dx, ref_dx, rtol=tol, atol=tol)
    for name, g in ref_grads.items():
        assert torch.isfinite(grads[name]).all(), name
        scale = g.abs().max().item()
        assert (grads[name] - g).abs().max().item() <= 5 * tol * max(scale, 1e-3), name


def _any_layer(router: str, k: int):
    torch.manual_seed(0)
    if router == "topk-swiglu":
        return _layer("topk", k, 1.25, "swiglu")
    if router == "shared":
        return SharedExpertMoE(_layer("topk", k, 1.25), ExpertBank(1, D, F), gate=True)
    if router == "thor":
        return MoEFeedForward(RandomRouter(E, granularity="sentence", seed=1), ExpertBank(E, D, F))
    if router == "mhmoe":
        inner = MoEFeedForward(TopKRouter(D // 2, E, k=k), ExpertBank(E, D // 2, F), 1.25)
        return MultiHeadMoE(D, 2, inner)
    return _layer(router, k, 1.25)


@pytest.mark.parametrize("mode", ["autocast", "half_model", "fp32"])
@pytest.mark.parametrize(
    "router,k",
    [
        ("topk", 1),
        ("topk", 2),
        ("cosine", 2),
        ("thor", 1),
        ("mhmoe", 2),
        ("topk-swiglu", 2),
        ("topk-sigmoid-bias", 2),
        ("expert_choice", 8),
        ("shared", 1),
    ],  # fmt: skip
)
@pytest.mark.parametrize("layout", ["auto", "slots"])
def test_layer_never_waits_for_the_host(router, k, mode, layout):
    """bf16 runs on grouped GEMMs (``auto``) or fixed slots; fp32 on fixed slots, which need a
    capacity (THOR has none: in fp32 its groups run on the fused path, which reads the sizes)."""
    if router == "thor" and (mode == "fp32" or layout == "slots"):
        pytest.skip("THOR has no capacity: no fixed slots")
    layer = _any_layer(router, k).cuda()
    moe = layer.moe if router in ("mhmoe", "shared") else layer
    moe.static_layout = layout
    x, pad, grad = _inputs("cuda")
    sentence = torch.arange(T) // 16  # on the CPU, as forward_tbd builds it
    if mode == "half_model":
        layer, x, grad = layer.to(torch.bfloat16), x.to(torch.bfloat16), grad.to(torch.bfloat16)
    context = torch.autocast("cuda", dtype=torch.bfloat16) if mode == "autocast" else None

    def step():
        layer.train()
        x_ = x.detach().requires_grad_(True)
        out = layer(x_, pad, sentence)
        loss = (out.y.float() * grad.float()).sum() + sum(out.aux_losses.values())
        loss.backward()
        layer.eval()
        with torch.no_grad():
            layer(x, pad, sentence)

    with context or contextlib.nullcontext():
        step()  # warm-up: library handles and workspaces are created once, with syncs
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
