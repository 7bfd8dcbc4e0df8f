"""GLU experts and the dense GLU FFN (Shazeer 2020, eq. 6 with biases) against a per-token
float64 reference ``W2(act(x W1 + b1) * (x W3 + b3)) + b2``, in outputs and gradients.

The reference's activations are written from their definitions (SiLU ``z sigmoid(z)``, GELU
``z Phi(z)`` with the erf), not taken from the code under test."""

from __future__ import annotations

import math

import pytest
import torch

from moe_mt.moe import ExpertBank, MoEFeedForward
from moe_mt.moe.experts import GLU_ACTIVATIONS
from tests.test_moe_reference import F_, D, E, T, grads, make_layer, reference_moe

GLUS = ("swiglu", "geglu")
#: The activation of each GLU's gate, from its definition.
GATE = {
    "swiglu": lambda z: z * torch.sigmoid(z),
    "geglu": lambda z: 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0))),
}
SIZES = [5, 0, 7, 3]  # an expert without rows: its weights' gradients are zero


def glu_reference(bank: ExpertBank, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Row by row, in float64: ``W2[e](act(x W1[e] + b1[e]) * (x W3[e] + b3[e])) + b2[e]``."""
    bias = {n: getattr(bank, n) for n in ("b1", "b2", "b3")}
    rows, expert = [], [e for e, n in enumerate(sizes) for _ in range(n)]
    for r, e in enumerate(expert):
        x_r = x[r].double()
        gate = x_r @ bank.w1[e].double() + (0 if bias["b1"] is None else bias["b1"][e].double())
        up = x_r @ bank.w3[e].double() + (0 if bias["b3"] is None else bias["b3"][e].double())
        y = (GATE[bank.activation](gate) * up) @ bank.w2[e].double()
        rows.append(y + (0 if bias["b2"] is None else bias["b2"][e].double()))
    return torch.stack(rows)


def _bank(activation: str, bias: bool, impl: str, dtype=torch.float64) -> ExpertBank:
    torch.manual_seed(0)
    return ExpertBank(len(SIZES), D, F_, activation=activation, bias=bias, impl=impl).to(dtype)


def _run(bank: ExpertBank, path: str, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    if path == "slots":
        return bank.forward_slots(x, sizes[0])
    if path == "inference":
        with torch.no_grad():
            return bank(x, sizes)
    return bank(x, sizes)


def _grads(out: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Gradients of ``sum(out * g)``, ``g`` the same draw whatever ``out``'s dtype."""
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return torch.autograd.grad((out * g.to(out.dtype)).sum(), inputs)


PATHS = [
    # path (the bank's impl, or forward_slots / the fused path without autograd), dtype, tol
    ("fused", torch.float64, 1e-10),
    ("inference", torch.float64, 1e-10),
    ("loop", torch.float64, 1e-10),
    ("slots", torch.float64, 1e-10),
    ("grouped_mm", torch.float32, 1e-5),  # grouped_mm takes fp32, not fp64, on the CPU
]


@pytest.mark.parametrize("path,dtype,tol", PATHS)
@pytest.mark.parametrize("activation", GLUS)
@pytest.mark.parametrize("bias", [True, False])
def test_every_bank_path_matches_the_glu_reference(path, dtype, tol, activation, bias):
    impl = {"inference": "fused", "slots": "loop"}.get(path, path)
    bank = _bank(activation, bias, impl, dtype)
    assert bank.is_glu and bank.w3.shape == bank.w1.shape
    assert (bank.b3 is not None) == bias and (bank.b3 is None or bank.b3.shape == bank.b1.shape)
    if path == "grouped_mm":
        assert bank.grouped_gemm_runs(torch.empty(1, D, dtype=dtype)), "runs on this CPU"
    sizes = [4] * len(SIZES) if path == "slots" else SIZES
    x = torch.randn(sum(sizes), D, dtype=dtype, requires_grad=True)
    out = _run(bank, path, x, sizes)
    ref = glu_reference(bank, x, sizes)
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    if path == "inference":
        return
    names = ["x", *(n for n, _ in bank.named_parameters())]
    assert {"w1", "w2", "w3"} <= set(names) and ({"b1", "b2", "b3"} <= set(names)) == bias
    params = [x, *bank.parameters()]
    got, want = _grads(out, params), _grads(ref, params)
    for name, g, w in zip(names, got, want, strict=True):
        torch.testing.assert_close(g.double(), w.double(), atol=tol, rtol=tol, msg=name)
    if path != "slots":
        assert (got[names.index("w3")][1] == 0).all()  # the expert without rows


@pytest.mark.parametrize("impl", ["fused", "loop", "grouped_mm"])
def test_the_gate_is_w1_and_the_up_projection_w3(impl):
    """One unit, by hand: ``w1 = 1``, ``w3 = 3``, ``x = 2`` gives ``silu(2) * 6``; swapping the
    two (SiLU on ``x w3``) would give ``silu(6) * 2``. grouped_mm needs 16-byte rows: 4 units."""
    bank = ExpertBank(1, 4, 4, activation="swiglu", bias=False, impl=impl)
    with torch.no_grad():
        bank.w1.copy_(torch.eye(4)), bank.w3.copy_(3 * torch.eye(4)), bank.w2.copy_(torch.eye(4))
    x = torch.full((1, 4), 2.0, requires_grad=True)
    for y in (bank(x, [1]), bank.forward_slots(x, 1)):
        expected = 2 * torch.sigmoid(torch.tensor(2.0)) * 6
        torch.testing.assert_close(y, expected.expand(1, 4))
        assert not torch.allclose(y, (6 * torch.sigmoid(torch.tensor(6.0)) * 2).expand(1, 4))


@pytest.mark.parametrize("activation", GLUS)
@pytest.mark.parametrize("plan", ["dynamic", "static-groups", "static-slots"])
@pytest.mark.parametrize(
    "impl,dtype,tol",
    [("fused", torch.float64, 1e-10), ("loop", torch.float64, 1e-10),
     ("grouped_mm", torch.float32, 1e-5)],
)  # fmt: skip
def test_glu_layer_matches_the_per_token_reference(activation, plan, impl, dtype, tol):
    """MoEFeedForward with a TopKRouter (top-2, tokens dropped and padded) on a GLU bank equals
    test_moe_reference's reference (its expert_on_token takes GLU banks)."""
    layer = make_layer(2, impl, dtype, 0.6, activation=activation)
    layer.dispatch_plan, _, layout = plan.partition("-")
    layer.static_layout = layout or "auto"
    x = torch.randn(T, D, dtype=dtype, requires_grad=True)
    pad = torch.rand(T) < 0.3
    out = layer(x, pad)
    routing = layer.router(x, pad)
    capacity = layer.capacity(T - int(pad.sum()), 2)
    ref, kept = reference_moe(
        x, pad, routing.expert_index, routing.combine_weight, layer.experts, capacity
    )
    assert torch.equal(out.plan.kept, kept) and not kept.all()
    torch.testing.assert_close(out.y, ref, atol=tol, rtol=tol)
    params = [x, *layer.parameters()]
    for got, want in zip(grads(out.y, params), grads(ref, params), strict=True):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def test_expert_on_token_is_the_glu_formula():
    """The shared reference itself (tests/test_moe_reference.py) agrees with this file's."""
    from tests.test_moe_reference import expert_on_token

    for activation in GLUS:
        bank = _bank(activation, True, "loop")
        x = torch.randn(sum(SIZES), D, dtype=torch.float64)
        expert = [e for e, n in enumerate(SIZES) for _ in range(n)]
        rows = torch.stack([expert_on_token(bank, e, x[r]) for r, e in enumerate(expert)])
        torch.testing.assert_close(rows, glu_reference(bank, x, SIZES))


def test_glu_dropout_is_on_the_product_and_the_same_in_fused_and_loop():
    x = torch.randn(T, D)
    results = []
    for impl in ("fused", "loop"):
        layer = make_layer(1, impl, torch.float32, None, dropout=0.5, activation="swiglu")
        torch.manual_seed(5)
        results.append(layer(x).y)
    torch.testing.assert_close(*results)
    assert not torch.equal(results[0], layer.eval()(x).y)


@pytest.mark.parametrize("impl", ["fused", "loop", "grouped_mm", "slots"])
def test_glu_dropout_scales_the_product_once(impl):
    """With ``w2 = I`` the output is the hidden layer: each unit is 0 or ``act(x w1) (x w3) / (1
    - p)``, one mask on the product (not one per factor, nor on the gate's input)."""
    torch.manual_seed(0)
    bank_impl = "loop" if impl == "slots" else impl
    bank = ExpertBank(1, 4, 4, activation="swiglu", dropout=0.5, bias=False, impl=bank_impl)
    with torch.no_grad():
        bank.w2.copy_(torch.eye(4))
    x = torch.randn(64, 4)
    y = bank.forward_slots(x, 64) if impl == "slots" else bank(x, [64])
    product = GATE["swiglu"](x @ bank.w1[0]) * (x @ bank.w3[0])
    kept = y != 0
    assert 0.3 < kept.float().mean() < 0.7
    torch.testing.assert_close(y[kept], 2 * product[kept])


def test_glu_bank_record_and_initialisation():
    torch.manual_seed(3)
    relu = ExpertBank(E, D, F_, activation="relu")
    torch.manual_seed(3)
    glu = ExpertBank(E, D, F_, activation="swiglu")
    # w3 and b3 are drawn last: the other weights are the non-GLU bank's of the same seed.
    for name in ("w1", "b1", "w2", "b2"):
        assert torch.equal(getattr(relu, name), getattr(glu, name)), name
    assert dict(relu.named_parameters()).keys() == {"w1", "w2", "b1", "b2"}
    assert relu.w3 is None and relu.b3 is None and not relu.is_glu
    bound = 1 / math.sqrt(D)  # w3's fan-in is w1's
    assert glu.w3.abs().max() <= bound and glu.b3.abs().max() <= bound
    assert glu.w3.std() > bound / 3 and not torch.equal(glu.w3, glu.w1)
    assert "activation=swiglu" in repr(glu)
    x = torch.randn(6, D)
    torch.testing.assert_close(
        glu.forward_expert(x, 2), glu_reference(glu, x, [0, 0, 6, 0]).float()
    )
    assert GLU_ACTIVATIONS == {"swiglu": "silu", "geglu": "gelu"}
    with pytest.raises(ValueError, match=r"unknown activation 'reglu'.*'geglu'.*'swiglu'"):
        ExpertBank(E, D, F_, activation="reglu")


# -- the dense GLU FFN in fairseq's layers ---------------------------------------------------


def _fairseq_cfg(activation: str):
    from fairseq.models.transformer import TransformerConfig

    cfg = TransformerConfig()
    for side in (cfg.encoder, cfg.decoder):
        side.embed_dim, side.ffn_embed_dim, side.attention_heads = D, F_, 2
    cfg.dropout = cfg.attention_dropout = 0.0
    cfg.moe_expert_activation = activation  # as fairseq's args carry --moe-expert-activation
    return cfg


@pytest.mark.parametrize("activation", GLUS)
@pytest.mark.parametrize("side", ["encoder", "decoder"])
def test_dense_layer_ffn_is_the_glu_formula(activation, side):
    from moe_mt.models.glu import GLUProjection, identity
    from moe_mt.models.transformer import MoeMtDecoderLayer, MoeMtEncoderLayer

    torch.manual_seed(0)
    cfg = _fairseq_cfg(activation)
    layer = (MoeMtEncoderLayer(cfg) if side == "encoder" else MoeMtDecoderLayer(cfg)).eval()
    assert isinstance(layer.fc1, GLUProjection) and layer.activation_fn is identity
    assert list(layer._modules).index("fc1") == list(layer._modules).index("fc2") - 1
    keys = {k for k in layer.state_dict() if k.startswith("fc")}
    assert keys == {f"fc1.{w}.{p}" for w in ("w1", "w3") for p in ("weight", "bias")} | {
        "fc2.weight",
        "fc2.bias",
    }
    assert not any(p.is_meta for p in layer.parameters())
    seen = {}
    layer.fc1.register_forward_hook(lambda m, i, o: seen.update(x=i[0], hidden=o))
    layer.fc2.register_forward_hook(lambda m, i, o: seen.update(fc2_in=i[0], y=o))
    x = torch.randn(5, 3, D)  # [n, b, d]
    with torch.no_grad():
        if side == "encoder":
            layer(x, encoder_padding_mask=None)
        else:
            layer(x, encoder_out=torch.randn(4, 3, D), encoder_padding_mask=None)
        w1, w3, w2 = layer.fc1.w1, layer.fc1.w3, layer.fc2
        xs = seen["x"].double()
        gate = xs @ w1.weight.double().t() + w1.bias.double()
        up = xs @ w3.weight.double().t() + w3.bias.double()
        want = (GATE[activation](gate) * up) @ w2.weight.double().t() + w2.bias.double()
    assert torch.equal(seen["fc2_in"], seen["hidden"])  # no activation after the GLU
    torch.testing.assert_close(seen["y"].double(), want, atol=1e-5, rtol=1e-5)


def test_dense_layer_without_glu_is_fairseq_s():
    from moe_mt.models.transformer import MoeMtDecoderLayer, MoeMtEncoderLayer

    for cls in (MoeMtEncoderLayer, MoeMtDecoderLayer):
        for activation in ("auto", None):
            layer = cls(_fairseq_cfg(activation))
            assert type(layer.fc1) is torch.nn.Linear and not layer.fc1.weight.is_meta
            assert layer.activation_fn is torch.nn.functional.relu
            assert "_glu_fc1" not in vars(layer) and "_glu_activation" not in vars(layer)
    with pytest.raises(ValueError, match="moe_expert_activation='reglu': expected one of auto"):
        MoeMtEncoderLayer(_fairseq_cfg("reglu"))


def test_an_moe_layer_keeps_its_own_ffn_under_glu():
    """The MoE layer's build_fc1 comes first in its MRO: no GLU projection is built (nor
    drawn), and its experts are what its block says."""
    from moe_mt.models.moe_layers import MoEEncoderLayer
    from moe_mt.moe import TopKRouter

    counts, next_draw = {}, {}
    for activation in ("auto", "swiglu"):
        block = MoEFeedForward(TopKRouter(D, E, k=1), ExpertBank(E, D, F_), None)
        torch.manual_seed(0)
        layer = MoEEncoderLayer(_fairseq_cfg(activation), block, "encoder.layers.0")
        next_draw[activation] = torch.rand(1)
        assert "fc1" not in layer._modules and "_glu_fc1" not in vars(layer)
        assert not any(type(m).__name__ == "GLUProjection" for m in layer.modules())
        counts[activation] = sum(p.numel() for p in layer.parameters())
    assert counts["auto"] == counts["swiglu"] and torch.equal(*next_draw.values())
