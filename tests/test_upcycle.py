"""Sparse upcycling (moe_mt/workflows/train/upcycle.py): every expert a copy of the dense FFN,
fresh routers, every other tensor copied; the upcycled model computes the dense function before
any update; mismatches are one line naming both models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from moe_mt.errors import MoeMtError
from moe_mt.models.mhmoe_options import UPCYCLE_REFUSAL
from moe_mt.moe import Router, Routing
from moe_mt.workflows.common.rundir import RunDir
from moe_mt.workflows.train.trainer import train
from moe_mt.workflows.train.upcycle import (
    _check_vocabulary,
    check_upcyclable,
    upcycled_state,
)
from tests.test_switch import EVERY_LAYER, batch, build, moe_config

DENSE = ("train.criterion=label_smoothed_cross_entropy",)


def hand_made(e: int = 3, d: int = 2, f: int = 4):
    fc1w = torch.arange(f * d, dtype=torch.float32).reshape(f, d)
    fc2w = -torch.arange(d * f, dtype=torch.float32).reshape(d, f)
    dense = {
        "emb": torch.full((5, d), 7.0),
        "l.fc1.weight": fc1w, "l.fc1.bias": torch.ones(f),
        "l.fc2.weight": fc2w, "l.fc2.bias": torch.full((d,), 2.0),
        "m.fc1.weight": torch.ones(f, d),
    }  # fmt: skip
    moe = {
        "emb": torch.zeros(5, d),
        "l.moe.experts.w1": torch.zeros(e, d, f), "l.moe.experts.b1": torch.zeros(e, f),
        "l.moe.experts.w2": torch.zeros(e, f, d), "l.moe.experts.b2": torch.zeros(e, d),
        "l.moe.router.weight": torch.full((e, d), 0.5),
        "m.fc1.weight": torch.zeros(f, d),
    }  # fmt: skip
    return dense, moe


def test_every_expert_copies_the_dense_ffn_and_the_router_is_fresh():
    dense, moe = hand_made()
    state, report = upcycled_state(moe, dense)
    for e in range(3):
        assert torch.equal(state["l.moe.experts.w1"][e], dense["l.fc1.weight"].t())
        assert torch.equal(state["l.moe.experts.b1"][e], dense["l.fc1.bias"])
        assert torch.equal(state["l.moe.experts.w2"][e], dense["l.fc2.weight"].t())
        assert torch.equal(state["l.moe.experts.b2"][e], dense["l.fc2.bias"])
    assert torch.equal(state["l.moe.router.weight"], moe["l.moe.router.weight"])
    assert torch.equal(state["emb"], dense["emb"]) and torch.equal(
        state["m.fc1.weight"], torch.ones(4, 2)
    )
    assert set(report.copied) == {"emb", "m.fc1.weight"}
    assert report.into_experts == {
        "l.moe.experts.w1": "l.fc1.weight", "l.moe.experts.b1": "l.fc1.bias",
        "l.moe.experts.w2": "l.fc2.weight", "l.moe.experts.b2": "l.fc2.bias",
    }  # fmt: skip
    assert list(report.kept) == ["l.moe.router.weight"]
    assert "into experts l.moe.experts.w1 <- l.fc1.weight" in report.lines()


def test_noise_makes_the_experts_differ_reproducibly():
    dense, moe = hand_made()
    state, _ = upcycled_state(moe, dense, noise=0.1, seed=3)
    again, _ = upcycled_state(moe, dense, noise=0.1, seed=3)
    w1 = state["l.moe.experts.w1"]
    assert torch.equal(w1, again["l.moe.experts.w1"])
    assert not torch.equal(w1[0], w1[1])
    ratio = w1[:, 1:] / dense["l.fc1.weight"].t()[1:]  # row 0 of fc1.weight.T holds a zero
    assert 0.02 < float((ratio - 1).std()) < 0.2


def test_mismatches_are_one_line_naming_both_models():
    dense, moe = hand_made()
    other_vocab = {**dense, "emb": torch.zeros(6, 2)}
    with pytest.raises(MoeMtError) as info:
        upcycled_state(moe, other_vocab, target_name="RUN", source_name="CKPT")
    message = str(info.value)
    assert "\n" not in message and "RUN" in message and "CKPT" in message
    assert "another backbone size: emb is (5, 2) in RUN but emb is (6, 2) in CKPT" in message
    wider = {**dense, "l.fc1.weight": torch.zeros(8, 2)}
    with pytest.raises(
        MoeMtError,
        match=r"l\.moe\.experts\.w1 is \(3, 2, 4\) in RUN but l\.fc1\.weight is \(8, 2\) in CKPT",
    ):
        upcycled_state(moe, wider, target_name="RUN", source_name="CKPT")
    with pytest.raises(MoeMtError, match="CKPT is not a dense model"):
        upcycled_state(moe, {**dense, "x.moe.experts.w1": torch.zeros(1)}, source_name="CKPT")
    with pytest.raises(MoeMtError, match="m.fc1.weight of RUN has no counterpart in CKPT"):
        upcycled_state(moe, {k: v for k, v in dense.items() if k != "m.fc1.weight"},
                       target_name="RUN", source_name="CKPT")  # fmt: skip


def test_other_dictionaries_are_another_vocabulary(tmp_path):
    for name, words in (("target", "a 1\nb 1\n"), ("source", "a 1\nc 1\n")):
        (tmp_path / name / "data" / "bin").mkdir(parents=True)
        (tmp_path / name / "data" / "bin" / "dict.en.txt").write_text(words)
    (tmp_path / "source" / "checkpoints").mkdir()
    checkpoint = tmp_path / "source" / "checkpoints" / "checkpoint_best.pt"
    with pytest.raises(MoeMtError, match="another vocabulary: data/bin/dict.en.txt differs"):
        _check_vocabulary(RunDir(tmp_path / "target"), checkpoint)


def test_mhmoe_and_dense_targets_are_refused(tmp_path):
    with pytest.raises(MoeMtError, match="MH-MoE cannot be upcycled: its experts take d/h-wide"):
        check_upcyclable(moe_config(tmp_path, arch="mhmoe_transformer_demo"))
    assert "sub-tokens" in UPCYCLE_REFUSAL
    with pytest.raises(MoeMtError, match="has no experts to upcycle into"):
        check_upcyclable(moe_config(tmp_path, arch="moemt_transformer_demo"))


class TieRouter(Router):
    """A router for which every expert ties: it picks one of them at random, weight 1."""

    def __init__(self, num_experts: int) -> None:
        super().__init__()
        self.num_experts, self.k = num_experts, 1

    def forward(self, x, pad_mask=None, sentence_index=None) -> Routing:
        index = torch.randint(self.num_experts, (x.shape[0], 1))
        return Routing(expert_index=index, combine_weight=torch.ones(x.shape[0], 1))


@pytest.mark.parametrize(
    "overrides, arch, tie",
    [
        # Top-1, capacity off, a router that always ties (weight 1, any of the copies).
        (("model.moe.capacity_factor=0",), "switch_transformer_demo", "stub"),
        # Top-2 with a zero gate: real ties, renormalised weights 1/2 + 1/2 of identical copies.
        (("model.moe.top_k=2", "model.moe.capacity_factor=0"), "switch_transformer_demo", "zero"),
        (
            ("model.moe.cmr=true", "model.moe.top_k=2", "model.moe.capacity_factor=0"),
            "switch_transformer_demo",
            "zero",
        ),  # CMR: the shared FFN is the dense one as well
        (("train.criterion=thor_label_smoothed_cross_entropy",), "thor_transformer_demo", None),
        (("model.moe.capacity_factor=0",), "xmoe_transformer_demo", "stub"),
    ],
    ids=["switch-top1", "switch-top2", "switch-cmr", "thor", "xmoe-top1"],
)
def test_upcycled_model_reproduces_the_dense_model_before_any_update(
    prepped_demo, overrides, arch, tie
):
    task, dense, _ = build(prepped_demo, *DENSE, "model.dropout=0", arch="moemt_transformer_demo")
    _, moe, _ = build(
        prepped_demo, "model.dropout=0", EVERY_LAYER, "model.moe.num_experts=4", *overrides,
        arch=arch, seed=7,
    )  # fmt: skip
    state, report = upcycled_state(moe.state_dict(), dense.state_dict())
    moe.load_state_dict(state)
    assert report.into_experts and all("router" in k or "gate" in k for k in report.kept)
    for _, block in moe.moe_layers():
        inner = getattr(block, "moe", None) or block
        if tie == "stub":
            inner.router = TieRouter(inner.num_experts)
        elif tie == "zero":
            torch.nn.init.zeros_(inner.router.weight)
        if hasattr(block, "gate"):  # CMR: any gate mixes two equal outputs
            torch.nn.init.normal_(block.gate.weight)
    sample = batch(task)
    dense.eval()
    moe.eval()
    with torch.no_grad():
        expected = dense(**sample["net_input"])[0]
        got = moe(**sample["net_input"])[0]
    # Every real target position (an MoE layer outputs zeros at pads, the dense FFN does not;
    # no real position attends to a pad).
    real = sample["net_input"]["prev_output_tokens"].ne(task.target_dictionary.pad())
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # end-to-end run, seconds (the default run stays near 6 min)
def test_train_upcycle_from_a_dense_run_logs_every_tensor(prepped_demo, tmp_path):
    dense_dir, moe_dir = tmp_path / "dense", tmp_path / "moe"
    for run in (dense_dir, moe_dir):
        shutil.copytree(prepped_demo, run)
    no_valid = "train.fairseq_args=[--disable-validation]"
    train(moe_config(dense_dir, *DENSE, "train.max_update=2", no_valid,
                     arch="moemt_transformer_demo"))  # fmt: skip
    cfg = moe_config(
        moe_dir, EVERY_LAYER, "model.moe.num_experts=2", "train.max_update=1", no_valid,
        f"train.upcycle_from={dense_dir}", "train.upcycle_noise=0.01",
    )  # fmt: skip
    result = train(cfg)
    assert result.summary["num_updates"] == 1
    init = json.loads((moe_dir / "upcycle" / "init.json").read_text())
    assert init["source"].endswith("checkpoint_best.pt") or init["source"].endswith("_last.pt")
    assert init["into_experts"] == 8 and init["kept"] == 2  # 2 layers x 4 tensors; 2 routers
    log = (moe_dir / "logs" / "upcycle.log").read_text()
    assert "into experts encoder.layers.0.moe.experts.w1 <- encoder.layers.0.fc1.weight" in log
    assert "kept own init decoder.layers.0.moe.router.weight: fresh router" in log
    # Resuming continues from the run's own checkpoint; nothing is upcycled again.
    again = train(moe_config(
        moe_dir, EVERY_LAYER, "model.moe.num_experts=2", "train.max_update=2", no_valid,
        f"train.upcycle_from={dense_dir}", "train.upcycle_noise=0.01",
    ))  # fmt: skip
    assert again.resumed_from_update == 1 and log == (moe_dir / "logs" / "upcycle.log").read_text()
