"""MH-MoE: registration, split/merge round trip, identity experts, pads, a per-sub-token
reference, merge placement, and train / reload / generate on the shipped corpus."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from moe_mt.models.mhmoe import (
    MODEL_NAME,
    MHMoETransformerModel,
    MultiHeadMoE,
    merge_heads,
    split_heads,
)
from moe_mt.moe import ExpertBank, MoEFeedForward, TopKRouter
from moe_mt.workflows.evaluate.expert_usage import track_expert_usage
from tests.conftest import REPO
from tests.test_switch import _load, _translate, batch, build, moe_config

ARCH = "mhmoe_transformer_demo"
EVERY_LAYER = "model.moe.freq=1"


class IdentityExperts(nn.Module):
    """Stands in for an expert bank: every expert returns its input."""

    def __init__(self, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts

    def forward(self, x, counts):
        return x


def block(d=16, heads=4, experts=4, k=2, capacity=None, bank=None, placement="before"):
    torch.manual_seed(0)
    router = TopKRouter(d // heads, experts, k, init_scale=1.0)
    bank = bank or ExpertBank(experts, d // heads, 8, activation="gelu")
    return MultiHeadMoE(d, heads, MoEFeedForward(router, bank, capacity, capacity), placement)


def test_registered_architectures_are_pinned():
    from fairseq.models import ARCH_MODEL_REGISTRY

    names = {a for a, m in ARCH_MODEL_REGISTRY.items() if m is MHMoETransformerModel}
    assert names == {f"mhmoe_transformer_{s}" for s in ("tiny", "demo", "iwslt", "wmt", "wmt_big")}
    assert MODEL_NAME == "moemt_mhmoe_transformer"


def test_split_and_merge_are_inverse_and_keep_head_order():
    x = torch.arange(3 * 8, dtype=torch.float32).view(3, 8)
    sub = split_heads(x, 4)
    assert sub.shape == (12, 2)
    # Sub-token j of token i is row i * h + j, holding that token's columns of head j.
    for i in range(3):
        for j in range(4):
            assert torch.equal(sub[i * 4 + j], x[i, 2 * j : 2 * j + 2])
    assert torch.equal(merge_heads(sub, 4), x)


@pytest.mark.parametrize("with_pads", [False, True])
def test_identity_experts_give_the_identity_up_to_the_projections(with_pads):
    layer = block(bank=IdentityExperts(4))  # top-2, renormalised weights: they sum to 1
    x = torch.randn(10, 16)
    pad = torch.tensor([False] * 7 + [True] * 3) if with_pads else None
    y = layer(x, pad).y
    expected = layer.merge(layer.multi_head(x))
    real = slice(0, 7) if with_pads else slice(None)
    torch.testing.assert_close(y[real], expected[real])
    if with_pads:
        assert torch.equal(y[7:], torch.zeros(3, 16))
    with torch.no_grad():  # identity projections: the whole layer is the identity map
        for proj in (layer.multi_head, layer.merge):
            proj.weight.copy_(torch.eye(16))
            proj.bias.zero_()
    torch.testing.assert_close(layer(x).y, x)


def test_pad_sub_tokens_take_no_capacity_and_stay_out_of_the_losses():
    layer = block(capacity=0.5)  # tight: some sub-tokens are dropped
    x = torch.randn(12, 16)
    pad = torch.zeros(12, dtype=torch.bool)
    pad[[2, 5, 6, 11]] = True
    padded = layer(x, pad)
    alone = layer(x[~pad])  # the same real tokens in the same order, without pads
    torch.testing.assert_close(padded.y[~pad], alone.y)
    for name in ("balance", "z"):
        torch.testing.assert_close(padded.aux_losses[name], alone.aux_losses[name])
    assert torch.equal(padded.stats.tokens_per_expert, alone.stats.tokens_per_expert)
    assert padded.plan.capacity == alone.plan.capacity == 8  # ceil(0.5 * 2 * (8 * 4) / 4)
    assert float(padded.stats.fraction_dropped) > 0
    assert int(padded.plan.num_assignments) == 8 * 4 * 2  # real sub-tokens x k
    assert not padded.plan.kept.view(12, 4, 2)[pad].any()


def test_matches_a_per_sub_token_reference():
    layer = block()
    x = torch.randn(6, 16, dtype=torch.float64)
    layer = layer.double()
    y = layer(x).y
    sub = split_heads(layer.multi_head(x), 4)
    probs = layer.moe.router.logits(sub).softmax(-1)
    rows = []
    for s, p in zip(sub, probs, strict=True):
        top_p, top_i = p.topk(2)
        top_p = top_p / top_p.sum()
        experts = layer.moe.experts
        rows.append(
            sum(
                w * experts.forward_expert(s[None], int(e))[0]
                for w, e in zip(top_p, top_i, strict=True)
            )
        )
    expected = layer.merge(merge_heads(torch.stack(rows), 4))
    torch.testing.assert_close(y, expected)


class _ZeroAttention(nn.Module):
    def forward(self, query, **kwargs):
        return torch.zeros_like(query), None


@pytest.mark.parametrize("placement", ["before", "after"])
def test_merge_projection_before_or_after_the_residual(prepped_demo, placement):
    _, model, _ = build(
        prepped_demo, EVERY_LAYER, f"model.moe.merge_placement={placement}", arch=ARCH
    )
    model.eval()
    layer = model.encoder.layers[0]
    layer.self_attn = _ZeroAttention()  # the layer is then LN2(ffn residual) of LN1(x)
    x = torch.randn(5, 2, 64)
    with torch.no_grad():
        out = layer(x, None)
        r = layer.self_attn_layer_norm(x)
        branch = layer.moe.forward_tbd(r).y  # merged heads; projected only when "before"
        total = r + branch if placement == "before" else layer.moe.merge(r + branch)
        expected = layer.final_layer_norm(total)
    torch.testing.assert_close(out, expected)


def test_pads_and_sub_token_counts_in_the_model(prepped_demo):
    task, model, _ = build(prepped_demo, EVERY_LAYER, arch=ARCH)
    sample = batch(task)
    model.eval()
    with torch.no_grad():
        _, extra = model(**sample["net_input"])
    src, tgt = sample["net_input"]["src_tokens"], sample["net_input"]["prev_output_tokens"]
    pad = task.source_dictionary.pad()
    tokens = {o.name: int(o.output.stats.tokens_per_expert.sum()) for o in extra["moe"]}
    # 4 heads, top-2: every real token sends 8 sub-token assignments, pads none.
    assert tokens == {
        "encoder.layers.0": 8 * int(src.ne(pad).sum()),
        "decoder.layers.0": 8 * int(tgt.ne(pad).sum()),
    }
    assert all(0 < float(o.output.stats.activation_rate) <= 1 for o in extra["moe"])


@pytest.mark.parametrize("placement", ["before", "after"])
def test_train_reload_and_generate(prepped_demo, tmp_path, placement):
    run_dir = tmp_path / "run"
    shutil.copytree(prepped_demo, run_dir)
    from moe_mt.workflows.train.trainer import train

    cfg = moe_config(
        run_dir, EVERY_LAYER, "model.moe.num_experts=4", "train.max_update=4",
        "train.validate_interval_updates=4", f"model.moe.merge_placement={placement}", arch=ARCH,
    )  # fmt: skip
    train(cfg)
    log = (run_dir / "logs" / "train.log").read_text()
    record = json.loads([ln for ln in log.splitlines() if "| train |" in ln][-1].split("| ", 3)[-1])
    assert 0 < float(record["train_moe_active"]) <= 1  # the expert activation rate
    models, loaded_cfg, task = _load(run_dir / "checkpoints" / "checkpoint_last.pt")
    assert loaded_cfg.model.arch == ARCH
    assert (loaded_cfg.model.moe_heads, loaded_cfg.model.moe_top_k) == (4, 2)
    assert loaded_cfg.model.moe_merge_placement == placement
    block_ = models[0].moe_layers()[0][1]
    assert isinstance(block_, MultiHeadMoE) and block_.moe.experts.d_model == 16  # 64 / 4
    models[0].eval()
    sample = batch(task, n=3, split="test")
    with track_expert_usage(models[0]) as usage:  # what `moemt eval` puts in report.json
        assert len(_translate(task, models, sample)) == 3
    layers = usage.as_dict()["layers"]
    real = int(sample["net_input"]["src_tokens"].ne(task.source_dictionary.pad()).sum())
    assert sum(layers["encoder.layers.0"]["tokens"]) == 4 * 2 * real  # sub-token assignments
    assert all(1 <= layer["active_experts"] <= 4 for layer in layers.values())


def test_recipe_loads_and_passes_the_keys(tmp_path):
    from moe_mt.config import load_config
    from moe_mt.workflows.train.fairseq_args import model_args

    cfg = load_config(REPO / "recipes" / "demo_mhmoe.yaml", [f"run_dir={tmp_path}"])
    args = model_args(cfg.model)
    assert args[:2] == ["--arch", "mhmoe_transformer_demo"]
    assert args[args.index("--moe-heads") + 1] == "4"
    assert args[args.index("--moe-merge-placement") + 1] == "before"
    assert cfg.train.criterion == "moe_label_smoothed_cross_entropy"
