"""THOR (stochastic experts): registration, the consistency loss, the two passes' independent
draws, inference modes (fixed = a dense model, mean, keyed random across beams and batches),
training, reloading and the eval consistency report."""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import moe_mt
from moe_mt.criterions.thor_criterion import CRITERION_NAME, symmetric_kl
from moe_mt.models import thor
from moe_mt.models.moe_layers import observe_moe
from moe_mt.models.thor import MODEL_NAME, ThorRouter, ThorTransformerModel
from moe_mt.workflows.train.trainer import train
from tests.conftest import REPO
from tests.test_moe_reference import dense_expert_mean
from tests.test_switch import batch, build, moe_config

moe_mt.register()

SIZES = ("tiny", "demo", "iwslt", "wmt", "wmt_big")
ARCH = "thor_transformer_demo"
THOR_CRITERION = f"train.criterion={CRITERION_NAME}"
EVERY_LAYER = "model.moe.freq=1"  # one expert layer per side in TINY_MODEL's 1+1 layers


def build_thor(run_dir: Path, *overrides: str, seed: int = 1):
    return build(run_dir, THOR_CRITERION, *overrides, arch=ARCH, seed=seed)


def test_registered_names_are_pinned():
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.models import ARCH_MODEL_REGISTRY

    names = {a for a, m in ARCH_MODEL_REGISTRY.items() if m is ThorTransformerModel}
    assert names == {f"thor_transformer_{s}" for s in SIZES}
    assert MODEL_NAME == "moemt_thor_transformer"
    assert CRITERION_NAME == "thor_label_smoothed_cross_entropy" in CRITERION_REGISTRY


# -- the consistency term ---------------------------------------------------------------------


def test_symmetric_kl_against_a_hand_computed_value():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    q = torch.tensor([[0.5, 0.25, 0.25], [0.9, 0.05, 0.05]])
    # Row 0 by hand: 0.5 * [0.2 ln(7/5) + (-0.05) ln(4/5) + (-0.15) ln(2/5)]; row 1 is a pad.
    expected = 0.5 * (0.2 * math.log(1.4) - 0.05 * math.log(0.8) - 0.15 * math.log(0.4))
    value = symmetric_kl(p.log(), q.log(), pad_mask=torch.tensor([False, True]))
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.1079475, rel=1e-5)


def test_symmetric_kl_is_symmetric_and_half_the_two_kls():
    torch.manual_seed(0)
    lp, lq = torch.randn(2, 7, 50).log_softmax(-1)
    forward_kl = F.kl_div(lq, lp, log_target=True, reduction="sum")  # KL(p || q)
    backward_kl = F.kl_div(lp, lq, log_target=True, reduction="sum")
    torch.testing.assert_close(symmetric_kl(lp, lq), symmetric_kl(lq, lp))
    torch.testing.assert_close(symmetric_kl(lp, lq), 0.5 * (forward_kl + backward_kl))
    assert symmetric_kl(lp, lp).item() == 0.0


def test_symmetric_kl_has_no_log_of_an_underflowed_probability():
    lp = torch.tensor([[0.0, -1e4, -2e4]])  # exp() underflows to exactly 0
    lq = torch.tensor([[-1e4, 0.0, -2e4]]).log_softmax(-1)
    value = symmetric_kl(lp, lq)
    assert torch.isfinite(value) and value.item() == pytest.approx(1e4, rel=1e-4)


def test_gradients_flow_to_both_passes():
    lp = torch.randn(5, 11).log_softmax(-1).requires_grad_()
    lq = torch.randn(5, 11).log_softmax(-1).requires_grad_()
    symmetric_kl(lp, lq).backward()
    assert lp.grad.abs().sum() > 0 and lq.grad.abs().sum() > 0


