"""The model family registry: built-in families, and a family added by one test-only module
(tests/toy_family.py) that reaches the config schema, the model summary and ``moemt train``."""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import sys

import pytest
from torch import nn

from moe_mt.config import MoEConfig
from moe_mt.errors import MoeMtError
from moe_mt.models import families
from moe_mt.models.families import Family, OptionSpec
from moe_mt.moe import ExpertBank
from moe_mt.workflows.train.model_summary import build_model, model_summary, summarize
from tests.conftest import REPO, TINY_MODEL, demo_config, moemt_with_and_without_plugin

TOY_ARCH = "toy_shared_expert_transformer_demo"
D, F, SHARED = 64, 128, 32  # TINY_MODEL's width and FFN width; the toy's shared expert width
BUILT_IN = ("dense", "switch", "xmoe", "thor", "mhmoe", "soft_moe")


@pytest.fixture(scope="module")
def toy():
    import moe_mt

    moe_mt.register()
    return importlib.import_module("tests.toy_family")


def _summary(run_dir, arch, *overrides):
    cfg = demo_config(
        run_dir, "data.spm.vocab_size=2000", *TINY_MODEL, f"model.arch={arch}",
        "model.moe.freq=1", "model.moe.num_experts=4", *overrides,
    )  # fmt: skip
    return cfg, model_summary(cfg)


def test_built_in_families_are_named_after_their_architectures():
    import moe_mt

    moe_mt.register()
    assert set(BUILT_IN) <= {f.name for f in families.families()}
    for name in BUILT_IN:
        prefix = "moemt_transformer" if name == "dense" else f"{name}_transformer"
        family = families.family_of_arch(f"{prefix}_wmt")
        assert family.name == name and family.arch_prefixes == (prefix,)
        assert (REPO / "recipes" / "families" / f"{name}.yaml").is_file()
    assert families.family_of_arch("transformer_iwslt_de_en") is None  # fairseq's own
    assert families.family_of_arch("thor_transformer_demo").criterion == (
        "thor_label_smoothed_cross_entropy"
    )


def test_the_schema_holds_each_shared_key_once_with_every_family_default():
    fields = {f.name: f for f in dataclasses.fields(MoEConfig)}
    help_text = fields["num_experts"].metadata["help"]
    assert help_text.startswith("experts per MoE layer (")
    assert "thor: 2" in help_text and "mhmoe, soft_moe, switch, xmoe: 8" in help_text
    assert "heads" in fields and "slots_per_expert" in fields and "granularity" in fields
    assert all(f.default is None for f in fields.values())


def test_a_conflicting_option_is_refused_at_registration():
    clash = OptionSpec("num_experts", str, "8", "experts per MoE layer")
    with pytest.raises(ValueError, match="model.moe.num_experts .* conflicts with family"):
        families.register_family(Family("clash", ("clash_transformer",), (clash,)))
    assert "clash" not in [f.name for f in families.families()]


def test_the_toy_option_is_in_the_schema_with_its_help(toy, tmp_path):
    field = {f.name: f for f in dataclasses.fields(MoEConfig)}["shared_dim"]
    assert field.metadata["help"] == f"{toy.SHARED_DIM.help} (toy_shared_expert: 64)"
    cfg = demo_config(tmp_path / "run", f"model.arch={TOY_ARCH}", "model.moe.shared_dim=16")
    assert cfg.model.moe.shared_dim == 16
    with pytest.raises(MoeMtError, match="unknown key 'model.moe.shared_dimm'"):
        demo_config(tmp_path / "run", "model.moe.shared_dimm=16")
    assert families.family_of_arch(TOY_ARCH) is toy.FAMILY


def test_one_option_declaration_reaches_argparse_schema_bounds_config_and_defaults(toy, tmp_path):
    """The toy's ``shared_dim`` is declared once (an OptionSpec); everything else follows."""
    from fairseq import options

    from moe_mt.config import schema_keys
    from moe_mt.workflows.common.rundir import RunDir
    from moe_mt.workflows.train.fairseq_args import train_args

    assert schema_keys()["model.moe.shared_dim"].help.startswith(toy.SHARED_DIM.help)
    with pytest.raises(MoeMtError, match=r"model.moe.shared_dim=0: must be at least 1$"):
        demo_config(tmp_path / "run", f"model.arch={TOY_ARCH}", "model.moe.shared_dim=0")
    cfg = demo_config(tmp_path / "run", f"model.arch={TOY_ARCH}")
    assert cfg.train.criterion == toy.FAMILY.criterion  # the family's, with no override
    argv = train_args(cfg, RunDir(cfg.run_dir))
    parsed = options.parse_args_and_arch(options.get_training_parser(), argv)
    assert parsed.moe_shared_dim == toy.SHARED_DIM.default  # the architecture fills it in
    given = options.parse_args_and_arch(
        options.get_training_parser(), argv + ["--moe-shared-dim", "7"]
    )
    assert given.moe_shared_dim == 7


def test_the_toy_family_survives_a_second_import(toy):
    from fairseq.models import ARCH_MODEL_REGISTRY

    again = importlib.reload(toy)
    assert ARCH_MODEL_REGISTRY[TOY_ARCH] is again.SharedExpertTransformerModel
    assert families.family_of_arch(TOY_ARCH) is again.FAMILY


