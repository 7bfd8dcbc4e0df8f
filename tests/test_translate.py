"""moemt translate and the Translator: same hypotheses as eval, input order, blank lines."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from moe_mt.cli.main import app
from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.text import read_lines
from moe_mt.workflows.evaluate.evaluation import evaluate
from moe_mt.workflows.translate.translator import DecodeOptions, Translator, count_parameters
from tests.conftest import SHIPPED, TINY_MODEL, demo_config

# The 10-update checkpoint: its (poor) output still depends on the input, which lets a test see
# a line out of place; the 30-update one says "..." to nearly everything.
CHECKPOINT = "checkpoint_1_10.pt"


def _cfg(run_dir: Path, *overrides: str):
    return demo_config(run_dir, "data.spm.vocab_size=2000", *TINY_MODEL, *overrides)


def _lines_of_different_lengths() -> list[str]:
    """Test sentences of distinct, very different lengths (6 to 120 characters), longest and
    shortest interleaved."""
    by_length: dict[int, str] = {}
    for line in read_lines(SHIPPED / "test.en"):
        if len(line) <= 120:  # longer ones only slow the test down
            by_length.setdefault(len(line), line)
    lengths = sorted(by_length)
    picked = [lengths[-1], lengths[0], lengths[-2], lengths[1], lengths[len(lengths) // 2]]
    picked += [lengths[-3], lengths[2]]
    return [by_length[n] for n in picked]


def _with_options(translator: Translator, **options) -> Translator:
    """The same loaded model with other decoding options."""
    return Translator(
        translator.models,
        translator.task,
        DecodeOptions(**options),
        translator.spm_src,
        translator.spm_tgt,
        translator.num_updates,
    )


@pytest.fixture(scope="module")
def run_copy(trained_demo, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("translate") / "run"
    shutil.copytree(trained_demo, target)
    return target


@pytest.fixture(scope="module")
def translator(run_copy) -> Translator:
    return Translator.load(run_copy, run_copy / "checkpoints" / CHECKPOINT, DecodeOptions())


def test_translate_cli_matches_eval(run_copy, tmp_path):
    lines = _lines_of_different_lengths()
    source, reference = tmp_path / "mixed.en", tmp_path / "mixed.de"
    source.write_text("".join(s + "\n" for s in lines), encoding="utf-8")
    reference.write_text("".join(f"ref {i}\n" for i in range(len(lines))), encoding="utf-8")
    common = (f"eval.checkpoint={CHECKPOINT}", "eval.no_repeat_ngram_size=0")
    result = evaluate(
        _cfg(run_copy, *common, f"eval.source={source}", f"eval.reference={reference}")
    )
    expected = read_lines(result.out_dir / "en-de" / "hyp.txt")
    assert len(set(expected)) == len(lines)  # distinct: a misplaced line would show

    # With a blank line in the middle and a last line without a newline.
    stdin = "\n".join(lines[:3] + [""] + lines[3:])
    result = CliRunner().invoke(
        app, ["translate", str(run_copy), f"run_dir={run_copy}", *common], input=stdin
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split("\n") == expected[:3] + [""] + expected[3:] + [""]
    assert f"translated {len(lines) + 1} lines" in result.stderr
    assert CHECKPOINT in result.stderr


def test_output_order_is_input_order(translator):
    lines = _lines_of_different_lengths()
    forward = translator.translate(lines).hypotheses
    assert len(set(forward)) == len(lines)
    # Distinct lengths: whatever the input order, fairseq sorts into the same batch, so the
    # hypotheses are the same and must come back in the order of their inputs.
    backward = translator.translate(lines[::-1]).hypotheses
    assert backward == forward[::-1]
    shuffled = [4, 0, 6, 2, 5, 1, 3]
    assert translator.translate([lines[i] for i in shuffled]).hypotheses == [
        forward[i] for i in shuffled
    ]


def test_blank_lines_and_counts(translator):
    result = translator.translate(["", "   ", "Tom is here."])
    assert result.hypotheses[:2] == ["", ""] and result.hypotheses[2]
    assert result.truncated == 0 and result.generated_tokens > 0
    assert translator.translate([]).hypotheses == []


def test_batching_options_keep_order_and_count(translator):
    lines = _lines_of_different_lengths()
    small = _with_options(translator, batch_size=2, max_tokens=None)
    batches = []
    result = small.translate(lines, on_batch=batches.append)
    assert len(result.hypotheses) == len(lines) and all(result.hypotheses)
    assert batches == [2, 2, 2, 1]
    with pytest.raises(MoeMtError, match="less than the longest source"):
        _with_options(translator, max_tokens=5).translate(lines)


def test_long_source_is_truncated_to_the_model(translator):
    limit = translator.max_positions[0]
    fast = _with_options(translator, beam=1, max_len_a=0, max_len_b=5)
    result = fast.translate(["word " * (limit + 50)])
    assert result.truncated == 1 and len(result.hypotheses) == 1


def test_decode_options_from_config(run_copy):
    cfg = _cfg(run_copy, "eval.beam=3", "eval.lenpen=0.6", "eval.batch_size=8")
    options = DecodeOptions.from_config(cfg.eval)
    assert (options.beam, options.lenpen, options.batch_size) == (3, 0.6, 8)
    with pytest.raises(MoeMtError, match="eval.beam=0: must be at least 1"):  # on loading
        _cfg(run_copy, "eval.beam=0")
    cfg.eval.beam = 0  # a config built in code is checked where it is used
    with pytest.raises(MoeMtError, match="eval.beam must be at least 1"):
        DecodeOptions.from_config(cfg.eval)


def test_parameter_count_skips_bettertransformer_copies(translator):
    from fairseq.models.transformer import TransformerConfig
    from fairseq.modules.transformer_layer import TransformerEncoderLayerBase

    model = translator.models[0]
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    cfg = TransformerConfig()
    cfg.encoder.embed_dim, cfg.encoder.ffn_embed_dim, cfg.encoder.attention_heads = 8, 16, 2
    layer = TransformerEncoderLayerBase(cfg)
    real = sum(p.numel() for n, p in layer.named_parameters() if "." in n)  # in submodules
    assert count_parameters(layer) == real < sum(p.numel() for p in layer.parameters())


def test_translate_cli_missing_checkpoint(run_copy):
    result = CliRunner().invoke(
        app,
        ["translate", str(run_copy), f"run_dir={run_copy}", "eval.checkpoint=nope.pt"],
        input="Hello.\n",
    )
    assert result.exit_code == 1
    assert "nope.pt: no such file" in result.stderr


def test_translations_are_deterministic(translator):
    torch.manual_seed(0)
    lines = _lines_of_different_lengths()[1::2]
    assert translator.translate(lines).hypotheses == translator.translate(lines).hypotheses
