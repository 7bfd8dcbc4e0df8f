"""Soft MoE: registration, softmax axes against a slow per-sentence reference, pads, decoder
refusal, per-sentence determinism, and train / reload / generate on the shipped corpus."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from moe_mt.errors import MoeMtError
from moe_mt.models.soft_moe import MODEL_NAME, SoftMoEFeedForward, SoftMoETransformerModel
from moe_mt.moe import ExpertBank, SoftSlotRouter
from tests.conftest import REPO
from tests.test_switch import _load, _translate, batch, build, moe_config

ARCH = "soft_moe_transformer_demo"
EVERY_LAYER = "model.moe.freq=1"


def block(d=8, experts=3, slots=2, dtype=torch.float64):
    torch.manual_seed(0)
    layer = SoftMoEFeedForward(
        SoftSlotRouter(d, experts, slots), ExpertBank(experts, d, 16, activation="gelu")
    )
    with torch.no_grad():
        layer.router.scale.fill_(2.5)  # a scale other than 1, so that its place is checked
    return layer.to(dtype)


def reference(layer: SoftMoEFeedForward, x, pad_mask):
    """Per sentence, only its real tokens, slot by slot: the paper's Algorithm 1."""
    router, experts = layer.router, layer.experts
    e, s = router.num_experts, router.slots_per_expert
    out = torch.zeros(x.shape[0], x.shape[1], experts.d_out, dtype=x.dtype)
    phi = F.normalize(router.slot_embed, dim=-1).reshape(e * s, -1)  # [e*s, d]
    for b in range(x.shape[0]):
        real = ~pad_mask[b]
        tokens = x[b, real]  # [n, d]
        logits = router.scale * F.normalize(tokens, dim=-1) @ phi.t()  # [n, e*s]
        dispatch = logits.softmax(dim=0)  # each slot: a distribution over the sentence's tokens
        combine = logits.softmax(dim=1)  # each token: a distribution over the slots
        slot_in = dispatch.t() @ tokens  # [e*s, d]
        slot_out = torch.cat(
            [experts.forward_expert(slot_in[i * s : (i + 1) * s], i) for i in range(e)]
        )
        out[b, real] = combine @ slot_out
    return out


def test_registered_architectures_are_pinned():
    from fairseq.models import ARCH_MODEL_REGISTRY

    names = {a for a, m in ARCH_MODEL_REGISTRY.items() if m is SoftMoETransformerModel}
    assert names == {
        f"soft_moe_transformer_{s}" for s in ("tiny", "demo", "iwslt", "wmt", "wmt_big")
    }
    assert MODEL_NAME == "moemt_soft_moe_transformer"


def test_softmax_axes_and_pads_match_the_slow_reference():
    layer = block()
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[0, 4:] = True  # right pads
    pad[1, :2] = True  # left pads (fairseq's source side)
    out = layer(x, pad)
    torch.testing.assert_close(out.y, reference(layer, x, pad))
    assert torch.equal(out.y[pad], torch.zeros(int(pad.sum()), 8, dtype=x.dtype))
    routing = out.routing
    dispatch_sums = routing.dispatch_weight.sum(dim=1)  # over tokens: 1 for every slot
    torch.testing.assert_close(dispatch_sums, torch.ones_like(dispatch_sums))
    assert torch.equal(routing.dispatch_weight[pad], torch.zeros_like(routing.dispatch_weight[pad]))
    combine_sums = routing.combine_weight.sum(dim=(2, 3))  # over slots: 1 for every real token
    torch.testing.assert_close(combine_sums[~pad], torch.ones_like(combine_sums[~pad]))
    assert out.aux_losses == {} and float(out.stats.activation_rate) == 1.0
    assert float(out.stats.fraction_dropped) == 0.0