def test_the_toy_block_is_counted_by_its_own_counter(toy, prepped_demo):
    _, switch = _summary(prepped_demo, "switch_transformer_demo")
    _, s = _summary(prepped_demo, TOY_ARCH, f"model.moe.shared_dim={SHARED}")
    shared_weights = 2 * D * SHARED + SHARED + D
    assert s["moe_layers"] == switch["moe_layers"] == 2
    assert s["parameters"] == switch["parameters"] + 2 * shared_weights
    assert s["expert_parameters"] == switch["expert_parameters"]
    assert s["parameters"] - s["active_parameters"] == 3 * (2 * D * F + F + D) * 2  # 3 of 4 idle
    assert s["encoder_flops"] == switch["encoder_flops"] + 2 * (2 * D * SHARED)
    assert s["decoder_flops"] == switch["decoder_flops"] + 2 * (2 * D * SHARED)


class UnregisteredBlock(nn.Module):
    """An MoE block that no family counts."""

    def __init__(self, experts: ExpertBank) -> None:
        super().__init__()
        self.experts = experts


def test_a_block_no_family_counts_is_an_error(prepped_demo):
    cfg, _ = _summary(prepped_demo, "switch_transformer_demo")
    model = build_model(cfg)
    layer = model.encoder.layers[0]
    layer.moe = UnregisteredBlock(layer.moe.experts)
    with pytest.raises(MoeMtError) as error:
        summarize(model, cfg.model.arch)
    message = str(error.value)
    assert "\n" not in message
    assert "test_family_registry.UnregisteredBlock holds experts" in message
    assert "moe_mt.models.families.register_counter" in message

    layer.moe = nn.Bilinear(D, D, D)  # parameters of its own, no counter: not a silent 0
    with pytest.raises(MoeMtError, match="block torch.nn.modules.linear.Bilinear has parameters"):
        summarize(model, cfg.model.arch)


@pytest.mark.slow  # end-to-end run, seconds (the default run stays near 6 min)
def test_moemt_train_trains_the_toy_family_named_in_moemt_plugins(prepped_demo, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(prepped_demo, run_dir)
    command = [
        sys.executable, "-m", "moe_mt.cli.main", "train", str(REPO / "recipes" / "demo.yaml"),
        f"run_dir={run_dir}", "data.spm.vocab_size=2000", *TINY_MODEL, f"model.arch={TOY_ARCH}",
        f"model.moe.shared_dim={SHARED}", "model.moe.num_experts=2", "model.moe.freq=1",
        "train.max_update=4",
    ]  # fmt: skip
    refused, done = moemt_with_and_without_plugin(command, "tests.toy_family")
    assert refused.returncode == 1
    assert "unknown key 'model.moe.shared_dim'" in refused.stderr

    assert done.returncode == 0, done.stderr[-2000:]
    from moe_mt.checkpoints import load_state
    from moe_mt.workflows.train.trainer import checkpoint_update

    last = run_dir / "checkpoints" / "checkpoint_last.pt"
    assert checkpoint_update(last) == 4
    state = load_state(last)["model"]
    assert state["encoder.layers.0.moe.shared.0.weight"].shape == (SHARED, D)
    assert "moe_balance" in (run_dir / "logs" / "train.log").read_text()
    assert f"shared_dim: {SHARED}" in (run_dir / "config.yaml").read_text()


def test_declared_choices_are_the_layers_own():
    """The light option modules repeat the choice tuples of the torch modules that implement
    them (the schema must not import torch); they must not drift apart."""
    from moe_mt.models import switch_options, thor_options
    from moe_mt.moe import conventions, router_random

    assert switch_options.BALANCE_CHOICES.choices == conventions.BALANCE_CHOICES
    assert switch_options.RENORMALIZE.choices == conventions.RENORMALIZE
    assert switch_options.SECOND_EXPERT_POLICY.choices == conventions.SECOND_EXPERT_POLICIES
    assert switch_options.CAPACITY_FORMULA.choices == conventions.CAPACITY_FORMULAS
    assert thor_options.GRANULARITY.choices == router_random.GRANULARITIES
    assert thor_options.INFERENCE.choices == router_random.MODES


def test_a_routed_family_trained_without_its_criterion_is_said_in_one_line(tmp_path):
    """Issue 34, item 1: the criterion follows the family; a dense criterion set on purpose
    for an MoE family is named, with what it drops."""
    from moe_mt.workflows.train.trainer import dropped_aux_losses

    switch = demo_config(tmp_path / "run", "model.family=switch")
    assert switch.train.criterion == "moe_label_smoothed_cross_entropy"
    assert dropped_aux_losses(switch) is None
    plain = demo_config(
        tmp_path / "run", "model.family=switch", "train.criterion=label_smoothed_cross_entropy"
    )
    line = dropped_aux_losses(plain)
    assert line == (
        "train.criterion=label_smoothed_cross_entropy drops the switch family's auxiliary "
        "losses (its criterion: moe_label_smoothed_cross_entropy); they are neither optimised "
        "nor logged"
    )
    assert dropped_aux_losses(demo_config(tmp_path / "run")) is None  # dense
