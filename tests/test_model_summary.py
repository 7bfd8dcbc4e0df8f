"""Parameter and FLOP summary: counts against hand-computed sizes for each family (through the
counters the families register), MH-MoE's 2 d^2 projections, the Soft MoE decoder refusal, and
``moemt train --dry-run``. A block no family counts: tests/test_family_registry.py."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from moe_mt.errors import MoeMtError
from moe_mt.workflows.train.model_summary import build_model, model_summary
from tests.conftest import REPO, TINY_MODEL, demo_config

# TINY_MODEL: 1+1 layers, d=64, FFN 128, 2 heads; the run's dictionary (2,008 symbols).
D, F = 64, 128
EVERY_LAYER = "model.moe.freq=1"


def summary(run_dir, *overrides, arch="moemt_transformer_demo"):
    cfg = demo_config(
        run_dir, "data.spm.vocab_size=2000", *TINY_MODEL, f"model.arch={arch}", *overrides
    )
    return cfg, model_summary(cfg)


def _real_parameters(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_dense_counts_every_weight_matrix_once(prepped_demo):
    cfg, s = summary(prepped_demo)
    model = build_model(cfg)
    assert s["parameters"] == s["active_parameters"] == _real_parameters(model)
    assert s["moe_layers"] == s["expert_parameters"] == s["projection_parameters"] == 0
    vocab = len(model.decoder.dictionary)
    attention = 4 * D * D
    ffn = 2 * D * F
    assert s["encoder_flops"] == 2 * (attention + ffn)
    assert s["decoder_flops"] == 2 * (2 * attention + ffn + D * vocab)  # self, cross, output
    assert s["flops_per_token"] == s["encoder_flops"] + s["decoder_flops"]


def test_switch_top_k_counts_k_experts_as_active(prepped_demo):
    _, dense = summary(prepped_demo)
    overrides = (EVERY_LAYER, "model.moe.num_experts=4", "model.moe.top_k=2")
    _, s = summary(prepped_demo, *overrides, arch="switch_transformer_demo")
    per_expert = 2 * D * F + F + D
    assert s["moe_layers"] == 2 and s["expert_parameters"] == 2 * 4 * per_expert
    assert s["parameters"] - s["active_parameters"] == 2 * 2 * per_expert  # 2 of 4 idle
    router = 4 * D
    assert s["encoder_flops"] == dense["encoder_flops"] + 2 * (router + 2 * D * F)


def test_fine_grained_experts_cost_the_flops_of_their_width(prepped_demo):
    """DeepSeekMoE's segmentation: 4 experts split in 2 are 8 of width F / 2, top 2 x 1."""
    _, dense = summary(prepped_demo)
    overrides = (EVERY_LAYER, "model.moe.num_experts=4", "model.moe.expert_segments=2")
    _, s = summary(prepped_demo, *overrides, arch="switch_transformer_demo")
    per_expert = 2 * D * (F // 2) + F // 2 + D
    assert s["expert_parameters"] == 2 * 8 * per_expert
    assert s["parameters"] - s["active_parameters"] == 2 * 6 * per_expert  # 6 of 8 idle
    # FLOPs are 2 MACs; 2 experts of width F / 2 cost the dense FFN, so only the router adds
    assert s["encoder_flops"] == dense["encoder_flops"] + 2 * 8 * D
    _, switch = summary(prepped_demo, EVERY_LAYER, "model.moe.num_experts=4",
                        arch="switch_transformer_demo")  # fmt: skip
    assert s["encoder_flops"] - switch["encoder_flops"] == 2 * (8 - 4) * D


def test_shared_experts_are_always_active_dense_weights(prepped_demo):
    _, dense = summary(prepped_demo)
    overrides = (
        EVERY_LAYER, "model.moe.num_experts=4", "model.moe.num_shared_experts=2",
        "model.moe.expert_ffn_dim=32", "model.moe.shared_expert_gate=true",
    )  # fmt: skip
    _, s = summary(prepped_demo, *overrides, arch="switch_transformer_demo")
    per_expert = 2 * D * 32 + 32 + D
    assert s["expert_parameters"] == 2 * 4 * per_expert  # the shared FFN is no expert weight
    assert s["parameters"] - s["active_parameters"] == 2 * 3 * per_expert
    routed, shared, gate = 4 * D + 2 * D * 32, 2 * D * 64, D
    assert s["encoder_flops"] == dense["encoder_flops"] - 2 * 2 * D * F + 2 * (
        routed + shared + gate
    )


def test_expert_choice_counts_c_experts_per_token_in_the_encoder(prepped_demo):
    _, dense = summary(prepped_demo)
    overrides = (
        EVERY_LAYER, "model.moe.num_experts=4", "model.moe.router=expert_choice",
        "model.moe.sides=encoder", "model.moe.ec_capacity_factor=2.0",
    )  # fmt: skip
    _, s = summary(prepped_demo, *overrides, arch="switch_transformer_demo")
    assert s["moe_layers"] == 1 and s["decoder_flops"] == dense["decoder_flops"]
    assert s["encoder_flops"] == dense["encoder_flops"] + 2 * (4 * D + 2 * D * F)  # c = 2


def test_thor_has_no_router_and_one_active_expert(prepped_demo):
    _, dense = summary(prepped_demo)
    _, s = summary(prepped_demo, EVERY_LAYER, arch="thor_transformer_demo")
    per_expert = 2 * D * F + F + D
    assert s["moe_layers"] == 2 and s["expert_parameters"] == 2 * 2 * per_expert
    assert s["parameters"] - s["active_parameters"] == 2 * per_expert  # 1 of 2 idle per layer
    assert s["encoder_flops"] == dense["encoder_flops"]  # one expert, no gate: dense cost
    assert s["decoder_flops"] == dense["decoder_flops"]


def test_mhmoe_adds_the_two_projections(prepped_demo):
    _, dense = summary(prepped_demo)
    _, s = summary(
        prepped_demo, EVERY_LAYER, "model.moe.num_experts=8", arch="mhmoe_transformer_demo"
    )
    # 4 heads, top-2: sub-experts 16 -> 64 -> 16; a token reaches min(8, 4 * 2) = 8 experts.
    assert s["projection_parameters"] == 2 * 2 * (D * D + D)
    assert s["parameters"] == s["active_parameters"]
    per_expert = 2 * 16 * 64 + 64 + 16
    assert s["expert_parameters"] == 2 * 8 * per_expert
    # 2 d^2 projections + 4 sub-tokens x (router 16 x 8 + 2 experts x 2 x 16 x 64) = dense FFN.
    extra = 2 * D * D + 4 * 16 * 8
    assert s["encoder_flops"] == dense["encoder_flops"] + 2 * extra
    _, few = summary(
        prepped_demo, EVERY_LAYER, "model.moe.num_experts=16", arch="mhmoe_transformer_demo"
    )
    assert few["parameters"] - few["active_parameters"] == 2 * 8 * per_expert  # 8 of 16 idle


def test_soft_moe_counts_slots_per_sentence(prepped_demo):
    _, dense = summary(prepped_demo)
    _, s = summary(
        prepped_demo, EVERY_LAYER, "model.moe.num_experts=4", arch="soft_moe_transformer_demo"
    )
    assert s["moe_layers"] == 1 and s["parameters"] == s["active_parameters"]
    slots, n = 4, s["sentence_tokens"]
    expert = 2 * D * F
    soft = 3 * slots * D + round(slots * expert / n)
    assert s["encoder_flops"] == dense["encoder_flops"] + 2 * (soft - expert)
    assert s["decoder_flops"] == dense["decoder_flops"]


def test_soft_moe_in_the_decoder_is_refused(prepped_demo):
    with pytest.raises(MoeMtError, match="Soft MoE cannot sit in the decoder"):
        summary(prepped_demo, "model.moe.sides=both", arch="soft_moe_transformer_demo")


def test_a_vocabulary_of_the_configured_size_without_prepared_data(tmp_path):
    cfg = demo_config(tmp_path / "fresh", "data.spm.vocab_size=1000", *TINY_MODEL)
    model = build_model(cfg)
    assert len(model.encoder.dictionary) == 1000 + 4  # plus fairseq's specials


@pytest.mark.parametrize(
    "arch", ["moemt_transformer_demo", "switch_transformer_demo", "mhmoe_transformer_demo",
             "soft_moe_transformer_demo"],
)  # fmt: skip
def test_dry_run_prints_the_summary(prepped_demo, arch):
    from moe_mt.cli.main import app

    result = CliRunner().invoke(
        app, ["train", str(REPO / "recipes" / "demo.yaml"), f"run_dir={prepped_demo}",
              "data.spm.vocab_size=2000", f"model.arch={arch}", "--dry-run"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert arch in result.output and "MFLOPs per token pair (2 x MACs)" in result.output
    assert "active parameters per token" in result.output


def test_dry_run_refuses_soft_moe_in_the_decoder(prepped_demo):
    from moe_mt.cli.main import app

    result = CliRunner().invoke(
        app, ["train", str(REPO / "recipes" / "demo_soft_moe.yaml"), f"run_dir={prepped_demo}",
              "model.moe.sides=decoder", "--dry-run"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "Soft MoE cannot sit in the decoder" in result.output