def _passes(criterion, model, sample):
    """(loss, log, [[experts of each layer] per pass]) of one training criterion call."""
    calls = []
    with observe_moe(lambda name, out: calls.append((name, out.routing.expert_index[:, 0]))):
        loss, size, log = criterion(model, sample)
    layers = len(model.moe_layers())
    assert len(calls) == 2 * layers  # two passes, every expert layer once each
    return loss, log, [calls[:layers], calls[layers:]]


def test_two_passes_loss_is_ce_plus_ce_plus_alpha_consistency(prepped_demo):
    task, model, criterion = build_thor(
        prepped_demo, EVERY_LAYER, "model.moe.num_experts=4", "model.moe.consistency_alpha=5.0"
    )
    assert criterion.alpha == 5.0
    sample = batch(task)
    model.train()
    loss, log, passes = _passes(criterion, model, sample)
    total = log["ce_pass1"] + log["ce_pass2"] + 5.0 * log["consistency"]
    torch.testing.assert_close(loss.detach(), total)
    torch.testing.assert_close(log["loss"], (log["ce_pass1"] + log["ce_pass2"]) / 2)
    assert log["consistency"] > 0  # different dropout masks and (likely) experts
    # Batch granularity: one expert for all tokens of a layer in a pass.
    assert all(experts.unique().numel() == 1 for _, experts in passes[0] + passes[1])

    model.eval()  # validation: one pass, the dense criterion's loss
    with torch.no_grad():
        _, _, valid_log = criterion(model, sample)
    assert "consistency" not in valid_log and "ce_pass1" not in valid_log


def test_consistency_is_zero_when_both_passes_agree(prepped_demo):
    """One expert and no dropout: both passes compute the same distribution."""
    task, model, criterion = build_thor(
        prepped_demo, EVERY_LAYER, "model.moe.num_experts=1", "model.dropout=0"
    )
    model.train()
    _, log, _ = _passes(criterion, model, batch(task))
    assert log["consistency"].item() == pytest.approx(0.0, abs=1e-4)
    torch.testing.assert_close(log["ce_pass1"], log["ce_pass2"])


def test_both_passes_train_their_own_expert(prepped_demo):
    task, model, criterion = build_thor(prepped_demo, EVERY_LAYER, "model.moe.num_experts=2")
    sample = batch(task, n=4)
    model.train()
    for seed in range(50):  # find an update whose passes draw different encoder experts
        torch.manual_seed(seed)
        model.zero_grad()
        loss, _, passes = _passes(criterion, model, sample)
        if int(passes[0][0][1][0]) != int(passes[1][0][1][0]):
            break
    else:
        pytest.fail("50 updates without two different draws")
    loss.backward()
    bank = model.moe_layers()[0][1].experts
    assert bank.w1.grad[0].abs().sum() > 0 and bank.w1.grad[1].abs().sum() > 0


def test_the_passes_draw_independently_and_uniformly(prepped_demo):
    e, updates = 4, 120
    task, model, criterion = build_thor(prepped_demo, EVERY_LAYER, f"model.moe.num_experts={e}")
    sample = batch(task, n=2)
    model.train()
    same, usage = 0, torch.zeros(e)
    with torch.no_grad():
        for _ in range(updates):
            _, _, passes = _passes(criterion, model, sample)
            for (_, first), (_, second) in zip(*passes, strict=True):
                same += int(first[0] == second[0])
                usage += torch.bincount(torch.stack([first[0], second[0]]), minlength=e)
    decisions = 2 * updates  # two layers per pass
    # Independent uniform draws agree with probability 1/E (0.25): 60 of 240, sd 6.7.
    assert abs(same - decisions / e) < 4 * math.sqrt(decisions * (1 / e) * (1 - 1 / e))
    share = usage / usage.sum()  # each expert 1/E of 480 draws, sd 0.02
    assert (share - 1 / e).abs().max() < 0.08


