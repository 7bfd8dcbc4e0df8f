"""Routed MoE models made dense for serving (``eval.merge_experts``): the merge rules by hand, a
merged model equal to its routed one where the routing is constant, the CLI's export.json and
its warning, and the refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from moe_mt.cli.main import app
from moe_mt.errors import MoeMtError
from moe_mt.moe import ExpertBank, MoEFeedForward, SharedExpertMoE, TopKRouter
from moe_mt.workflows.export.dense_model import dense_model
from moe_mt.workflows.export.merge import (
    LayerUsage,
    calibration_sha256,
    merge_refusal,
    merged_bank_tensors,
)
from tests.test_switch import batch, build, switch_run  # noqa: F401  (a fixture)


def _bank() -> MoEFeedForward:
    torch.manual_seed(0)
    return MoEFeedForward(TopKRouter(4, 3, 1), ExpertBank(3, 4, 6).double())


def test_most_used_keeps_the_busiest_expert_and_folds_its_mean_gate():
    block = _bank()
    usage = LayerUsage(
        torch.tensor([1.0, 5.0, 2.0], dtype=torch.float64),
        torch.tensor([0.5, 4.0, 1.0], dtype=torch.float64), tokens=8,
    )  # fmt: skip
    merged = merged_bank_tensors(block, usage, "most_used")
    bank = block.experts
    torch.testing.assert_close(merged["w1"], bank.w1[1:2].detach())
    torch.testing.assert_close(merged["b1"], bank.b1[1:2].detach())
    torch.testing.assert_close(merged["w2"], 0.8 * bank.w2[1:2].detach())  # A / n = 4 / 5
    torch.testing.assert_close(merged["b2"], 0.8 * bank.b2[1:2].detach())


def test_usage_average_weights_every_expert_by_its_gate_mass():
    block = _bank()
    mass = torch.tensor([0.5, 4.0, 1.0], dtype=torch.float64)
    usage = LayerUsage(torch.tensor([1.0, 5.0, 2.0], dtype=torch.float64), mass, tokens=8)
    merged = merged_bank_tensors(block, usage, "usage_average")
    u = (mass / mass.sum()).view(3, 1, 1)
    bank = block.experts
    torch.testing.assert_close(merged["w1"], (u * bank.w1.detach()).sum(0, keepdim=True))
    gate = 5.5 / 8  # the mean gate mass per token
    want = gate * (u * bank.w2.detach()).sum(0, keepdim=True)
    torch.testing.assert_close(merged["w2"], want)


def test_blocks_without_a_per_token_ffn_are_refused_with_the_reason():
    shared = SharedExpertMoE(_bank(), ExpertBank(1, 4, 6))
    assert "shared experts" in merge_refusal(shared)
    assert merge_refusal(_bank()) is None


@pytest.mark.parametrize(
    "method",  # a calibration pass over the valid split each, about 5 s
    ["most_used", pytest.param("usage_average", marks=pytest.mark.slow)],
)
def test_a_constant_routing_merges_into_the_same_network(prepped_demo, method):
    """Identical experts and a zero gate: every token goes to one expert (a tie, broken alike
    for all) with weight 1/E, so the merged dense model (the expert, its output scaled by the
    mean gate 1/E) is the routed one."""
    task, model, _ = build(prepped_demo, "model.encoder_layers=2", "model.decoder_layers=2")
    with torch.no_grad():
        for _, block in model.moe_layers():
            block.router.weight.zero_()
            for name in ("w1", "b1", "w2", "b2"):
                tensor = getattr(block.experts, name)
                tensor.copy_(tensor[:1].expand_as(tensor))
    model.eval()
    dense = dense_model(
        model, "switch_transformer_demo", task, "ckpt", method, prepped_demo / "data" / "bin"
    )
    assert dense.merge["method"] == method
    assert sorted(dense.merge["layers"]) == ["decoder.layers.1", "encoder.layers.1"]
    layer = dense.merge["layers"]["encoder.layers.1"]
    assert max(layer["assignments"]) == layer["tokens"] > 0
    sample = batch(task, n=6)
    with torch.no_grad():
        routed, _ = model(**sample["net_input"])
        merged, _ = dense.model(**sample["net_input"])
    # a routed layer gives pads zero output, the dense FFN computes them: compare real targets
    real = sample["target"].ne(task.target_dictionary.pad())
    torch.testing.assert_close(merged[real], routed[real], atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # seconds; the default run stays near 6 min (-m slow runs it)
def test_export_of_a_merged_switch_model_records_how_and_warns(switch_run, tmp_path):  # noqa: F811
    out = tmp_path / "ct2"
    result = CliRunner().invoke(
        app, ["export", str(switch_run), "eval.merge_experts=usage_average", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "not the routed one: score it with moemt eval" in result.stdout
    info = json.loads((out / "export.json").read_text())
    merge = info["merge"]
    assert merge["method"] == "usage_average"
    sha = calibration_sha256(switch_run / "data" / "bin")
    assert merge["calibration"]["sha256"] == sha and merge["calibration"]["split"] == "valid"
    assert merge["calibration"]["sentences"] > 0
    assert sorted(merge["layers"]) == ["decoder.layers.1", "encoder.layers.1"]
    assert info["inputs"]["merge_experts"] == "usage_average"
    assert info["inputs"]["calibration_sha256"] == sha
    assert info["architecture"]["arch"] == "switch_transformer_demo"
    # scored as eval.engine=ctranslate2 decodes it: the report names the merge
    run = tmp_path / "run"
    shutil.copytree(switch_run, run)
    scored = CliRunner().invoke(
        app, ["eval", str(run), "eval.engine=ctranslate2", "eval.merge_experts=usage_average",
              "eval.name=merged", "eval.beam=1"],
    )  # fmt: skip
    assert scored.exit_code == 0, scored.output
    report = json.loads((run / "eval" / "merged" / "report.json").read_text())
    assert report["engine"]["merge_experts"] == "usage_average"
    assert (run / "export" / "ct2-float32-usage_average" / "export.json").is_file()


def test_merging_a_dense_model_or_an_unknown_method_is_refused(switch_run, tmp_path):  # noqa: F811
    result = CliRunner().invoke(
        app, ["export", str(switch_run), "eval.merge_experts=nope", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "eval.merge_experts=nope: expected one of most_used, usage_average" in line
    with pytest.raises(MoeMtError, match="is dense, it has no experts"):
        dense_model(torch.nn.Linear(1, 1), "moemt_transformer_demo", None, "c", "most_used")
