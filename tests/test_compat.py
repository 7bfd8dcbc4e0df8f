"""Each patch of moe_mt.compat, exercised on the path that fails without it.

Where it is cheap, a negative control runs the same thing in a fresh interpreter without the
patch and checks that it still fails there, so that a patch that has become unnecessary (a
newer fairseq or torch) shows up.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import moe_mt
from moe_mt import compat


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_fairseq_imports():
    import fairseq
    import fairseq.models.transformer  # noqa: F401
    from fairseq.dataclass.configs import FairseqConfig

    assert fairseq.__version__ == "0.12.2"
    assert FairseqConfig().common is not None


def test_fairseq_import_fails_without_dataclass_patch():
    result = _python("import fairseq")
    assert result.returncode != 0
    assert "mutable default" in result.stderr


def test_apply_is_idempotent_and_refuses_late_import():
    compat.apply()
    compat.apply()
    # Stands for a fairseq imported (and so broken) before the patches could apply.
    result = _python(
        "import sys, types; sys.modules['fairseq'] = types.ModuleType('fairseq'); import moe_mt"
    )
    assert result.returncode != 0
    assert "import moe_mt first" in result.stderr


def test_no_repeat_ngram_blocks_repeats():
    from fairseq.ngram_repeat_block import NGramRepeatBlock

    blocker = NGramRepeatBlock(2, use_extension=False)
    # Buffer of width 8; only positions 0..step are generated, the rest is padding (1).
    tokens = torch.tensor([[2, 5, 6, 5, 1, 1, 1, 1]])
    lprobs = torch.zeros(1, 10)
    out = blocker(tokens, lprobs.clone(), bsz=1, beam_size=1, step=3)
    # The last generated token is 5, and the bigram (5, 6) was seen: 6 must be banned.
    assert out[0, 6] == -float("inf")
    assert torch.isfinite(out[0, [0, 1, 2, 3, 4, 5, 7, 8, 9]]).all()


def _train(data_bin: Path, save_dir: Path, max_update: int) -> None:
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import utils as distributed_utils
    from fairseq_cli import train

    args = [
        str(data_bin), "--user-dir", moe_mt.USER_DIR,
        "--arch", "transformer", "--share-all-embeddings",
        "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
        "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
        "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
        "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2048",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--max-update", str(max_update), "--save-dir", str(save_dir),
        "--save-interval-updates", "2", "--no-epoch-checkpoints", "--disable-validation",
        "--num-workers", "0", "--seed", "1", "--log-format", "none", "--no-progress-bar",
    ]  # fmt: skip
    parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, args))
    distributed_utils.call_main(cfg, train.main)


@pytest.fixture(scope="module")
def trained(prepped_demo, tmp_path_factory) -> Path:
    save_dir = tmp_path_factory.mktemp("compat") / "checkpoints"
    _train(prepped_demo / "data" / "bin", save_dir, max_update=2)
    return save_dir


def test_train_resume_generate(trained, prepped_demo):
    from fairseq import checkpoint_utils

    last = trained / "checkpoint_last.pt"
    state = checkpoint_utils.load_checkpoint_to_cpu(str(last))
    assert state["optimizer_history"][-1]["num_updates"] == 2

    # Resume from checkpoint_last.pt (loads under weights_only=True with the allow-list).
    _train(prepped_demo / "data" / "bin", trained, max_update=4)
    state = checkpoint_utils.load_checkpoint_to_cpu(str(last))
    assert state["optimizer_history"][-1]["num_updates"] == 4

    hypotheses = _generate(prepped_demo / "data" / "bin", last)
    assert len(hypotheses) == 1034  # the whole test split, one hypothesis per sentence


def test_checkpoint_needs_allow_list_without_patch(trained):
    result = _python(
        f"import torch; torch.load({str(trained / 'checkpoint_last.pt')!r}, map_location='cpu')"
    )
    assert result.returncode != 0
    assert "weights_only" in result.stderr.lower() or "unsupported global" in result.stderr.lower()


def test_loaded_encoder_skips_bettertransformer(trained):
    from fairseq import checkpoint_utils

    models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task(
        [str(trained / "checkpoint_last.pt")]
    )
    model = models[0].eval()
    layers = model.encoder.layers
    assert all(layer.load_to_BT for layer in layers)  # fairseq asked for the fused path on load
    assert not any(layer.can_use_fastpath for layer in layers)
    tokens = torch.tensor([[10, 11, 12, 2], [1, 13, 14, 2]])  # left-padded, as fairseq batches
    lengths = torch.tensor([4, 3])
    with torch.no_grad():
        model.encoder(tokens, src_lengths=lengths)
        # Negative control: re-enable the fused path and the same call fails.
        for layer in layers:
            layer.can_use_fastpath = True
        with pytest.raises(Exception, match="Mask Type"):
            model.encoder(tokens, src_lengths=lengths)


def _generate(data_bin: Path, checkpoint: Path) -> list[str]:
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import generate

    args = [
        str(data_bin), "--path", str(checkpoint), "--gen-subset", "test", "--beam", "2",
        "--max-tokens", "4000", "--no-repeat-ngram-size", "3", "--max-len-b", "20",
        "--num-workers", "0", "--results-path", str(checkpoint.parent / "gen"),
    ]  # fmt: skip
    parser = options.get_generation_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, args))
    generate.main(cfg)
    out = (checkpoint.parent / "gen" / "generate-test.txt").read_text(encoding="utf-8")
    return [line for line in out.splitlines() if line.startswith("H-")]


def test_fairseq_preprocess_in_process(shipped_corpus, tmp_path):
    from fairseq import options
    from fairseq_cli import preprocess

    parser = options.get_preprocessing_parser()
    args = parser.parse_args(
        ["--source-lang", "en", "--target-lang", "de", "--joined-dictionary",
         "--trainpref", str(shipped_corpus / "valid"), "--validpref", str(shipped_corpus / "test"),
         "--destdir", str(tmp_path / "bin"), "--workers", "2"]
    )  # fmt: skip
    preprocess.main(args)
    for split in ("train", "valid"):
        for lang in ("en", "de"):
            assert (tmp_path / "bin" / f"{split}.en-de.{lang}.bin").stat().st_size > 0


def test_fairseq_interactive_in_process(trained, prepped_demo, tmp_path, capsys):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import interactive

    source = tmp_path / "input.en"
    source.write_text("Tom is here.\nI like green tea very much.\n", encoding="utf-8")
    data = prepped_demo / "data"
    args = [
        str(data / "bin"), "--path", str(trained / "checkpoint_last.pt"), "--source-lang", "en",
        "--target-lang", "de", "--bpe", "sentencepiece", "--sentencepiece-model",
        str(data / "spm.model"), "--input", str(source), "--beam", "2", "--max-len-b", "10",
    ]  # fmt: skip
    parser = options.get_interactive_generation_parser()
    interactive.main(convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, args)))
    hypotheses = [line for line in capsys.readouterr().out.splitlines() if line.startswith("H-")]
    assert [h.split("\t")[0] for h in hypotheses] == ["H-0", "H-1"]


def test_checkpoint_copies_are_atomic(tmp_path, monkeypatch):
    from fairseq import checkpoint_utils

    src, dst = tmp_path / "checkpoint_1_10.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"old")

    def killed_mid_copy(a, b):
        with open(b, "wb") as out:
            out.write(b"ne")  # a partial write, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfile", killed_mid_copy)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_utils.PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"old"  # the previous checkpoint is intact
    monkeypatch.undo()
    assert checkpoint_utils.PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("tpu", [False, True])
def test_bf16_does_not_imply_tpu(tpu):
    """fairseq 0.12.2 turns ``--bf16`` into ``--tpu``, and its trainer then looks for a TPU on a
    GPU machine; compat patch 8 keeps ``--tpu`` only where it was asked for."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = ["data-bin", "--arch", "transformer", "--task", "translation", "--bf16"]
    argv += ["--tpu"] if tpu else []
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    cfg = convert_namespace_to_omegaconf(args)
    assert args.bf16 and cfg.common.bf16
    assert args.tpu is tpu and cfg.common.tpu is tpu and cfg.distributed_training.tpu is tpu