@pytest.mark.parametrize("granularity", ["batch", "sentence"])
def test_router_training_draws_are_uniform_and_independent(granularity):
    e, draws = 3, 3000
    router = ThorRouter(e, granularity=granularity).train()
    torch.manual_seed(0)
    x, sentence_index = torch.zeros(4, 8), torch.tensor([0, 0, 1, 1])
    picks = torch.stack(
        [router(x, sentence_index=sentence_index).expert_index[:, 0] for _ in range(draws)]
    )
    if granularity == "batch":
        assert (picks == picks[:, :1]).all()
    else:
        assert (picks[:, 0] == picks[:, 1]).all() and (picks[:, 2] != picks[:, 0]).any()
    pairs = torch.bincount(picks[:-1, 0] * e + picks[1:, 0], minlength=e * e).float()
    expected = (draws - 1) / e**2  # consecutive draws: uniform over the E x E pairs
    chi2 = ((pairs - expected) ** 2 / expected).sum()
    assert chi2 < 26.1  # chi-square, 8 degrees of freedom, p = 0.001


# -- inference modes --------------------------------------------------------------------------


def _copy_expert_into_dense(model, dense, expert: int) -> None:
    state = {}
    for key, value in model.state_dict().items():
        layer, sep, leaf = key.partition(".moe.experts.")
        if not sep:
            state[key] = value
            continue
        fc, kind = {"w1": ("fc1", "weight"), "b1": ("fc1", "bias"), "w2": ("fc2", "weight"),
                    "b2": ("fc2", "bias")}[leaf]  # fmt: skip
        state[f"{layer}.{fc}.{kind}"] = value[expert].t() if kind == "weight" else value[expert]
    dense.load_state_dict(state)


def test_fixed_expert_is_the_dense_model_with_that_experts_weights(prepped_demo):
    task, model, _ = build_thor(prepped_demo, EVERY_LAYER, "model.moe.num_experts=3")
    _, dense, _ = build(
        prepped_demo, "train.criterion=label_smoothed_cross_entropy", arch="moemt_transformer_demo"
    )
    sample = batch(task)
    model.eval()
    dense.eval()
    model.set_inference("fixed", expert=2)
    _copy_expert_into_dense(model, dense, 2)
    with torch.no_grad():
        first, _ = model(**sample["net_input"])
        again, _ = model(**sample["net_input"])
        reference, _ = dense(**sample["net_input"])
    assert torch.equal(first, again)
    real = sample["target"].ne(task.target_dictionary.pad())  # pads: zero FFN output in MoE
    torch.testing.assert_close(first[real], reference[real], rtol=1e-5, atol=1e-5)
    generator = task.build_generator([model], argparse.Namespace(beam=3, max_len_a=0, max_len_b=8))
    hypos = [task.inference_step(generator, [model], sample) for _ in range(2)]
    assert [h[0]["tokens"].tolist() for h in hypos[0]] == [
        h[0]["tokens"].tolist() for h in hypos[1]
    ]


def test_mean_mode_averages_all_experts():
    router = ThorRouter(3, inference="mean")
    from moe_mt.moe import ExpertBank, MoEFeedForward

    block = MoEFeedForward(router, ExpertBank(3, 8, 16), None, None).eval()
    x = torch.randn(10, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x).y, dense_expert_mean(block.experts, x))


def test_source_keys_ignore_padding_and_batch():
    tokens = torch.tensor([[1, 1, 7, 8, 9, 2], [1, 5, 6, 4, 8, 2]])  # pad = 1, left-padded
    alone = torch.tensor([[7, 8, 9, 2]])
    right_padded = torch.tensor([[7, 8, 9, 2, 1, 1]])
    keys = thor.source_keys(tokens, pad=1)
    assert keys[0] == thor.source_keys(alone, pad=1)[0] == thor.source_keys(right_padded, 1)[0]
    assert keys[0] != keys[1]


