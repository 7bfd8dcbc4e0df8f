"""Every recipe loads, and fairseq accepts the training arguments it produces (none rots unseen)."""

from __future__ import annotations

import pytest

from moe_mt.config import load_config
from moe_mt.workflows.fairseq_args import train_args
from moe_mt.workflows.rundir import RunDir
from moe_mt.workflows.train import parse_fairseq_args
from tests.conftest import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def test_recipe_count():
    # One per family plus distillation; update when a recipe is added or removed.
    assert [p.name for p in RECIPES] == [
        "demo.yaml", "demo_distill.yaml", "demo_mhmoe.yaml", "demo_softmoe.yaml",
        "demo_switch.yaml", "demo_thor.yaml", "demo_xmoe.yaml",
    ]  # fmt: skip


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_fairseq_accepts_it(recipe, tmp_path):
    cfg = load_config(recipe, [f"run_dir={tmp_path / 'run'}"])
    assert cfg.name
    parse_fairseq_args(train_args(cfg, RunDir(cfg.run_dir)))
    assert not (tmp_path / "run").exists()  # loading and checking write nothing
