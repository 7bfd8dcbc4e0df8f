"""Switch Transformer and X-MoE: registration, layer placement, padding, capacity in train and
eval, equivalence with the dense baseline, training and reloading, expert usage."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

import moe_mt
from moe_mt.models import moe_layers
from moe_mt.models.moe_layers import MoEOptions
from moe_mt.models.switch import MODEL_NAME, SwitchTransformerModel
from moe_mt.moe import MoEOutput
from moe_mt.workflows.common.rundir import RunDir
from moe_mt.workflows.evaluate.expert_usage import track_expert_usage, write_expert_usage
from moe_mt.workflows.train.trainer import train
from tests.conftest import REPO, TINY_MODEL, demo_config

SIZES = ("tiny", "demo", "iwslt", "wmt", "wmt_big")
MOE_CRITERION = "train.criterion=moe_label_smoothed_cross_entropy"
#: One MoE layer per side in TINY_MODEL's 1+1 layers.
EVERY_LAYER = "model.moe.freq=1"


def moe_config(run_dir: Path, *overrides: str, arch: str = "switch_transformer_demo"):
    return demo_config(
        run_dir, "data.spm.vocab_size=2000", *TINY_MODEL, f"model.arch={arch}", MOE_CRITERION,
        *overrides,
    )  # fmt: skip


def build(run_dir: Path, *overrides: str, arch: str = "switch_transformer_demo", seed: int = 1):
    """(task, model, criterion) exactly as ``moemt train`` would build them for this config."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from moe_mt.workflows.train.fairseq_args import train_args

    moe_mt.register()
    cfg = moe_config(run_dir, *overrides, arch=arch)
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, train_args(cfg, RunDir(cfg.run_dir)))
    fairseq_cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(seed)
    task = tasks.setup_task(fairseq_cfg.task)
    return task, task.build_model(fairseq_cfg.model), task.build_criterion(fairseq_cfg.criterion)


def batch(task, n: int = 16, split: str = "valid"):
    """A padded batch of ``n`` sentences of ``split``."""
    task.load_dataset(split)
    dataset = task.dataset(split)
    return dataset.collater([dataset[i] for i in range(n)])


def test_registered_architectures_are_pinned():
    from fairseq.models import ARCH_MODEL_REGISTRY

    names = {a for a, m in ARCH_MODEL_REGISTRY.items() if m is SwitchTransformerModel}
    expected = {f"{family}_transformer_{s}" for family in ("switch", "xmoe") for s in SIZES}
    assert names == expected
    assert MODEL_NAME == "moemt_moe_transformer"


@pytest.mark.parametrize(
    "freq, offset, sides, encoder, decoder",
    [
        (2, 1, "both", [1, 3, 5], [1, 3, 5]),  # the default: every other layer, as Switch
        (2, 0, "both", [0, 2, 4], [0, 2, 4]),
        (1, 1, "both", [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]),
        (3, 2, "encoder", [2, 5], []),
        (2, 1, "decoder", [], [1, 3, 5]),
    ],
)
def test_moe_layer_placement(freq, offset, sides, encoder, decoder):
    options = MoEOptions(8, 1, freq, offset, sides, "topk", 16, 0.1, 0.0, 1.25, None, None)
    assert [i for i in range(6) if options.is_moe_layer("encoder", i)] == encoder
    assert [i for i in range(6) if options.is_moe_layer("decoder", i)] == decoder


def test_model_layers_and_routing_options(prepped_demo):
    _, model, _ = build(
        prepped_demo, "model.encoder_layers=3", "model.decoder_layers=2", "model.moe.top_k=2",
        "model.moe.num_experts=4", "model.moe.capacity_factor=2.0",
    )  # fmt: skip
    assert [name for name, _ in model.moe_layers()] == ["encoder.layers.1", "decoder.layers.1"]
    _, block = model.moe_layers()[0]
    assert block.num_experts == 4 and block.router.k == 2
    assert (block.capacity_factor, block.eval_capacity_factor) == (2.0, None)
    keys = model.state_dict().keys()
    assert "encoder.layers.1.moe.experts.w1" in keys and "encoder.layers.0.fc1.weight" in keys
    assert not any(k.startswith("encoder.layers.1.fc") for k in keys)

    _, xmoe, _ = build(prepped_demo, EVERY_LAYER, arch="xmoe_transformer_demo")
    assert type(xmoe.moe_layers()[0][1].router).__name__ == "CosineRouter"


