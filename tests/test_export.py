"""moemt export and eval.engine=ctranslate2: the export's contents and reuse, and CTranslate2
decoding the same hypotheses as fairseq."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_mt.checkpoints import choose_checkpoint
from moe_mt.cli.main import app
from moe_mt.data_prep.download import file_sha256
from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.text import read_lines
from moe_mt.workflows.evaluate.evaluation import evaluate
from moe_mt.workflows.export.ct2_translator import (
    Ct2Translator,
    ct2_options,
    fairseq_batches,
    max_decoding_length,
)
from moe_mt.workflows.export.engine import decoding_differences
from moe_mt.workflows.export.exporter import EXPORT_JSON, default_export_dir, export
from moe_mt.workflows.translate.translator import DecodeOptions, Translator
from tests.conftest import SHIPPED, TINY_MODEL, demo_config

# The 10-update checkpoint: its (poor) output still depends on the input (the 30-update one says
# "..." to nearly everything), so that a wrong weight or token would show.
CHECKPOINT = "checkpoint_1_10.pt"


def _cfg(run_dir: Path, *overrides: str):
    return demo_config(run_dir, "data.spm.vocab_size=2000", *TINY_MODEL, *overrides)


def _sentences(n: int = 12) -> list[str]:
    """Test sentences of different lengths (up to 80 characters)."""
    lines = [line for line in read_lines(SHIPPED / "test.en") if len(line) <= 80]
    return lines[:: max(1, len(lines) // n)][:n]


@pytest.fixture(scope="module")
def run_copy(trained_demo, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(trained_demo, target)
    return target


@pytest.fixture(scope="module")
def exported(run_copy):
    return export(_cfg(run_copy, f"eval.checkpoint={CHECKPOINT}"))


def token_log_probs(translator: Translator, source: str, target: list[str]):
    """fairseq's log-probability of each token of ``target`` (pieces, then </s>) given
    ``source``, from the loaded model's forward pass (teacher forcing)."""
    import torch

    src_dict, tgt_dict = translator.task.source_dictionary, translator.task.target_dictionary
    pieces = " ".join(translator.spm_src.encode(source, out_type=str))
    src = src_dict.encode_line(pieces, add_if_not_exist=False).long().unsqueeze(0)
    tgt = tgt_dict.encode_line(" ".join(target), add_if_not_exist=False).long()
    previous = torch.cat([torch.tensor([tgt_dict.eos()]), tgt[:-1]]).unsqueeze(0)
    model = translator.models[0]
    with torch.no_grad():
        out = model(src, torch.tensor([src.numel()]), previous)
        log_probs = model.get_normalized_probs(out, log_probs=True)[0]
    return log_probs.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).tolist()


def assert_same_scores(fairseq: Translator, ct2: Ct2Translator, lines: list[str]) -> None:
    """CTranslate2 scores fairseq's hypotheses token by token as fairseq does (float32)."""
    hypotheses = fairseq.translate(lines).hypotheses
    for source, hypothesis in zip(lines, hypotheses, strict=True):
        target = fairseq.spm_tgt.encode(hypothesis, out_type=str)
        expected = token_log_probs(fairseq, source, target)
        src = fairseq.spm_src.encode(source, out_type=str)
        (got,) = ct2.translator.score_batch([src], [target])
        assert got.tokens == [*target, "</s>"]
        assert got.log_probs == pytest.approx(expected, abs=2e-4)


def _both(run_copy: Path, exported, options: DecodeOptions) -> tuple[Translator, Ct2Translator]:
    checkpoint = run_copy / "checkpoints" / CHECKPOINT
    fairseq = Translator.load(run_copy, checkpoint, options)
    ct2 = Ct2Translator.load(exported.out_dir, exported.info, options, ("en", "de"), threads=1)
    return fairseq, ct2


