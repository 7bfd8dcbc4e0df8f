"""The router registry: ``model.moe.router`` names a registered :class:`RouterKind`; a router
added by one test-only module (tests/toy_router.py, hash routing) reaches the schema, the
layers of every routed family, the model summary and ``moemt train``."""

from __future__ import annotations

import importlib
import math
import shutil
import sys

import pytest
import torch

from moe_mt.errors import MoeMtError
from moe_mt.models import families
from moe_mt.workflows.train.model_summary import build_model, model_summary
from tests.conftest import REPO, TINY_MODEL, demo_config, moemt_with_and_without_plugin

D, E = 64, 4  # TINY_MODEL's width; experts


@pytest.fixture(scope="module")
def toy():
    import moe_mt

    moe_mt.register()
    return importlib.import_module("tests.toy_router")


def test_built_in_routers_and_their_options():
    assert families.router_names()[:2] == ("topk", "cosine")
    assert [o.name for o in families.router_kind("cosine").options] == ["router_dim"]
    with pytest.raises(ValueError, match="moe_router='nosuch': expected one of topk, cosine"):
        families.router_kind("nosuch")


def test_an_unknown_router_is_one_line_at_load(tmp_path):
    with pytest.raises(MoeMtError, match=r"model.moe.router=nosuch: expected one of topk, cos"):
        demo_config(
            tmp_path / "run", "model.arch=switch_transformer_demo", "model.moe.router=nosuch"
        )


def test_the_hash_router_follows_its_definition(toy):
    router = toy.HashRouter(D, E, seed=3)
    x = torch.randn(50, D)
    pad = torch.zeros(50, dtype=torch.bool)
    pad[-5:] = True
    routing = router(x, pad)
    bits = (x @ router.planes > 0).long()  # [t, 2]: ceil(log2 4) = 2 hyperplanes
    want = (bits[:, 0] + 2 * bits[:, 1]) % E
    assert torch.equal(routing.expert_index[:, 0], want)
    assert routing.combine_weight[:-5].eq(1).all() and routing.combine_weight[-5:].eq(0).all()
    assert torch.equal(toy.HashRouter(D, E, seed=3)(x).expert_index, routing.expert_index)
    assert router.macs_per_row() == D * math.ceil(math.log2(E))


def test_hash_router_options_reach_the_schema_and_every_routed_family(toy, tmp_path):
    from moe_mt.config import schema_keys

    assert "hash" in families.family("switch").option("router").allowed()
    assert schema_keys()["model.moe.hash_seed"].help.startswith(toy.HASH_SEED.help)
    for family in ("switch", "xmoe", "mhmoe", "soft_moe"):
        assert families.family(family).option("hash_seed") is toy.HASH_SEED
    assert families.family("thor").option("hash_seed") is None  # THOR has no router option
    with pytest.raises(MoeMtError, match=r"model.moe.hash_seed=-1: must be at least 0$"):
        demo_config(
            tmp_path / "run", "model.arch=switch_transformer_demo", "model.moe.hash_seed=-1"
        )


def test_a_switch_model_with_the_hash_router_is_built_and_counted(toy, prepped_demo):
    cfg = demo_config(
        prepped_demo, "data.spm.vocab_size=2000", *TINY_MODEL, "model.arch=switch_transformer_demo",
        "model.moe.freq=1", f"model.moe.num_experts={E}", "model.moe.router=hash",
        "model.moe.hash_seed=5",
    )  # fmt: skip
    model = build_model(cfg)
    routers = [block.router for _, block in model.moe_layers()]
    assert routers and all(isinstance(r, toy.HashRouter) for r in routers)
    seeded = toy.HashRouter(D, E, seed=5)
    assert torch.equal(routers[0].planes, seeded.planes)  # model.moe.hash_seed reached it

    topk = model_summary(demo_config(
        prepped_demo, "data.spm.vocab_size=2000", *TINY_MODEL, "model.arch=switch_transformer_demo",
        "model.moe.freq=1", f"model.moe.num_experts={E}",
    ))  # fmt: skip
    hashed = model_summary(cfg)
    layers = hashed["moe_layers"] // 2  # per side
    # The top-k gate costs d E per token and layer, the hash router d ceil(log2 E).
    delta = layers * (D * E - D * 2)
    assert topk["encoder_flops"] - hashed["encoder_flops"] == 2 * delta
    assert topk["parameters"] - hashed["parameters"] == hashed["moe_layers"] * D * E


@pytest.mark.slow  # end-to-end run, seconds (the default run stays near 6 min)
def test_moemt_train_trains_with_the_router_named_in_moemt_plugins(prepped_demo, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(prepped_demo, run_dir)
    command = [
        sys.executable, "-m", "moe_mt.cli.main", "train", str(REPO / "recipes" / "demo.yaml"),
        f"run_dir={run_dir}", "data.spm.vocab_size=2000", *TINY_MODEL,
        "model.family=switch", "model.moe.router=hash", "model.moe.num_experts=2",
        "model.moe.freq=1", "train.max_update=4",
    ]  # fmt: skip
    refused, done = moemt_with_and_without_plugin(command, "tests.toy_router")
    assert refused.returncode == 1
    assert "model.moe.router=hash: expected one of topk, cosine" in refused.stderr

    assert done.returncode == 0, done.stderr[-2000:]
    from moe_mt.checkpoints import load_state
    from moe_mt.workflows.train.trainer import checkpoint_update

    last = run_dir / "checkpoints" / "checkpoint_last.pt"
    assert checkpoint_update(last) == 4
    assert "encoder.layers.0.moe.router.planes" in load_state(last)["model"]
    assert "criterion: moe_label_smoothed_cross_entropy" in (run_dir / "config.yaml").read_text()