def test_pads_never_enter_a_slot():
    layer = block()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    pad = torch.tensor([[False] * 3 + [True] * 2, [False] * 5])
    y = layer(x, pad).y
    noisy = x.clone()
    noisy[pad] = 1e3 * torch.randn(int(pad.sum()), 8, dtype=x.dtype)
    torch.testing.assert_close(layer(noisy, pad).y, y)  # pad contents change nothing
    alone = layer(x[:1, :3], None).y  # the first sentence without its pads
    torch.testing.assert_close(y[0, :3], alone[0])


def test_scale_starts_at_one_and_gradients_reach_it():
    router = SoftSlotRouter(8, 2)
    assert router.scale.item() == 1.0
    layer = SoftMoEFeedForward(router, ExpertBank(2, 8, 4))
    layer(torch.randn(2, 3, 8)).y.sum().backward()
    assert router.scale.grad is not None and router.slot_embed.grad is not None


@pytest.mark.parametrize("sides", ["decoder", "both"])
def test_decoder_placement_is_refused_before_anything_is_built(prepped_demo, sides):
    with pytest.raises(MoeMtError, match="cannot sit in the decoder.*causal decoder"):
        build(prepped_demo, f"model.moe.sides={sides}", arch=ARCH)


def test_sparse_decoder_and_layer_placement(prepped_demo):
    _, model, _ = build(
        prepped_demo, "model.encoder_layers=2", "model.decoder_layers=2",
        "model.moe.soft_decoder=sparse", "model.moe.slots_per_expert=2", arch=ARCH,
    )  # fmt: skip
    layers = {name: type(b).__name__ for name, b in model.moe_layers()}
    assert layers == {
        "encoder.layers.1": "SoftMoEFeedForward",
        "decoder.layers.1": "MoEFeedForward",
    }
    assert model.moe_layers()[0][1].router.slots_per_expert == 2


@pytest.fixture(scope="module")
def soft_run(prepped_demo, tmp_path_factory):
    from moe_mt.workflows.train.trainer import train

    run_dir = tmp_path_factory.mktemp("soft") / "run"
    shutil.copytree(prepped_demo, run_dir)
    cfg = moe_config(
        run_dir, EVERY_LAYER, "model.moe.num_experts=4", "train.max_update=6",
        "train.fairseq_args=[--disable-validation]", arch=ARCH,
    )  # fmt: skip
    train(cfg)
    return run_dir


def test_train_reload_and_generate(soft_run):
    models, cfg, task = _load(soft_run / "checkpoints" / "checkpoint_last.pt")
    assert cfg.model.arch == ARCH and cfg.model.moe_sides == "encoder"
    assert (cfg.model.moe_slots_per_expert, cfg.model.moe_soft_decoder) == (1, "dense")
    assert [n for n, _ in models[0].moe_layers()] == ["encoder.layers.0"]
    models[0].eval()
    assert len(_translate(task, models, batch(task, n=3, split="test"))) == 3


def test_a_sentence_translates_the_same_alone_and_in_a_batch(soft_run):
    models, _, task = _load(soft_run / "checkpoints" / "checkpoint_last.pt")
    models[0].eval()
    task.load_dataset("test")
    dataset = task.dataset("test")
    items = [dataset[i] for i in range(8)]
    lengths = [len(item["source"]) for item in items]
    assert len(set(lengths)) > 1  # the batch pads some sentences
    in_batch = _translate(task, models, dataset.collater(items))
    ids = [int(i) for i in dataset.collater(items)["id"]]
    alone = {
        int(item["id"]): _translate(task, models, dataset.collater([item]))[0] for item in items
    }
    assert in_batch == [alone[i] for i in ids]


def test_recipe_loads_and_passes_the_keys(tmp_path):
    from moe_mt.config import load_config
    from moe_mt.workflows.train.fairseq_args import model_args

    cfg = load_config(REPO / "recipes" / "demo_soft_moe.yaml", [f"run_dir={tmp_path}"])
    args = model_args(cfg.model)
    assert args[:2] == ["--arch", "soft_moe_transformer_demo"]
    assert args[args.index("--moe-slots-per-expert") + 1] == "1"
    assert args[args.index("--moe-sides") + 1] == "encoder"