def test_export_directory_and_export_json(run_copy, exported):
    out = exported.out_dir
    assert out == default_export_dir(run_copy, "float32") == run_copy / "export" / "ct2-float32"
    for name in ("model.bin", "config.json", "spm.model", EXPORT_JSON):
        assert (out / name).is_file(), name
    info = json.loads((out / EXPORT_JSON).read_text())
    checkpoint = run_copy / "checkpoints" / CHECKPOINT
    assert info["source_run"] == str(run_copy.resolve())
    assert info["checkpoint"]["path"] == str(checkpoint)
    assert info["checkpoint"]["sha256"] == file_sha256(checkpoint)
    assert info["checkpoint"]["num_updates"] == 10
    assert info["architecture"]["arch"].startswith("moemt_transformer")
    assert info["architecture"]["family"] == "dense"
    assert (info["architecture"]["encoder_layers"], info["architecture"]["embed_dim"]) == (1, 64)
    assert info["quantization"] == "float32" and info["single_expert"] is None
    assert info["inputs"]["model_arguments"] == {}  # a dense model's eval sets none
    assert info["spm"] == {"en": "spm.model", "de": "spm.model"}
    assert (out / "spm.model").read_bytes() == (run_copy / "data" / "spm.model").read_bytes()
    assert info["versions"]["ctranslate2"] and info["versions"]["fairseq"] == "0.12.2"
    assert info["languages"]["directions"] == ["en-de"] and not info["languages"]["tokens"]


def test_the_export_scores_as_fairseq(run_copy, exported):
    fairseq, ct2 = _both(run_copy, exported, DecodeOptions(beam=1))
    assert_same_scores(fairseq, ct2, _sentences(5))


def test_export_is_reused_until_an_input_changes(run_copy, exported, tmp_path):
    cfg = _cfg(run_copy, f"eval.checkpoint={CHECKPOINT}")
    model = exported.out_dir / "model.bin"
    before = model.stat().st_mtime_ns
    again = export(cfg)
    assert again.reused and model.stat().st_mtime_ns == before
    # another checkpoint: rebuilt in place, with its sha256
    other = export(_cfg(run_copy, "eval.checkpoint=checkpoint_1_20.pt"), out=tmp_path / "x")
    assert not other.reused
    rebuilt = export(_cfg(run_copy, "eval.checkpoint=checkpoint_1_20.pt"))
    assert not rebuilt.reused and rebuilt.out_dir == exported.out_dir
    assert rebuilt.info["checkpoint"]["num_updates"] == 20
    # ... and back (the last build is what is reused)
    assert not export(cfg).reused and export(cfg).reused
    # another quantization: its own directory
    int8 = export(_cfg(run_copy, f"eval.checkpoint={CHECKPOINT}", "eval.quantization=int8"))
    assert int8.out_dir.name == "ct2-int8" and int8.info["quantization"] == "int8"
    assert (int8.out_dir / "model.bin").stat().st_size < model.stat().st_size / 2


def test_an_export_with_a_damaged_export_json_is_rebuilt(run_copy, exported, tmp_path):
    """Issue 35, X2: not called "no export.json", not refused: rebuilt, then reused."""
    cfg = _cfg(run_copy, f"eval.checkpoint={CHECKPOINT}")
    out = tmp_path / "damaged"
    export(cfg, out=out)
    (out / "export.json").write_text("{ not json")
    rebuilt = export(cfg, out=out)
    assert not rebuilt.reused and json.loads((out / "export.json").read_text())["inputs"]
    assert export(cfg, out=out).reused