def test_pads_take_no_capacity_and_nothing_stays_on_modules(prepped_demo):
    task, model, _ = build(prepped_demo, EVERY_LAYER)
    sample = batch(task)
    src, tgt = sample["net_input"]["src_tokens"], sample["net_input"]["prev_output_tokens"]
    pad = task.source_dictionary.pad()
    assert src.eq(pad).any() and tgt.eq(pad).any()  # the batch has pads on both sides
    model.eval()
    _, extra = model(**sample["net_input"])
    tokens = {o.name: o.output.stats.tokens_per_expert.sum() for o in extra["moe"]}
    assert tokens == {
        "encoder.layers.0": src.ne(pad).sum(),
        "decoder.layers.0": tgt.ne(pad).sum(),
    }
    assert moe_layers._OBSERVERS.get() == () and moe_layers._PADDING_MASK.get() is None
    held = [v for m in model.modules() for v in vars(m).values() if isinstance(v, MoEOutput)]
    assert held == []


def test_incremental_decoding_matches_the_full_forward(prepped_demo):
    """One step at a time (x and the padding mask one position long) = teacher forcing."""
    task, model, _ = build(prepped_demo, EVERY_LAYER, "model.moe.top_k=2")
    sample = batch(task, n=8)
    net_input = sample["net_input"]
    prev, pad = net_input["prev_output_tokens"], task.target_dictionary.pad()
    model.eval()
    with torch.no_grad():
        full, _ = model(**net_input)
        encoder_out = model.encoder(net_input["src_tokens"], net_input["src_lengths"])
        state: dict = {}
        steps = [
            model.decoder(prev[:, : t + 1], encoder_out, incremental_state=state)[0][:, -1]
            for t in range(prev.shape[1])
        ]
    real = prev.ne(pad)
    torch.testing.assert_close(torch.stack(steps, 1)[real], full[real], rtol=1e-4, atol=1e-4)


def test_capacity_drops_in_training_not_in_eval(prepped_demo):
    task, model, _ = build(prepped_demo, EVERY_LAYER, "model.moe.capacity_factor=0.5")
    sample = batch(task)

    def dropped(train_mode: bool) -> list[float]:
        model.train(train_mode)
        with torch.no_grad():
            _, extra = model(**sample["net_input"])
        return [float(o.output.stats.fraction_dropped) for o in extra["moe"]]

    assert all(d >= 0.5 for d in dropped(True))  # capacity 0.5 * T / E: at least half dropped
    assert dropped(False) == [0.0, 0.0]  # eval: no capacity unless configured

    task, model, _ = build(prepped_demo, EVERY_LAYER, "model.moe.eval_capacity_factor=0.5")
    assert all(d >= 0.5 for d in dropped(False))


def test_capacity_drops_are_not_the_ends_of_targets(prepped_demo):
    """Regression (X-MoE decoded over-long, looping outputs): in training, the tokens an
    overflowing expert drops sit anywhere in the targets, not at their ends. With time-major
    capacity priority they were the late positions of every target (EOS most), which the model
    learned to predict without the FFN that evaluation, keeping every token, gives them."""
    task, model, _ = build(
        prepped_demo, EVERY_LAYER, "model.moe.capacity_factor=0.5", arch="xmoe_transformer_demo"
    )
    sample = batch(task, n=32)
    target = sample["target"]
    real = target.ne(task.target_dictionary.pad())
    # Relative position of each target token in its sentence, 0 (first) to < 1 (EOS).
    relative = torch.arange(target.shape[1])[None] / real.sum(1, keepdim=True)
    model.train()
    with torch.no_grad():
        _, extra = model(**sample["net_input"])
    (decoder,) = [o.output for o in extra["moe"] if o.name.startswith("decoder.")]
    dropped = decoder.y.abs().sum(-1).eq(0).t() & real  # [b, n]: no FFN output, not a pad
    assert dropped.sum() >= 0.4 * real.sum()  # capacity 0.5 * T / E
    # Sentence-major priority: the dropped tokens sit where all tokens sit (mean relative
    # position 0.48 against 0.47 here) and first positions are dropped too (88% here); the
    # time-major priority dropped late ones (0.58) and never a first position.
    assert abs(relative[dropped].mean() - relative[real].mean()) < 0.05
    assert dropped[:, 0].float().mean() > 0.25


def _dense_weights_into_one_expert(dense, moe) -> None:
    """Copy every weight of ``dense`` into ``moe``: fc1/fc2 of each layer become expert 0."""
    state = {}
    for key, value in dense.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        layer, _, fc = prefix.rpartition(".")
        if fc in ("fc1", "fc2"):
            w, b = ("w1", "b1") if fc == "fc1" else ("w2", "b2")
            state[f"{layer}.moe.experts.{w if leaf == 'weight' else b}"] = (
                value.t()[None] if leaf == "weight" else value[None]
            )
        else:
            state[key] = value
    missing, unexpected = moe.load_state_dict(state, strict=False)
    assert unexpected == [] and all(k.endswith("moe.router.weight") for k in missing)


