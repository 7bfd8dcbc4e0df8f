"""The methods of docs/methods.md through `moemt train` and back: the DeepSeek-style piece (with
GLU experts, the global-batch balance loss and gradient accumulation) and the expert-choice
piece train, log their statistics, reload from the checkpoint alone and translate."""

from __future__ import annotations

import json
import shutil

import pytest

from moe_mt.moe import ExpertChoiceRouter, SharedExpertMoE
from moe_mt.workflows.train.trainer import train
from tests.conftest import REPO, TINY_MODEL, demo_config
from tests.test_switch import _load, _translate, batch

PIECES = {
    # 8 experts of width 32 (a quarter of the tiny FFN), top-3 + 1 shared, sigmoid, bias
    "deepseek": (
        str(REPO / "recipes" / "families" / "deepseek.yaml"), "model.moe.num_experts=8",
        "model.moe.expert_ffn_dim=32", "model.moe.expert_activation=swiglu",
        "model.moe.balance_scope=global_batch", "train.update_freq=2",
    ),
    "expert_choice": (str(REPO / "recipes" / "pieces" / "moe" / "expert_choice.yaml"),),
}  # fmt: skip


def _last_train_record(run_dir) -> dict:
    log = (run_dir / "logs" / "train.log").read_text()
    return json.loads([ln for ln in log.splitlines() if "| train |" in ln][-1].split("| ", 3)[-1])


@pytest.mark.parametrize(
    "piece",
    # the DeepSeek run takes about 25 s (gradient accumulation, GLU): behind -m slow
    [pytest.param("deepseek", marks=pytest.mark.slow), "expert_choice"],
)
def test_a_method_piece_trains_reloads_and_translates(prepped_demo, tmp_path, piece):
    run_dir = tmp_path / "run"
    shutil.copytree(prepped_demo, run_dir)
    cfg = demo_config(
        run_dir, "data.spm.vocab_size=2000", *TINY_MODEL, *PIECES[piece], "model.moe.freq=1",
        "train.max_update=4", "train.validate_interval_updates=4",
    )  # fmt: skip
    train(cfg)
    record = _last_train_record(run_dir)
    models, loaded, task = _load(run_dir / "checkpoints" / "checkpoint_last.pt")
    model = models[0]
    layers = dict(model.moe_layers())
    if piece == "deepseek":
        assert sorted(layers) == ["decoder.layers.0", "encoder.layers.0"]
        block = layers["encoder.layers.0"]
        assert isinstance(block, SharedExpertMoE) and block.shared.d_ff == 32
        assert block.moe.experts.is_glu and block.moe.router.score_func == "sigmoid"
        assert loaded.model.moe_balance_scope == "global_batch"
        moved = [b.moe.router.balancer.bias_steps.abs().sum() for b in layers.values()]
        assert all(m > 0 for m in moved), "4 updates moved every layer's bias"
        assert 0 < float(record["train_moe_balance"])
    else:
        assert sorted(layers) == ["encoder.layers.0"]  # the decoder stays dense
        assert isinstance(layers["encoder.layers.0"].router, ExpertChoiceRouter)
        assert 0 <= float(record["train_moe_tokens_without_expert"]) < 1
        assert float(record["train_moe_dropped"]) == 0
    model.eval()
    assert len(_translate(task, models, batch(task, n=3, split="test"))) == 3