def test_keyed_experts_are_uniform_and_independent_across_layers():
    e = 4
    keys = thor.source_keys(torch.arange(1, 4001).reshape(2000, 2), pad=0)
    a = thor.keyed_experts(keys, thor.layer_salt(1, "encoder.layers.0"), e)
    b = thor.keyed_experts(keys, thor.layer_salt(1, "decoder.layers.0"), e)
    c = thor.keyed_experts(keys, thor.layer_salt(2, "encoder.layers.0"), e)
    for draws in (a, b, c):
        assert (torch.bincount(draws, minlength=e) / 2000 - 1 / e).abs().max() < 0.04
    for other in (b, c):  # another layer or another seed: independent of a
        pairs = torch.bincount(a * e + other, minlength=e * e).float()
        chi2 = ((pairs - 2000 / e**2) ** 2 / (2000 / e**2)).sum()
        assert chi2 < 37.7  # 15 degrees of freedom, p = 0.001


def _decode_experts(task, model, sample, beam: int = 3):
    """Hypotheses and {(layer, sentence key): experts seen} over a beam search."""
    seen: dict[tuple[str, int], set[int]] = {}

    def record(name, out):
        keys = thor._SENTENCE_KEYS.get()
        # Flat tokens sentence by sentence (flatten_tbd): [columns, n].
        experts = out.routing.expert_index[:, 0].view(keys.numel(), -1)
        for column, key in enumerate(keys.tolist()):
            seen.setdefault((name, key), set()).update(experts[column].tolist())

    generator = task.build_generator(
        [model], argparse.Namespace(beam=beam, max_len_a=0, max_len_b=10)
    )
    with observe_moe(record):
        hypos = task.inference_step(generator, [model], sample)
    return [h[0]["tokens"].tolist() for h in hypos], seen


def test_random_inference_is_keyed_per_sentence(prepped_demo):
    task, model, _ = build_thor(prepped_demo, EVERY_LAYER, "model.moe.num_experts=4")
    model.eval()
    model.set_inference("random", seed=7)
    sample = batch(task, n=6, split="test")
    hyps, seen = _decode_experts(task, model, sample)
    # One expert per (layer, sentence) over every beam step and hypothesis.
    assert all(len(experts) == 1 for experts in seen.values())
    assert {name for name, _ in seen} == {"encoder.layers.0", "decoder.layers.0"}
    assert len({e for experts in seen.values() for e in experts}) > 1  # sentences differ

    again, seen_again = _decode_experts(task, model, sample)
    assert (again, seen_again) == (hyps, seen)  # same seed: same experts, same output

    dataset = task.dataset("test")  # a sentence alone gets the experts it had in the batch
    _, alone = _decode_experts(task, model, dataset.collater([dataset[3]]))
    assert alone and all(seen[key] == experts for key, experts in alone.items())

    model.set_inference("random", seed=8)
    _, other_seed = _decode_experts(task, model, sample)
    assert other_seed.keys() == seen.keys() and other_seed != seen


def test_set_inference_checks_its_arguments(prepped_demo):
    _, model, _ = build_thor(prepped_demo)
    with pytest.raises(ValueError, match="expected one of"):
        model.set_inference("sample")
    with pytest.raises(ValueError, match="not in"):
        model.set_inference("fixed", expert=2)  # 2 experts by default


# -- training, reloading, eval ----------------------------------------------------------------


@pytest.fixture(scope="module")
def thor_run(prepped_demo, tmp_path_factory) -> Path:
    """THOR, 2 experts in layer 0 of 2+2 (every other from the first), sentence-level draws,
    trained 4 updates."""
    run_dir = tmp_path_factory.mktemp("thor") / "run"
    shutil.copytree(prepped_demo, run_dir)
    cfg = moe_config(
        run_dir, THOR_CRITERION, "model.encoder_layers=2", "model.decoder_layers=2",
        "train.max_update=4", "train.log_interval=1", "model.moe.granularity=sentence",
        "train.fairseq_args=[--disable-validation]", arch=ARCH,
    )  # fmt: skip
    train(cfg)
    return run_dir