@pytest.mark.parametrize("train_mode", [False, True])
def test_one_expert_reproduces_the_dense_baseline(prepped_demo, train_mode):
    """A Switch model with 1 expert in every layer and no aux loss computes the dense loss."""
    task, dense, dense_criterion = build(
        prepped_demo, "model.dropout=0", "train.criterion=label_smoothed_cross_entropy",
        arch="moemt_transformer_demo",
    )  # fmt: skip
    _, moe, moe_criterion = build(
        prepped_demo, "model.dropout=0", EVERY_LAYER, "model.moe.num_experts=1",
        "model.moe.capacity_factor=1.0", "model.moe.balance_weight=0",
    )  # fmt: skip
    _dense_weights_into_one_expert(dense, moe)
    sample = batch(task)
    dense.train(train_mode)
    moe.train(train_mode)
    dense_loss, dense_size, _ = dense_criterion(dense, sample)
    moe_loss, moe_size, log = moe_criterion(moe, sample)
    assert moe_size == dense_size
    torch.testing.assert_close(moe_loss, dense_loss, rtol=1e-5, atol=1e-4)
    assert log["moe_dropped"] == 0.0


def test_train_log_shows_moe_metrics_and_eval_keeps_every_token(switch_run):
    log = (switch_run / "logs" / "train.log").read_text()
    train_lines = [line for line in log.splitlines() if "| train |" in line]
    record = json.loads(train_lines[-1].split("| train | ", 1)[1])
    for key in ("balance", "dropped", "active", "entropy", "load_max", "load_min"):
        assert f"train_moe_{key}" in record
    valid = json.loads((switch_run / "logs" / "train_summary.json").read_text())["last_valid"]
    assert float(valid["moe_dropped"]) == 0.0  # validation routes without capacity


def _load(checkpoint: Path):
    from fairseq import checkpoint_utils

    return checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])


def _translate(task, models, sample) -> list[str]:
    generator = task.build_generator(models, argparse.Namespace(beam=2, max_len_a=0, max_len_b=8))
    hypos = task.inference_step(generator, models, sample)
    return [task.target_dictionary.string(h[0]["tokens"], "sentencepiece") for h in hypos]


def test_checkpoint_alone_reloads_the_routing(switch_run):
    models, cfg, task = _load(switch_run / "checkpoints" / "checkpoint_last.pt")
    model = models[0]
    assert isinstance(model, SwitchTransformerModel)
    assert (cfg.model.moe_num_experts, cfg.model.moe_top_k) == (8, 1)
    assert cfg.model.moe_capacity_factor == 1.25 and cfg.model.moe_eval_capacity_factor is None
    assert [n for n, _ in model.moe_layers()] == ["encoder.layers.1", "decoder.layers.1"]
    model.eval()
    sample = batch(task, n=4, split="test")
    assert len(_translate(task, models, sample)) == 4