def test_export_refuses_an_unknown_quantization_and_a_foreign_directory(run_copy, tmp_path):
    with pytest.raises(MoeMtError, match=r"^eval.quantization=int4: expected one of int8, "):
        export(_cfg(run_copy, "eval.quantization=int4"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(MoeMtError, match="exists and is not a moemt export"):
        export(_cfg(run_copy, f"eval.checkpoint={CHECKPOINT}"), out=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("no_repeat", [0, 3])
def test_greedy_hypotheses_are_fairseq_s(run_copy, exported, no_repeat):
    options = DecodeOptions(beam=1, no_repeat_ngram_size=no_repeat, max_len_a=1.2, max_len_b=10)
    fairseq, ct2 = _both(run_copy, exported, options)
    lines = _sentences()
    expected = fairseq.translate(lines)
    got = ct2.translate(lines)
    assert len(set(expected.hypotheses)) > 1  # input-dependent output
    assert got.hypotheses == expected.hypotheses
    assert got.generated_tokens == expected.generated_tokens
    assert got.source_tokens == expected.source_tokens


def test_beam_hypotheses_are_fairseq_s_below_the_length_limit(run_copy, exported):
    """Beam 4: the same best hypothesis whenever neither engine's reaches the maximum length
    (where fairseq forces </s> and CTranslate2 stops: engine.decoding_differences)."""
    limit = 40
    options = DecodeOptions(beam=4, max_len_a=0, max_len_b=limit)
    fairseq, ct2 = _both(run_copy, exported, options)
    lines = _sentences(20)
    expected, got = fairseq.translate(lines).hypotheses, ct2.translate(lines).hypotheses
    spm = fairseq.spm_tgt
    below = [
        i for i in range(len(lines))
        if max(len(spm.encode(expected[i])), len(spm.encode(got[i]))) < limit - 5
    ]  # fmt: skip
    assert len(below) >= 5
    assert [got[i] for i in below] == [expected[i] for i in below]


@pytest.mark.parametrize(
    ("width", "a", "b", "positions", "expected"),
    [
        (10, 1.2, 10, 1024, 22),  # int(1.2 * 10 + 10): fairseq's SequenceGenerator
        (11, 1.2, 10, 1024, 23),  # int(23.2)
        (7, 0.0, 8, 1024, 8),
        (900, 1.2, 10, 1024, 1023),  # capped by the decoder's positions - 1
    ],
)
def test_max_decoding_length_is_fairseq_s(width, a, b, positions, expected):
    options = DecodeOptions(max_len_a=a, max_len_b=b)
    assert max_decoding_length(width, options, positions) == expected


def test_decoding_options_map_one_to_one():
    options = DecodeOptions(beam=4, lenpen=0.6, no_repeat_ngram_size=3)
    assert ct2_options(options) == {
        "beam_size": 4, "length_penalty": 0.6, "no_repeat_ngram_size": 3,
        "max_input_length": 0, "return_end_token": False,
    }  # fmt: skip
    assert decoding_differences(DecodeOptions(beam=1, no_repeat_ngram_size=3)) == []
    assert len(decoding_differences(DecodeOptions(beam=5))) == 1


def test_batches_are_fairseq_s(run_copy):
    """The CTranslate2 batches are those fairseq's inference iterator makes (same members)."""
    options = DecodeOptions(max_tokens=60)
    fairseq = Translator.load(run_copy, run_copy / "checkpoints" / CHECKPOINT, options)
    lines = _sentences(30)
    _, tokens, _ = fairseq._encode(lines)
    dataset = fairseq.task.build_dataset_for_inference(tokens, [t.numel() for t in tokens])
    iterator = fairseq.task.get_batch_iterator(
        dataset=dataset, max_tokens=60, max_positions=fairseq.max_positions,
        disable_iterator_cache=True,
    ).next_epoch_itr(shuffle=False)  # fmt: skip
    expected = [sorted(batch["id"].tolist()) for batch in iterator]
    got = [sorted(b.tolist()) for b in fairseq_batches([t.numel() for t in tokens], options)]
    assert len(expected) > 2 and sorted(got) == sorted(expected)


def test_eval_with_ctranslate2_reports_the_engine_and_compares(run_copy, tmp_path):
    from moe_mt.workflows.compare.comparison import compare

    common = (f"eval.checkpoint={CHECKPOINT}", "eval.beam=1", "eval.split=valid")
    fairseq = evaluate(_cfg(run_copy, *common))
    ct2 = evaluate(_cfg(run_copy, *common, "eval.engine=ctranslate2"))
    assert ct2.out_dir == run_copy / "eval" / "valid-ct2-float32"
    engine = ct2.report["engine"]
    assert engine["name"] == "ctranslate2" and engine["quantization"] == "float32"
    assert engine["export"] == str(run_copy / "export" / "ct2-float32")
    assert engine["decoding_differences"] == []  # greedy: nothing differs
    assert fairseq.report["engine"] == {
        "name": "fairseq", "quantization": "float32", "threads": engine["threads"],
    }  # fmt: skip
    assert ct2.report["timing"]["threads"] == engine["threads"]
    hyps = [read_lines(r.out_dir / "en-de" / "hyp.txt") for r in (fairseq, ct2)]
    assert hyps[0] == hyps[1]
    assert ct2.report["average"]["BLEU"]["score"] == fairseq.report["average"]["BLEU"]["score"]

    beam = evaluate(_cfg(run_copy, *common, "eval.engine=ctranslate2", "eval.beam=2",
                         "eval.no_repeat_ngram_size=3", "eval.name=beam"))  # fmt: skip
    assert [d.split(":")[0] for d in beam.report["engine"]["decoding_differences"]] == [
        "max length", "no_repeat_ngram_size",
    ]  # fmt: skip

    result = compare(
        [run_copy, ct2.out_dir], tmp_path / "cmp", split="valid", resamples=50, summaries=False
    )
    names = [row["name"] for row in result["runs"]]
    assert names[0] == "run" and names[1].startswith("run/valid-ct2-float32 (ctranslate2 float32")
    assert result["runs"][1]["engine"]["name"] == "ctranslate2"
    assert result["runs"][1]["bootstrap"]["en-de"]["BLEU"]["p_value"] is not None


def test_translate_cli_engine(run_copy):
    lines = _sentences(4)
    common = [str(run_copy), f"run_dir={run_copy}", f"eval.checkpoint={CHECKPOINT}", "eval.beam=1"]
    runner = CliRunner()
    fairseq = runner.invoke(app, ["translate", *common], input="\n".join(lines))
    ct2 = runner.invoke(
        app, ["translate", *common, "--engine", "ctranslate2"], input="\n".join(lines)
    )
    assert fairseq.exit_code == 0 and ct2.exit_code == 0, ct2.stderr
    assert ct2.stdout == fairseq.stdout and ct2.stdout.count("\n") == len(lines)
    assert "ctranslate2 float32" in ct2.stderr
    bad = runner.invoke(app, ["translate", *common, "--engine", "onnx"], input="Hi.\n")
    assert bad.exit_code == 1
    assert bad.stderr.strip().splitlines() == [
        "error: eval.engine=onnx: expected one of fairseq, ctranslate2"
    ]


def test_export_cli(run_copy, tmp_path):
    out = tmp_path / "deploy"
    result = CliRunner().invoke(
        app, ["export", str(run_copy), f"run_dir={run_copy}", f"eval.checkpoint={CHECKPOINT}",
              "--quantization", "int8", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads((out / EXPORT_JSON).read_text())["quantization"] == "int8"
    assert f"wrote {out}" in result.stdout.replace("\n", "")
    missing = CliRunner().invoke(
        app, ["export", str(run_copy), f"run_dir={run_copy}", "eval.checkpoint=nope.pt"]
    )
    assert missing.exit_code == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "nope.pt: no such file" in missing.stderr


def test_checkpoint_is_chosen_as_eval_chooses_it(run_copy, tmp_path):
    """eval.checkpoint=average: the export is of the averaged checkpoint that eval uses."""
    cfg = _cfg(run_copy, "eval.checkpoint=average", "eval.average_last=2")
    result = export(cfg, out=tmp_path / "avg")
    chosen = choose_checkpoint(run_copy / "checkpoints", "average", 2)
    assert result.info["checkpoint"]["choice"] == "average"
    assert result.info["checkpoint"]["sha256"] == file_sha256(chosen.path)


# -- a GLU FFN (model.moe.expert_activation): CTranslate2's ffn_glu ------------------------------


def _untrained_dense_model(data_dir: Path, activation: str, seed: int = 0):
    """(model, task): a tiny ``moemt_transformer`` with random weights, on dictionaries alone
    (no training: the export copies weights, and random ones show a misplaced one as well)."""
    import torch
    from fairseq import options, tasks

    import moe_mt

    moe_mt.register()
    data_dir.mkdir(exist_ok=True)
    for lang in ("en", "de"):
        (data_dir / f"dict.{lang}.txt").write_text("".join(f"w{i} 1\n" for i in range(40)))
    sizes = {"layers": 2, "embed-dim": 32, "ffn-embed-dim": 48, "attention-heads": 4}
    argv = [str(data_dir), "--task", "translation", "-s", "en", "-t", "de"]
    argv += ["--arch", "moemt_transformer_tiny", "--moe-expert-activation", activation]
    argv += [f"--{side}-{k}={v}" for side in ("encoder", "decoder") for k, v in sizes.items()]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    torch.manual_seed(seed)
    task = tasks.setup_task(args)
    return task.build_model(args).eval(), task


@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
def test_a_glu_model_exports_and_decodes_as_fairseq(tmp_path, activation):
    """The gate w1 in linear_0, the up projection w3 in linear_0_noact, Swish (SiLU) or GELU
    (erf): CTranslate2's greedy hypotheses and token scores are fairseq's; with gate and up
    swapped they are not (the check can tell)."""
    import ctranslate2
    import torch
    from fairseq.sequence_generator import SequenceGenerator

    from moe_mt.models.glu import GLUProjection
    from moe_mt.workflows.export.ct2_spec import PAD_NAME, save_spec, transformer_spec

    model, task = _untrained_dense_model(tmp_path / "data", activation)
    # Larger gates and FFN outputs: GELU's erf and tanh forms then differ in the scores (by
    # about 2e-4, ten times the tolerance below, itself ten times the float32 noise seen).
    with torch.no_grad():
        for layer in [*model.encoder.layers, *model.decoder.layers]:
            layer.fc1.w1.weight.mul_(8)
            layer.fc2.weight.mul_(4)
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    spec = transformer_spec(model, task)
    assert all(isinstance(layer.fc1, GLUProjection) for layer in model.encoder.layers)
    save_spec(spec, tmp_path / "ct2", "float32")
    swapped_spec = transformer_spec(model, task)  # saving consumes a spec: a new one
    for ffn in (swapped_spec.encoder.layer[0].ffn, swapped_spec.decoder.layer[1].ffn):
        ffn.linear_0, ffn.linear_0_noact = ffn.linear_0_noact, ffn.linear_0
    save_spec(swapped_spec, tmp_path / "swapped", "float32")
    ct2, swapped = (ctranslate2.Translator(str(tmp_path / d)) for d in ("ct2", "swapped"))
    generator = SequenceGenerator([model], tgt_dict, beam_size=1, max_len_a=0, max_len_b=10)
    g = torch.Generator().manual_seed(1)
    hypotheses, differences = set(), []
    for length in range(3, 9):
        ids = torch.randint(src_dict.nspecial, len(src_dict), (length,), generator=g)
        src = torch.cat([ids, torch.tensor([src_dict.eos()])]).unsqueeze(0)
        net_input = {"src_tokens": src, "src_lengths": torch.tensor([length + 1])}
        with torch.no_grad():
            best = generator.generate([model], {"net_input": net_input})[0][0]["tokens"]
            previous = torch.cat([best.new_tensor([tgt_dict.eos()]), best[:-1]]).unsqueeze(0)
            out = model(src, net_input["src_lengths"], previous)
            expected = model.get_normalized_probs(out, log_probs=True)[0]
        expected = expected.gather(-1, best.unsqueeze(-1)).squeeze(-1).tolist()
        source = [src_dict[i] for i in ids.tolist()]
        target = [tgt_dict[i] for i in best.tolist()[:-1]]
        # fairseq never selects the padding symbol; a trained model never ranks it first, an
        # untrained one may: CTranslate2 is told to do as fairseq does.
        (got,) = ct2.translate_batch(
            [source], beam_size=1, max_decoding_length=10, return_end_token=False,
            suppress_sequences=[[PAD_NAME]],
        )  # fmt: skip
        assert got.hypotheses[0] == target
        assert ct2.score_batch([source], [target])[0].log_probs == pytest.approx(expected, abs=2e-5)
        hypotheses.add(tuple(target))
        wrong = swapped.score_batch([source], [target])[0].log_probs
        differences.append(max(abs(a - b) for a, b in zip(wrong, expected, strict=True)))
    assert len(hypotheses) > 1  # input-dependent output
    assert min(differences) > 1e-3