_NO_FIND_MODULE = """
import importlib.machinery
if hasattr(importlib.machinery.FileFinder, "find_module"):
    del importlib.machinery.FileFinder.find_module  # as in Python 3.12
"""


def test_hydra_plugin_scan_without_find_module(monkeypatch):
    """Python 3.12's importers have no ``find_module``, which hydra-core 1.0.7's plugin scan
    calls (every ``moemt train`` failed there); compat patch 9 imports the scanned modules by
    name instead. Simulated here by taking ``find_module`` away from the standard importer."""
    import importlib.machinery

    from hydra._internal.core_plugins.basic_launcher import BasicLauncher
    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton
    from hydra.plugins.launcher import Launcher

    if hasattr(importlib.machinery.FileFinder, "find_module"):
        monkeypatch.delattr(importlib.machinery.FileFinder, "find_module")
    monkeypatch.delitem(Singleton._instances, Plugins, raising=False)  # scan afresh
    assert BasicLauncher in Plugins.instance().discover(Launcher)

    # Negative control: the same scan with hydra's own pkgutil fails.
    unpatched = _python(
        "import moe_mt\n"
        "import hydra.core.plugins as plugins\n"
        "plugins.pkgutil = plugins.pkgutil._pkgutil\n"
        + _NO_FIND_MODULE
        + "plugins.Plugins.instance()\n"
    )
    assert unpatched.returncode != 0
    assert "find_module" in unpatched.stderr