def test_train_logs_both_passes_and_the_consistency(thor_run):
    import json

    log = (thor_run / "logs" / "train.log").read_text()
    record = json.loads(
        [x for x in log.splitlines() if "| train |" in x][-1].split("| train | ")[1]
    )
    for key in ("loss", "ce_pass1", "ce_pass2", "consistency", "objective", "thor_same_expert"):
        assert f"train_{key}" in record
    total = float(record["train_ce_pass1"]) + float(record["train_ce_pass2"])
    assert float(record["train_objective"]) == pytest.approx(
        total + float(record["train_consistency"]), abs=0.01
    )


def test_checkpoint_reloads_with_the_eval_inference_mode(thor_run):
    from moe_mt.config import load_config
    from moe_mt.models.families import eval_overrides
    from moe_mt.workflows.translate.translator import DecodeOptions, Translator

    cfg = load_config(thor_run, ["eval.thor_inference=fixed", "eval.thor_expert=1"])
    options = DecodeOptions.from_config(cfg.eval)
    translator = Translator.load(
        thor_run, thor_run / "checkpoints" / "checkpoint_last.pt", options,
        model_overrides=eval_overrides(cfg.eval),
    )  # fmt: skip
    model = translator.models[0]
    assert isinstance(model, ThorTransformerModel) and translator.arch == ARCH
    assert [n for n, _ in model.moe_layers()] == ["encoder.layers.0", "decoder.layers.0"]
    assert {(r.inference, r.fixed_expert, r.granularity) for r in model.routers()} == {
        ("fixed", 1, "sentence")
    }
    assert len(translator.translate(["Hello.", "", "How are you?"]).hypotheses) == 3


@pytest.mark.slow  # seconds; the default run stays near 6 min (-m slow runs it)
def test_fixed_expert_exports_as_the_dense_model_fairseq_runs(thor_run, tmp_path):
    """THOR with eval.thor_inference=fixed exported to CTranslate2: each expert's export scores
    and translates as fairseq's THOR with that fixed expert; random and mean are refused."""
    from moe_mt.config import load_config
    from moe_mt.errors import MoeMtError
    from moe_mt.models.families import eval_overrides
    from moe_mt.workflows.export.ct2_translator import Ct2Translator
    from moe_mt.workflows.export.exporter import export
    from moe_mt.workflows.translate.translator import DecodeOptions, Translator
    from tests.test_export import assert_same_scores, token_log_probs

    sources = ["Hello.", "I like tea.", "Where is the station?", "Tom is here today."]
    checkpoint = thor_run / "checkpoints" / "checkpoint_last.pt"
    first_token = {}
    for expert in (0, 1):
        cfg = load_config(thor_run, ["eval.thor_inference=fixed", f"eval.thor_expert={expert}"])
        result = export(cfg, out=tmp_path / f"expert{expert}")
        assert result.info["architecture"]["family"] == "thor"
        dense_parameters = result.info["architecture"]["parameters"]
        assert result.info["single_expert"] == {
            "expert": expert, "expert_layers": ["decoder.layers.0", "encoder.layers.0"],
        }  # fmt: skip
        assert result.info["inputs"]["model_arguments"] == {
            "moe_inference": "fixed", "moe_inference_expert": expert,
            "moe_inference_seed": cfg.eval.seed,
        }  # fmt: skip
        for options in (DecodeOptions(beam=1), DecodeOptions(beam=1, no_repeat_ngram_size=2)):
            fairseq = Translator.load(thor_run, checkpoint, options, eval_overrides(cfg.eval))
            ct2 = Ct2Translator.load(result.out_dir, result.info, options, ("en", "de"), 1)
            assert ct2.translate(sources).hypotheses == fairseq.translate(sources).hypotheses
        assert_same_scores(fairseq, ct2, sources)
        # the export holds one expert of the 2 in the expert layers: fewer parameters
        assert dense_parameters < fairseq.num_parameters
        first_token[expert] = token_log_probs(fairseq, sources[2], ["▁Wo"])
    assert first_token[0] != first_token[1]  # each export holds its own expert
    for mode in ("random", "mean"):
        with pytest.raises(MoeMtError, match=f"eval.thor_inference={mode} .*eval.thor_inference"
                           "=fixed .*moemt distill"):  # fmt: skip
            export(load_config(thor_run, [f"eval.thor_inference={mode}"]), out=tmp_path / mode)
        assert not (tmp_path / mode).exists()


