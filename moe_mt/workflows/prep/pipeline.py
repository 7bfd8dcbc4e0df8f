"""``moemt prep``: local parallel text in, binarised fairseq data out, in ``RUN_DIR/data/``.

Order of work (cheap checks first, so that bad input fails before compute is spent):
line counts and validation of valid/test, then validation and cleaning of train in one pass,
sentencepiece on the cleaned train text, encoding, dictionary, binarisation, and the manifest.
Everything is built in a temporary sibling of ``data/`` and renamed into place at the end.

Layout of ``data/``::

    manifest.json            line counts per filter, input sha256, paths, tool versions
    text/<split>.<lang>      train: cleaned; valid/test: byte copies (the untouched references)
    spm.model | spm.<lang>.model   sentencepiece model(s) (+ .vocab)
    bin/                     fairseq data-bin: dict.<lang>.txt, <split>.<src>-<tgt>.<lang>.{bin,idx}
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import Progress

from moe_mt.config import to_yaml
from moe_mt.data_prep import binarize, clean, fetch_source, spm, validate
from moe_mt.data_prep.download import file_sha256
from moe_mt.errors import MoeMtError
from moe_mt.provenance import package_versions
from moe_mt.workflows.common.progress import progress_bar
from moe_mt.workflows.common.rundir import (
    RunDir,
    atomic_write_json,
    atomic_write_text,
    building_dir,
)

MANIFEST_FORMAT = 1
SPLITS = ("train", "valid", "test")
ENCODE_CHUNK = 2000


@dataclass
class PrepResult:
    run_dir: Path
    manifest: dict
    up_to_date: bool  # True when nothing had to be done


def split_files(data_cfg: DictConfig) -> dict[str, dict[str, Path]]:
    """``{split: {lang: path}}`` of the configured inputs; a missing file is an error."""
    files = {}
    for split in SPLITS:
        prefix = data_cfg[split]
        if prefix is None:
            continue
        files[split] = {}
        for lang in (data_cfg.src, data_cfg.tgt):
            path = Path(f"{prefix}.{lang}")
            if not path.is_file():
                raise MoeMtError(f"{path}: no such file (data.{split}={prefix})")
            files[split][lang] = path
    return files


def prep(cfg: DictConfig, console: Console | None = None) -> PrepResult:
    """Run the data preparation of ``cfg`` into ``cfg.run_dir``; a no-op when up to date."""
    console = console or Console(stderr=True)
    run_dir = RunDir(cfg.run_dir)
    with run_dir.locked():
        if cfg.data.pairs:  # many directions, one joint vocabulary (multilingual.py)
            from moe_mt.workflows.prep import corpora as multilingual

            files, build = multilingual.input_files(cfg.data), multilingual.build
        else:
            # Local files, or a registry corpus fetched into the cache (data.source); lowercased
            # copies with data.lowercase. Everything below treats them alike.
            files, build = fetch_source.input_files(cfg.data, local=split_files), _build
        inputs = {
            split: {lang: {"path": str(p), "sha256": file_sha256(p)} for lang, p in langs.items()}
            for split, langs in files.items()
        }
        fingerprint = _fingerprint(cfg.data, inputs)
        existing = _read_manifest(run_dir.manifest)
        if existing is not None and existing.get("fingerprint") == fingerprint:
            atomic_write_text(run_dir.config, to_yaml(cfg))
            return PrepResult(run_dir.root, existing, up_to_date=True)

        started = time.time()
        with building_dir(run_dir.data) as tmp, progress_bar(console) as progress:
            manifest = build(cfg.data, files, inputs, tmp, progress)
            manifest["fingerprint"] = fingerprint
            manifest["seconds"] = round(time.time() - started, 2)
            # Written last: a data/ directory with a manifest is a complete one.
            atomic_write_json(tmp / "manifest.json", manifest)
        atomic_write_text(run_dir.config, to_yaml(cfg))
        return PrepResult(run_dir.root, manifest, up_to_date=False)


def _fingerprint(data_cfg: DictConfig, inputs: dict) -> str:
    versions = package_versions()
    payload = {
        "format": MANIFEST_FORMAT,
        "data": OmegaConf.to_container(data_cfg),
        "inputs": {
            s: {lang: v["sha256"] for lang, v in langs.items()} for s, langs in inputs.items()
        },
        "tools": {k: versions[k] for k in ("fairseq", "sentencepiece")},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _build(data_cfg, files, inputs, out: Path, progress: Progress) -> dict:
    src, tgt = data_cfg.src, data_cfg.tgt
    text_dir, work_dir, bin_dir = out / "text", out / "pieces", out / "bin"
    for d in (text_dir, work_dir, bin_dir):
        d.mkdir()

    splits: dict[str, dict] = {"train": {}}  # filled after valid/test, kept first in order
    # valid/test first: small, and any problem there is fatal.
    for split in (s for s in SPLITS if s in files and s != "train"):
        splits[split] = check_and_copy_split(
            files[split], {lang: text_dir / f"{split}.{lang}" for lang in (src, tgt)},
            (src, tgt), data_cfg.max_line_chars,
        )  # fmt: skip
    splits["train"] = clean_train(
        data_cfg, files["train"], {lang: text_dir / f"train.{lang}" for lang in (src, tgt)},
        (src, tgt), progress,
    )  # fmt: skip

    spm_models = _train_spm(data_cfg, text_dir, out)
    encoders = {lang: spm.Encoder(out / model) for lang, model in spm_models.items()}
    for split in splits:
        for lang in (src, tgt):
            encode_file(
                encoders[lang],
                text_dir / f"{split}.{lang}",
                work_dir / f"{split}.{lang}",
                splits[split]["lines"]["kept"],
                progress,
                f"encode {split}.{lang}",
            )

    dictionaries = _dictionaries(data_cfg, work_dir, bin_dir)
    for split in splits:
        splits[split]["tokens"] = {
            lang: binarise_file(
                work_dir / f"{split}.{lang}",
                dictionaries[lang],
                bin_dir / f"{split}.{src}-{tgt}.{lang}",
                splits[split]["lines"]["kept"],
                progress,
                f"binarise {split}.{lang}",
            )
            for lang in (src, tgt)
        }
    shutil.rmtree(work_dir)

    return {
        "format": MANIFEST_FORMAT,
        "languages": {"src": src, "tgt": tgt},
        "inputs": inputs,
        "splits": splits,
        "files": {
            "text": "text",
            "bin": "bin",
            "spm": spm_models,
            "dictionaries": {lang: f"bin/dict.{lang}.txt" for lang in (src, tgt)},
        },
        "dictionary_size": {lang: len(d) for lang, d in dictionaries.items()},
        "joined_dictionary": bool(data_cfg.joined_dictionary),
        "config": OmegaConf.to_container(data_cfg),
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def check_and_copy_split(
    inputs: dict[str, Path], dests: dict[str, Path], langs: tuple[str, str], max_line_chars: int
) -> dict:
    """A valid/test split: every problem is fatal; the files are copied byte for byte (they are
    the references of scoring). Returns the split's manifest entry."""
    src, tgt = langs
    counts = validate.PairCounts()
    for _ in validate.iter_valid_pairs(inputs[src], inputs[tgt], max_line_chars, False, counts):
        pass
    for lang in langs:
        shutil.copyfile(inputs[lang], dests[lang])
    return {"lines": {"raw": counts.raw, "kept": counts.raw}, "dropped": {}}


