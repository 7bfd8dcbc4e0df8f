"""``moemt export``: a run's checkpoint as a CTranslate2 model directory, made once, reused.

The checkpoint is the one ``eval.checkpoint`` chooses (:func:`moe_mt.checkpoints.choose_checkpoint`:
last, best, an average of the last ``eval.average_last``, or a path), loaded the way ``moemt
eval`` loads it (:class:`moe_mt.workflows.translate.Translator`: weights only, this run's
data-bin, THOR's inference options), made dense (:mod:`.dense_model`: routed MoE refused) and
converted (:mod:`.ct2_spec`). The export directory (default ``RUN_DIR/export/ct2-<quantization>``)::

    model.bin, config.json, source_vocabulary.json, target_vocabulary.json   CTranslate2's model
    <the run's sentencepiece model(s)>                                      copied from data/
    export.json   source run, checkpoint (choice, path, updates, sha256), architecture, THOR's
                  expert, quantization, languages and language tokens, sentencepiece files,
                  ``files`` (every other file's size), versions, and ``inputs``: what the
                  export is a function of

An existing export is reused while its ``inputs`` are those of the request (format, checkpoint
sha256, quantization, THOR inference and expert, CTranslate2 version) and its files are those
export.json records (``files``: name and size of each; no links, no names outside the
directory); otherwise it is built beside its place and renamed in
(:func:`moe_mt.workflows.common.rundir.building_dir`), so an interrupted export never looks
complete, and a model.bin cut short is rebuilt, never loaded.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from moe_mt.checkpoints import ChosenCheckpoint, choose_checkpoint
from moe_mt.data_prep.download import file_sha256
from moe_mt.errors import MoeMtError
from moe_mt.models import families
from moe_mt.provenance import provenance
from moe_mt.workflows.common.manifest import read_manifest, trained_directions
from moe_mt.workflows.common.rundir import RunDir, atomic_write_json, building_dir
from moe_mt.workflows.export.ct2_spec import QUANTIZATIONS, save_spec, transformer_spec
from moe_mt.workflows.export.ct2_translator import export_files, export_problem
from moe_mt.workflows.export.dense_model import dense_model
from moe_mt.workflows.export.merge import MERGE_METHODS, calibration_sha256
from moe_mt.workflows.translate.translator import (
    DecodeOptions,
    Translator,
    count_parameters,
)

EXPORT_FORMAT = 2  # 2: single_expert and model_arguments (THOR's keys before)
EXPORT_JSON = "export.json"
EXPORT_DIR = "export"


@dataclass
class ExportResult:
    out_dir: Path
    info: dict  # export.json
    reused: bool  # an existing export had the same inputs


def default_export_dir(run_dir: str | Path, quantization: str, merge: str | None = None) -> Path:
    """``RUN_DIR/export/ct2-<quantization>``, ``-<merge method>`` added for a merged model."""
    return RunDir(run_dir).root / EXPORT_DIR / f"ct2-{quantization}{f'-{merge}' if merge else ''}"


def check_quantization(quantization: str) -> str:
    if quantization not in QUANTIZATIONS:
        raise MoeMtError(
            f"eval.quantization={quantization}: expected one of {', '.join(QUANTIZATIONS)}"
        )
    return quantization


def export(cfg: DictConfig, out: str | Path | None = None) -> ExportResult:
    """``moemt export``: choose ``cfg.eval``'s checkpoint of ``cfg.run_dir`` and export it with
    ``cfg.eval.quantization`` into ``out`` (default :func:`default_export_dir`), or reuse it."""
    run_dir = RunDir(cfg.run_dir)
    check_quantization(cfg.eval.quantization)
    ev = cfg.eval
    if ev.checkpoint == "average":  # may write average_last<N>.pt: hold the run directory
        with run_dir.locked():
            chosen = choose_checkpoint(
                run_dir.checkpoints, ev.checkpoint, ev.average_last, ev.average_over
            )
    else:
        chosen = choose_checkpoint(
            run_dir.checkpoints, ev.checkpoint, ev.average_last, ev.average_over
        )
    return ensure_export(cfg, chosen, out)


def export_inputs(cfg: DictConfig, checkpoint_sha256: str) -> dict:
    """What an export is a function of: equal inputs, equal export."""
    import ctranslate2

    return {
        "format": EXPORT_FORMAT,
        "checkpoint_sha256": checkpoint_sha256,
        "quantization": cfg.eval.quantization,
        # The model arguments the eval config sets for this family (THOR's inference mode).
        "model_arguments": families.eval_overrides(cfg.eval, cfg.model.arch),
        "ctranslate2": ctranslate2.__version__,
        # a merged MoE: the method and the calibration data it saw
        **(
            {
                "merge_experts": merge_method(cfg),
                "calibration_sha256": calibration_sha256(RunDir(cfg.run_dir).data / "bin"),
            }
            if merge_method(cfg)
            else {}
        ),
    }


def merge_method(cfg: DictConfig) -> str | None:
    """``eval.merge_experts``, checked (None: no merging)."""
    method = cfg.eval.get("merge_experts")
    if method is not None and method not in MERGE_METHODS:
        raise MoeMtError(
            f"eval.merge_experts={method}: expected one of {', '.join(MERGE_METHODS)} or null"
        )
    return method


def read_export(out_dir: Path) -> dict | None:
    """``export.json`` of ``out_dir``, or None when absent or unreadable (then rebuilt)."""
    import json

    try:
        info = json.loads((Path(out_dir) / EXPORT_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def ensure_export(
    cfg: DictConfig, chosen: ChosenCheckpoint, out: str | Path | None = None
) -> ExportResult:
    """The export of ``chosen`` with ``cfg.eval``'s options in ``out``: reused when its inputs
    are unchanged, else (re)built. The caller has chosen the checkpoint (and holds the run
    directory if that needed it)."""
    check_quantization(cfg.eval.quantization)
    if out is None:
        out = default_export_dir(cfg.run_dir, cfg.eval.quantization, merge_method(cfg))
    out_dir = Path(out)
    inputs = export_inputs(cfg, file_sha256(chosen.path))
    existing = read_export(out_dir)
    # Reused while its inputs are the same and its files are those it records (a model.bin cut
    # short, a file replaced by a link: rebuilt, never loaded).
    if (
        existing is not None
        and existing.get("inputs") == inputs
        and export_problem(out_dir, existing) is None
    ):
        return ExportResult(out_dir, existing, reused=True)
    # A directory with an export.json that cannot be read is a damaged export of ours: rebuilt.
    # One without is someone else's: refused, left as it is.
    ours = (out_dir / EXPORT_JSON).exists()
    if out_dir.exists() and existing is None and not ours and any(out_dir.iterdir()):
        raise MoeMtError(
            f"{out_dir}: exists and is not a moemt export (no {EXPORT_JSON}); choose another --out"
        )
    info = _build(cfg, chosen, out_dir, inputs)
    return ExportResult(out_dir, info, reused=False)


def _build(cfg: DictConfig, chosen: ChosenCheckpoint, out_dir: Path, inputs: dict) -> dict:
    run_dir = RunDir(cfg.run_dir)
    manifest = read_manifest(run_dir.manifest)
    subword = manifest["files"].get("subword", "sentencepiece")
    if subword != "sentencepiece":
        # The export's translator segments with sentencepiece only (ct2_translator.py).
        raise MoeMtError(
            f"{run_dir.manifest}: data.subword={subword}: moemt export serves sentencepiece "
            "runs only; evaluate this run with eval.engine=fairseq"
        )
    first = trained_directions(manifest)[0]
    # Decoding options do not matter here: the translator is only the loaded model and task.
    direction = (first.src, first.tgt)
    translator = Translator.load(
        run_dir.root, chosen.path, DecodeOptions(), families.eval_overrides(cfg.eval), direction
    )
    dense = dense_model(
        translator.models[0], translator.arch, translator.task, chosen.path,
        merge_method(cfg), run_dir.data / "bin",
    )  # fmt: skip
    spec = transformer_spec(dense.model, translator.task)
    args = dense.model.args
    spm_files = manifest["files"]["spm"]
    with building_dir(out_dir) as tmp:
        save_spec(spec, tmp, cfg.eval.quantization)
        copied = {}
        for lang, name in spm_files.items():
            target = Path(name).name
            if target not in copied.values():
                shutil.copyfile(run_dir.data / name, tmp / target)
            copied[lang] = target
        info = {
            "format": EXPORT_FORMAT,
            "engine": "ctranslate2",
            "source_run": str(run_dir.root.resolve()),
            "checkpoint": {**chosen.as_dict(), "sha256": inputs["checkpoint_sha256"]},
            "architecture": {
                "arch": dense.arch,
                "family": dense.family,
                "encoder_layers": args.encoder_layers,
                "decoder_layers": args.decoder_layers,
                "embed_dim": args.encoder_embed_dim,
                "ffn_embed_dim": args.encoder_ffn_embed_dim,
                "attention_heads": args.encoder_attention_heads,
                "activation_fn": getattr(args, "activation_fn", "relu"),
                "normalize_before": bool(args.encoder_normalize_before),
                "max_source_positions": args.max_source_positions,
                "max_target_positions": args.max_target_positions,
                # the exported (dense) model's: one expert per MoE layer (single_expert)
                "parameters": count_parameters(dense.model),
            },
            "single_expert": dense.single_expert,
            # a merged MoE (eval.merge_experts): a different model, to be scored
            "merge": dense.merge,
            "quantization": cfg.eval.quantization,
            "languages": _languages(translator, manifest),
            "spm": copied,
            # every file's size, checked before reuse and before loading (export_problem)
            "files": export_files(tmp),
            "inputs": inputs,
            **provenance(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(tmp / EXPORT_JSON, info)
    return info


def _languages(translator: Translator, manifest: dict) -> dict:
    """Directions, and for multilingual runs the language tokens and where they go: the encoder's
    (``src``: the source language's, ``tgt``: the target's) before the source, the decoder's
    (the target language's) as the forced first target token."""
    info = {
        "directions": list(manifest["languages"]["directions"]),
        "multilingual": bool(manifest.get("multilingual")),
        "tokens": {},
        "encoder_langtok": None,
        "decoder_langtok": None,
    }
    if translator.multilingual:
        from fairseq.data.multilingual.multilingual_utils import get_lang_tok

        args = translator.task.args
        encoder_spec, decoder_spec = args.langtoks["main"]
        style = args.lang_tok_style
        info.update(
            tokens={lang: get_lang_tok(lang, style) for lang in translator.task.langs},
            encoder_langtok=encoder_spec or None,
            decoder_langtok=decoder_spec or None,
        )
    return info