def test_consistency_report_over_random_draws(thor_run):
    from moe_mt.config import load_config
    from moe_mt.models.families import eval_overrides
    from moe_mt.workflows.evaluate.draw_consistency import draw_consistency
    from moe_mt.workflows.translate.translator import DecodeOptions, Translator

    cfg = load_config(thor_run, ["eval.thor_draws=3", "eval.beam=2"])
    translator = Translator.load(
        thor_run, thor_run / "checkpoints" / "checkpoint_last.pt",
        DecodeOptions.from_config(cfg.eval), model_overrides=eval_overrides(cfg.eval),
    )  # fmt: skip
    sources = ["Hello.", "I like tea.", "Where is the station?", "Tom is here."]
    references = ["Hallo.", "Ich mag Tee.", "Wo ist der Bahnhof?", "Tom ist hier."]
    first = translator.translate(sources).hypotheses
    report = draw_consistency(translator, sources, references, 3, cfg.eval.seed, first)
    assert report["draws"] == 3 and report["seeds"] == [cfg.eval.seed + i for i in range(3)]
    assert len(report["bleu"]) == 3 and len(report["pairwise_bleu"]["pairs"]) == 3
    assert report["bleu_range"] == pytest.approx(max(report["bleu"]) - min(report["bleu"]))
    assert 0.0 <= report["identical_share"] <= 1.0
    # Settings restored: the same draw again gives the first hypotheses.
    assert translator.translate(sources).hypotheses == first


def test_recipe_loads_and_passes_the_thor_keys(tmp_path):
    from moe_mt.config import load_config
    from moe_mt.workflows.common.rundir import RunDir
    from moe_mt.workflows.train.fairseq_args import train_args

    cfg = load_config(REPO / "recipes" / "demo_thor.yaml", [f"run_dir={tmp_path}"])
    args = train_args(cfg, RunDir(cfg.run_dir))
    assert args[args.index("--arch") + 1] == ARCH
    assert args[args.index("--criterion") + 1] == CRITERION_NAME
    assert args[args.index("--moe-consistency-alpha") + 1] == "5.0"
    assert args[args.index("--moe-granularity") + 1] == "batch"


def test_eval_reports_the_consistency_of_thor_runs(thor_run, tmp_path):
    from moe_mt.config import load_config
    from moe_mt.workflows.evaluate.evaluation import evaluate

    text = thor_run / "data" / "text" / "en-de"
    for lang in ("en", "de"):
        lines = (text / f"test.{lang}").read_text(encoding="utf-8").splitlines()[:12]
        (tmp_path / f"head.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = load_config(
        thor_run,
        [f"eval.source={tmp_path / 'head.en'}", f"eval.reference={tmp_path / 'head.de'}",
         "eval.beam=2", "eval.thor_draws=2"],
    )  # fmt: skip
    report = evaluate(cfg).report
    (direction,) = report["directions"].values()
    thor_report = direction["thor"]
    assert thor_report["draws"] == 2 and len(thor_report["pairwise_bleu"]["pairs"]) == 1
    # Draw 0 is the eval's own translation (random mode, seed eval.seed).
    assert thor_report["bleu"][0] == pytest.approx(direction["scores"]["BLEU"]["score"], abs=1e-3)
    assert report["eval_config"]["thor_inference"] == "random"