def clean_train(
    data_cfg, inputs: dict[str, Path], dests: dict[str, Path], langs: tuple[str, str], progress
) -> dict:
    """Validate and clean a training pair of files into ``dests``; returns its manifest entry
    (line counts after each filter, drops by reason). No surviving pair is an error."""
    src, tgt = langs
    counts = validate.PairCounts()
    cleaned = Counter()
    total = validate.count_lines(inputs[src])
    task = progress.add_task(f"validate + clean train {src}-{tgt}", total=total)
    kept = 0
    pairs = validate.iter_valid_pairs(
        inputs[src], inputs[tgt], data_cfg.max_line_chars, True, counts
    )
    with (
        open(dests[src], "w", encoding="utf-8") as out_src,
        open(dests[tgt], "w", encoding="utf-8") as out_tgt,
    ):
        for s, t in clean.clean_pairs(pairs, data_cfg.clean, cleaned):
            out_src.write(s + "\n")
            out_tgt.write(t + "\n")
            kept += 1
            if kept % 1000 == 0:
                progress.update(task, completed=counts.raw)
    progress.remove_task(task)

    lines = {"raw": counts.raw}
    remaining = counts.raw
    # Counts after each step, in the order the steps are applied.
    for reason in validate.RECOVERABLE:
        remaining -= counts.dropped[reason]
    lines["after_validation"] = remaining
    for name in clean.FILTERS:
        remaining -= cleaned[name]
        lines[f"after_{name}"] = remaining
    lines["kept"] = kept
    assert remaining == kept, (remaining, kept)
    if kept == 0:
        raise MoeMtError(f"{inputs[src]}: no training pair survives validation and cleaning")
    dropped = {k: v for k, v in {**counts.dropped, **cleaned}.items() if v}
    return {"lines": lines, "dropped": dropped}