def test_expert_usage_over_a_decode(switch_run, tmp_path):
    models, _, task = _load(switch_run / "checkpoints" / "checkpoint_last.pt")
    models[0].eval()
    sample = batch(task, n=6, split="test")
    with track_expert_usage(models[0]) as usage:
        _translate(task, models, sample)
    report = write_expert_usage(usage, tmp_path / "eval" / "expert_usage.png")
    assert list(report["layers"]) == ["encoder.layers.1", "decoder.layers.1"]
    encoder = report["layers"]["encoder.layers.1"]
    pad = task.source_dictionary.pad()
    # Every real source token once (beam search encodes each sentence once), no pads, no drops.
    assert sum(encoder["tokens"]) == int(sample["net_input"]["src_tokens"].ne(pad).sum())
    assert encoder["dropped"] == 0 and len(encoder["share"]) == 8
    # One encoder pass: its activation rate is the share of experts that got a token.
    assert encoder["activation_rate"] == pytest.approx(encoder["active_experts"] / 8, abs=1e-4)
    decoder_rate = report["layers"]["decoder.layers.1"]["activation_rate"]
    assert 0 < decoder_rate <= 1
    assert report["activation_rate"] == pytest.approx(
        (encoder["activation_rate"] + decoder_rate) / 2, abs=1e-4
    )
    assert sum(report["layers"]["decoder.layers.1"]["tokens"]) > 0
    assert report["plot"] == "expert_usage.png"
    assert (tmp_path / "eval" / "expert_usage.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(report)
    assert moe_layers._OBSERVERS.get() == ()

    with track_expert_usage() as nothing:  # dense decode or no MoE layer ran: no plot
        pass
    assert write_expert_usage(nothing, tmp_path / "none.png") == {
        "layers": {},
        "activation_rate": None,
        "plot": None,
    }


@pytest.mark.parametrize(
    "arch, overrides",
    [
        ("switch_transformer_demo", ("model.moe.top_k=2", "model.moe.z_loss=true")),
        ("xmoe_transformer_demo", ()),
        (
            "switch_transformer_demo",
            (
                "model.moe.top_k=2",
                "model.moe.cmr=true",
                "model.moe.cmr_gate_dropout=0.2",
                "model.moe.eom=0.2",
                "model.moe.second_expert_policy=sampling",
                "model.moe.renormalize=after",
                "model.moe.balance_choices=first",
                "model.moe.capacity_formula=fairseq",
                "model.moe.eval_capacity_token_fraction=0.25",
            ),
        ),
    ],
    ids=["switch-top2", "xmoe", "switch-nllb-fairseq-conventions"],
)
def test_variants_train_reload_and_generate(prepped_demo, tmp_path, arch, overrides):
    run_dir = tmp_path / "run"
    shutil.copytree(prepped_demo, run_dir)
    cfg = moe_config(
        run_dir, EVERY_LAYER, "model.moe.num_experts=4", "train.max_update=3",
        "train.fairseq_args=[--disable-validation]", *overrides, arch=arch,
    )  # fmt: skip
    train(cfg)
    models, loaded_cfg, task = _load(run_dir / "checkpoints" / "checkpoint_last.pt")
    assert loaded_cfg.model.arch == arch and loaded_cfg.model.moe_num_experts == 4
    block = models[0].moe_layers()[0][1]
    if "model.moe.cmr=true" in overrides:  # the checkpoint alone rebuilds CMR and the options
        assert type(block).__name__ == "ConditionalMoE" and block.moe.eom == 0.2
        assert block.moe.conventions.capacity_formula == "fairseq"
        block = block.moe
    assert block.router.k == (2 if "model.moe.top_k=2" in overrides else 1)
    models[0].eval()
    assert len(_translate(task, models, batch(task, n=3, split="test"))) == 3


@pytest.fixture(scope="module")
def switch_run(prepped_demo, tmp_path_factory) -> Path:
    """Switch top-1 (8 experts, every other layer of 2+2) trained 6 updates, validated once."""
    run_dir = tmp_path_factory.mktemp("switch") / "run"
    shutil.copytree(prepped_demo, run_dir)
    cfg = moe_config(
        run_dir, "model.encoder_layers=2", "model.decoder_layers=2", "train.max_update=6",
    )  # fmt: skip
    train(cfg)
    return run_dir


def test_export_refuses_a_routed_model_with_the_way_out(switch_run, tmp_path):
    from typer.testing import CliRunner

    from moe_mt.cli.main import app

    out = tmp_path / "ct2"
    result = CliRunner().invoke(app, ["export", str(switch_run), "--out", str(out)])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "switch_transformer" in line
    assert "routes each token to experts" in line and "moemt distill" in line
    assert not out.exists()


def test_recipes_load_and_the_architecture_fills_the_family_defaults(tmp_path):
    from fairseq import options

    from moe_mt.config import load_config
    from moe_mt.workflows.train.fairseq_args import model_args, train_args

    moe_mt.register()
    dense = load_config(REPO / "recipes" / "demo.yaml", [f"run_dir={tmp_path}"])
    # the dense family's one option, its FFN's activation
    assert [a for a in model_args(dense.model) if a.startswith("--moe")] == [
        "--moe-expert-activation"
    ]
    for recipe, arch, router in (
        ("demo_switch", "switch", "topk"),
        ("demo_xmoe", "xmoe", "cosine"),
    ):
        cfg = load_config(REPO / "recipes" / f"{recipe}.yaml", [f"run_dir={tmp_path}"])
        assert model_args(cfg.model)[:2] == ["--arch", f"{arch}_transformer_demo"]
        assert cfg.train.criterion == "moe_label_smoothed_cross_entropy"  # the family's
        argv = train_args(cfg, RunDir(cfg.run_dir))
        parsed = options.parse_args_and_arch(options.get_training_parser(), argv)
        assert (parsed.moe_num_experts, parsed.moe_top_k, parsed.moe_router) == (8, 1, router)
        assert parsed.moe_balance_weight == 0.01


def test_live_view_shows_the_moe_column():
    from moe_mt.workflows.train.view import TrainMonitor

    monitor = TrainMonitor()
    monitor.train = {"num_updates": "5", "moe_balance": "1.1", "moe_dropped": "0.05"}
    columns = {c.header: list(c.cells) for c in monitor.render().columns}
    assert columns["MoE balance / dropped"] == ["1.1 / 0.05"]
    monitor.train = {"num_updates": "5"}  # a dense model: no MoE column
    assert "MoE balance / dropped" not in [c.header for c in monitor.render().columns]