def _train_spm(data_cfg, text_dir: Path, out: Path) -> dict[str, str]:
    """Train the sentencepiece model(s); return ``{lang: model file name}``."""
    src, tgt = data_cfg.src, data_cfg.tgt
    if data_cfg.spm.joint:
        spm.train_spm(
            [text_dir / f"train.{src}", text_dir / f"train.{tgt}"], out / "spm", data_cfg.spm
        )
        return {src: "spm.model", tgt: "spm.model"}
    for lang in (src, tgt):
        spm.train_spm([text_dir / f"train.{lang}"], out / f"spm.{lang}", data_cfg.spm)
    return {lang: f"spm.{lang}.model" for lang in (src, tgt)}


def encode_file(encoder: spm.Encoder, source: Path, dest: Path, total: int, progress, label):
    """Write ``source``'s lines as space-separated pieces into ``dest``."""
    task = progress.add_task(label, total=total)
    with open(source, encoding="utf-8") as inp, open(dest, "w", encoding="utf-8") as out:
        chunk: list[str] = []
        for line in inp:
            chunk.append(line.rstrip("\n"))
            if len(chunk) == ENCODE_CHUNK:
                out.writelines(p + "\n" for p in encoder.encode(chunk))
                progress.advance(task, len(chunk))
                chunk = []
        if chunk:
            out.writelines(p + "\n" for p in encoder.encode(chunk))
    progress.remove_task(task)


def binarise_file(pieces: Path, dictionary, out_prefix: Path, total: int, progress, label) -> dict:
    """fairseq's binary ``<out_prefix>.{bin,idx}`` of a piece file; its token counts."""
    task = progress.add_task(label, total=total)
    stats = binarize.binarize_file(
        pieces, dictionary, out_prefix, on_line=lambda n: progress.advance(task, n)
    )
    progress.remove_task(task)
    return {"tokens": stats.tokens, "unknown": stats.unknown}


def _dictionaries(data_cfg, work_dir: Path, bin_dir: Path) -> dict:
    src, tgt = data_cfg.src, data_cfg.tgt
    if data_cfg.joined_dictionary:
        joined = binarize.build_dictionary([work_dir / f"train.{src}", work_dir / f"train.{tgt}"])
        dictionaries = {src: joined, tgt: joined}
    else:
        dictionaries = {
            lang: binarize.build_dictionary([work_dir / f"train.{lang}"]) for lang in (src, tgt)
        }
    for lang, dictionary in dictionaries.items():
        dictionary.save(str(bin_dir / f"dict.{lang}.txt"))
    return dictionaries
