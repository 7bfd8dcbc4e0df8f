"""``moemt prep``: parallel text in, binarised fairseq data out, in ``RUN_DIR/data/``.

One build for one direction or many (:mod:`.corpora` says which corpora serve the run's
directions; a single pair is one corpus). Order of work (cheap checks first, so that bad input
fails before compute is spent): line counts and validation of every valid/test split, then
validation and cleaning of every training split (chunks of lines on ``data.workers``
processes, :mod:`moe_mt.data_prep.clean_files`), sentencepiece on the cleaned training text,
encoding, dictionary, binarisation, and the manifest. Everything is built in a
temporary sibling of ``data/`` and renamed into place at the end.

Vocabulary: ``data.spm.joint`` trains one sentencepiece model on all cleaned training text (else
one per language, on that language's text of every corpus); ``data.joined_dictionary`` builds
one fairseq dictionary (else one per language), written as ``dict.<lang>.txt`` for every
language. Multilingual runs need both joint (fairseq's ``translation_multi_simple_epoch`` reads
one dictionary and adds the ``__<lang>__`` tokens itself when it loads it). ``bin/`` holds
``<split>.<a>-<b>.<lang>.{bin,idx}`` per corpus: fairseq's ``translation`` task reads the one
corpus of a single pair by that name, the multilingual task finds direction ``b-a`` in the
``a-b`` files (``MultilingualDatasetManager.load_lang_dataset``).

Layout of ``data/`` (the manifest's schema: :mod:`moe_mt.workflows.common.manifest`)::

    manifest.json                 per corpus: inputs (sha256), line counts per split and filter
    text/<a>-<b>/<split>.<lang>   train: cleaned; valid/test: byte copies (the references)
    spm.model | spm.<lang>.model  sentencepiece model(s) (+ .vocab)
    bin/                          dict.<lang>.txt, <split>.<a>-<b>.<lang>.{bin,idx}
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.progress import Progress

from moe_mt.config import run_config_text, unresolved
from moe_mt.data_prep import binarize, clean, clean_files, segmentation, spm, validate
from moe_mt.data_prep.download import file_sha256
from moe_mt.errors import MoeMtError
from moe_mt.provenance import package_versions
from moe_mt.workflows.common.differences import differences
from moe_mt.workflows.common.manifest import (
    MANIFEST_FORMAT,
    directions,
    languages,
    prepared_data_config,
    upgraded,
)
from moe_mt.workflows.common.progress import progress_bar
from moe_mt.workflows.common.rundir import (
    RunDir,
    atomic_write_json,
    atomic_write_text,
    building_dir,
)
from moe_mt.workflows.prep import corpora

ENCODE_CHUNK = 2000


@dataclass
class PrepResult:
    run_dir: Path
    manifest: dict
    up_to_date: bool  # True when nothing had to be done


def prep(cfg: DictConfig, console: Console | None = None, overwrite: bool = False) -> PrepResult:
    """Run the data preparation of ``cfg`` into ``cfg.run_dir``; a no-op when up to date.

    Data that checkpoints were trained on are not replaced by other data (another config, other
    inputs or tools) unless ``overwrite``: the checkpoints would no longer fit them.
    """
    console = console or Console(stderr=True)
    run_dir = RunDir(cfg.run_dir)
    with run_dir.locked():
        # Local files or registry corpora fetched into the cache (lowercased copies with
        # data.lowercase): everything below treats them alike.
        segmentation.check_subword(cfg.data)
        files = corpora.input_files(cfg.data)
        inputs = {
            split: {lang: {"path": str(p), "sha256": file_sha256(p)} for lang, p in langs.items()}
            for split, langs in files.items()
        }
        fingerprint = _fingerprint(cfg.data, inputs)
        existing = _read_manifest(run_dir.manifest)
        if (
            existing is not None
            and existing.get("fingerprint") == fingerprint
            and not _missing_files(run_dir.data, existing)
            and not _damaged(run_dir.data)
        ):
            atomic_write_text(run_dir.config, run_config_text(cfg))
            return PrepResult(run_dir.root, existing, up_to_date=True)
        if existing is not None and not overwrite:
            _guard_trained_data(run_dir, existing, cfg.data, inputs)
        if existing is None and not overwrite and _has_checkpoints(run_dir):
            # Without a readable manifest nothing says which data the checkpoints were trained
            # on: replacing them could give the run another vocabulary without a word.
            raise MoeMtError(
                f"{run_dir.manifest}: missing or unreadable, and {run_dir.checkpoints} holds "
                "checkpoints trained on these data; use --overwrite to prepare them anyway, or "
                "another run_dir"
            )

        started = time.time()
        with building_dir(run_dir.data) as tmp, progress_bar(console) as progress:
            manifest = build(cfg.data, files, inputs, tmp, progress)
            manifest["fingerprint"] = fingerprint
            # Provenance: the data keys written as interpolations (config holds their values).
            written = {k: v for k, v in unresolved(cfg).items() if k.startswith("data.")}
            if written:
                manifest["unresolved"] = written
            manifest["seconds"] = round(time.time() - started, 2)
            # Written last: a data/ directory with a manifest is a complete one.
            atomic_write_json(tmp / "manifest.json", manifest)
        atomic_write_text(run_dir.config, run_config_text(cfg))
        return PrepResult(run_dir.root, manifest, up_to_date=False)


#: What prep may change in a run with checkpoints: the test sets (and the zero-shot directions
#: tested on them) are not part of what the model was trained or validated on.
TEST_ONLY_DATA_KEYS = ("data.test", "data.zero_shot")
TRAINED_SPLITS = ("train", "valid")


def _guard_trained_data(run_dir: RunDir, existing: dict, data_cfg, inputs: dict) -> None:
    """Refuse to replace prepared data that the run's checkpoints were trained on (another
    vocabulary would no longer fit them); say what changed, as train's resume guard does
    (``key: old -> new``). Test sets may change."""
    if not _has_checkpoints(run_dir):
        return
    changes = differences(
        existing.get("config", {}),
        prepared_data_config(data_cfg),
        "data.",
        skip=lambda key: any(key == k or key.startswith(k + ".") for k in TEST_ONLY_DATA_KEYS),
    )
    changes += _changed_inputs(existing, inputs)
    tools = _tools(data_cfg)
    before, now = existing.get("versions", {}), package_versions()
    changes += [
        f"{t}: {before[t]!r} -> {now[t]!r}" for t in tools if t in before and before[t] != now[t]
    ]
    if changes:
        raise MoeMtError(
            f"{run_dir.data}: the checkpoints in {run_dir.checkpoints} were trained on these "
            f"data, and prep would replace them ({'; '.join(changes)}); use --overwrite to "
            "prepare them anyway, or another run_dir"
        )


def _has_checkpoints(run_dir: RunDir) -> bool:
    return run_dir.checkpoints.is_dir() and any(run_dir.checkpoints.glob("*.pt"))


def _changed_inputs(existing: dict, inputs: dict) -> list[str]:
    """``PATH: changed (sha256)`` for each train or valid input file whose checksum is not the
    manifest's."""
    before = {}
    for corpus_name, corpus in upgraded(existing).get("corpora", {}).items():
        for split, langs in corpus.get("inputs", {}).items():
            for lang, info in langs.items():
                before[f"{corpus_name}/{split}", lang] = info.get("sha256")
    changed = []
    for split, langs in inputs.items():
        if split.rpartition("/")[2] not in TRAINED_SPLITS:
            continue
        for lang, info in langs.items():
            if before.get((split, lang)) != info["sha256"]:
                changed.append(f"{info['path']}: changed (sha256)")
    return changed


def _fingerprint(data_cfg: DictConfig, inputs: dict) -> str:
    versions = package_versions()
    payload = {
        "format": MANIFEST_FORMAT,
        "data": prepared_data_config(data_cfg),
        "inputs": {
            s: {lang: v["sha256"] for lang, v in langs.items()} for s, langs in inputs.items()
        },
        "tools": {k: versions[k] for k in _tools(data_cfg)},
    }
    if data_cfg.subword == "bpe" and data_cfg.bpe.codes is not None:
        payload["bpe_codes"] = file_sha256(Path(data_cfg.bpe.codes))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _missing_files(data_dir: Path, manifest: dict) -> list[str]:
    """The segmentation files and dictionaries a manifest names that are gone (deleted by hand):
    such data are rebuilt, not called up to date."""
    files = manifest.get("files") or {}
    names = [*(files.get("spm") or {}).values(), *(files.get("dictionaries") or {}).values()]
    if files.get("bpe_codes"):
        names.append(files["bpe_codes"])
    return [name for name in dict.fromkeys(names) if not (data_dir / name).is_file()]


def _damaged(data_dir: Path) -> bool:
    """Whether a dictionary or binarised split is damaged (cut short): such data are rebuilt,
    as the other commands' one-line error advises (``check_prepared``)."""
    from moe_mt.workflows.common.vocabulary import check_prepared

    try:
        check_prepared(data_dir / "bin")
    except MoeMtError:
        return True
    return False


def _tools(data_cfg) -> tuple[str, ...]:
    """The packages whose version the prepared data depend on."""
    if data_cfg.subword == "sentencepiece":
        return ("fairseq", "sentencepiece")
    if data_cfg.subword == "none":
        return ("fairseq",)
    moses = ("sacremoses",) if data_cfg.moses else ()
    return ("fairseq", "subword-nmt", *moses)


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build(data_cfg, files, inputs, out: Path, progress: Progress) -> dict:
    """Prepare every corpus of the run into ``out`` (the building ``data/``); the manifest."""
    dirs = directions(data_cfg)
    names = corpora.corpora(dirs)
    langs = languages(dirs)
    text_dir, work_dir, bin_dir = out / "text", out / "pieces", out / "bin"
    for d in (text_dir, work_dir, bin_dir):
        d.mkdir()
    splits: dict[str, dict[str, dict]] = {}
    seconds: dict[str, float] = {}  # per stage, so that a slow one shows in the manifest
    stage = functools.partial(_stage, seconds)
    workers = _workers(data_cfg)
    # valid/test of every corpus first: small, and any problem there is fatal.
    with stage("validate_clean"):
        _check_and_clean(data_cfg, files, names, splits, text_dir, work_dir, progress)

    with stage("subwords"):
        subword_files, encoders = _segmenters(data_cfg, text_dir, work_dir, names, out, langs)
    with stage("encode"):
        for name, pair in names.items():
            for split, info in splits[name].items():
                for lang in pair:
                    file = f"{name}/{split}.{lang}"
                    encode_file(
                        encoders[lang],
                        text_dir / file,
                        work_dir / file,
                        info["lines"]["kept"],
                        progress,
                        f"encode {file}",
                    )

    with stage("dictionary"):
        dictionaries = _dictionaries(
            data_cfg, _train_files(work_dir, names), bin_dir, langs, workers
        )
    with stage("binarise"):
        for name, pair in names.items():
            for split, info in splits[name].items():
                info["tokens"] = {
                    lang: binarise_file(
                        work_dir / name / f"{split}.{lang}",
                        dictionaries[lang],
                        bin_dir / f"{split}.{name}.{lang}",
                        workers,
                        progress,
                        f"binarise {name} {split}.{lang}",
                    )
                    for lang in pair
                }
    shutil.rmtree(work_dir)

    # Zero-shot pairs that no trained corpus holds: their test text only (eval reads text/;
    # nothing of them is binarised, so training cannot see them).
    test_only = corpora.zero_shot_corpora(data_cfg) if data_cfg.pairs else {}
    with stage("validate_clean"):
        for name, pair in test_only.items():
            (text_dir / name).mkdir()
            splits[name] = {
                "test": check_and_copy_split(
                    files[f"{name}/test"],
                    _paths(text_dir / name, "test", pair),
                    pair,
                    data_cfg.max_line_chars,
                )
            }
    zero_shot = corpora.zero_shot_directions(data_cfg) if data_cfg.pairs else []

    def in_pair(found: list, pair) -> list[str]:
        return [d.name for d in found if {d.src, d.tgt} == set(pair)]

    return {
        "format": MANIFEST_FORMAT,
        "multilingual": bool(data_cfg.pairs),  # trained with language tokens
        "languages": {
            "langs": langs,
            "directions": [d.name for d in dirs],
            "zero_shot": [d.name for d in zero_shot],
        },
        "corpora": {
            name: {
                "languages": list(pair),
                "directions": in_pair(dirs, pair),
                "zero_shot": in_pair(zero_shot, pair),
                "test_only": name in test_only,
                "text": f"text/{name}",
                "inputs": {s: inputs[f"{name}/{s}"] for s in splits[name]},
                "splits": splits[name],
            }
            for name, pair in {**names, **test_only}.items()
        },
        "files": {
            "text": "text",
            "bin": "bin",
            **subword_files,
            "dictionaries": {lang: f"bin/dict.{lang}.txt" for lang in langs},
        },
        "dictionary_size": {lang: len(d) for lang, d in dictionaries.items()},
        "stage_seconds": seconds,
        "joined_dictionary": bool(data_cfg.joined_dictionary),
        "config": prepared_data_config(data_cfg),
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@contextlib.contextmanager
def _stage(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall-clock seconds of the ``with`` block to ``seconds[name]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - started, 3)


def _check_and_clean(data_cfg, files, names, splits, text_dir: Path, work_dir: Path, progress):
    """Check and copy every valid/test split (fatal problems first), then validate and clean
    every training split; fills ``splits`` with their manifest entries."""
    for name, pair in names.items():
        (text_dir / name).mkdir()
        (work_dir / name).mkdir()
        splits[name] = {"train": {}}  # filled after valid/test, kept first in order
        for split in ("valid", "test"):
            if f"{name}/{split}" in files:
                splits[name][split] = check_and_copy_split(
                    files[f"{name}/{split}"],
                    _paths(text_dir / name, split, pair),
                    pair,
                    data_cfg.max_line_chars,
                )
    for name, pair in names.items():
        splits[name]["train"] = clean_train(
            data_cfg, files[f"{name}/train"], _paths(text_dir / name, "train", pair), pair, progress
        )


def _train_files(root: Path, names: dict[str, tuple[str, str]]) -> list[tuple[str, Path]]:
    """``(lang, training file)`` of every corpus under ``root`` (text or pieces), in corpus order,
    each corpus' languages in its own order (``train.<src>``, ``train.<tgt>`` for one pair)."""
    return [
        (lang, path)
        for name, pair in names.items()
        for lang, path in _paths(root / name, "train", pair).items()
    ]


def _paths(directory: Path, split: str, pair: tuple[str, str]) -> dict[str, Path]:
    return {lang: directory / f"{split}.{lang}" for lang in pair}


def check_and_copy_split(
    inputs: dict[str, Path], dests: dict[str, Path], langs: tuple[str, str], max_line_chars: int
) -> dict:
    """A valid/test split: every problem is fatal; the files are copied byte for byte (they are
    the references of scoring). Returns the split's manifest entry."""
    src, tgt = langs
    counts = validate.PairCounts()
    for _ in validate.iter_valid_pairs(inputs[src], inputs[tgt], max_line_chars, False, counts):
        pass
    if counts.raw == 0:  # fairseq cannot validate on (or score) an empty split: say it now
        raise MoeMtError(
            f"{inputs[src]}: empty: a valid or test split needs at least one sentence pair"
        )
    for lang in langs:
        shutil.copyfile(inputs[lang], dests[lang])
    return {"lines": {"raw": counts.raw, "kept": counts.raw}, "dropped": {}}


def clean_train(
    data_cfg, inputs: dict[str, Path], dests: dict[str, Path], langs: tuple[str, str], progress
) -> dict:
    """Validate and clean a training pair of files into ``dests`` on ``data.workers`` processes;
    returns its manifest entry (line counts after each filter, drops by reason). No surviving
    pair is an error."""
    src, tgt = langs
    task = progress.add_task(f"validate + clean train {src}-{tgt}", total=None)
    counts, cleaned, kept = clean_files.clean_files(
        (inputs[src], inputs[tgt]),
        (dests[src], dests[tgt]),
        data_cfg.max_line_chars,
        clean.Filters.from_config(data_cfg.clean),
        _workers(data_cfg),
        lambda read, total: progress.update(task, total=total, advance=read),
    )
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


def _segmenters(data_cfg, text_dir: Path, work_dir: Path, names, out: Path, langs):
    """Train or copy what ``data.subword`` segments with into ``out``; return the manifest's
    entries for it (``files.spm``, ``files.subword``, ...) and ``{lang: encoder}``."""
    workers = _workers(data_cfg)
    if data_cfg.subword == "sentencepiece":
        spm_models = _train_spm(data_cfg, _train_files(text_dir, names), out, langs)
        by_model = {m: spm.Encoder(out / m, threads=workers) for m in set(spm_models.values())}
        encoders = {lang: by_model[spm_models[lang]] for lang in langs}
        return {"spm": spm_models, "subword": "sentencepiece", "moses": False}, encoders
    files = {"spm": {}, "subword": data_cfg.subword, "moses": bool(data_cfg.moses)}
    codes = None
    if data_cfg.subword == "bpe":
        codes = out / "bpe.codes"
        if data_cfg.bpe.codes is not None:
            shutil.copyfile(data_cfg.bpe.codes, codes)
        else:
            tokenised = []
            for lang, path in _train_files(text_dir, names):
                dest = work_dir / f"{path.parent.name}.{lang}.tok"
                tokenizer = segmentation.Segmenter(lang, data_cfg.moses, None)
                with open(path, encoding="utf-8") as f, open(dest, "w", encoding="utf-8") as o:
                    o.writelines(tokenizer.tokenize(line) + "\n" for line in f)
                tokenised.append(dest)
            segmentation.learn_joint_bpe(tokenised, data_cfg.bpe.merges, codes)
        files["bpe_codes"] = codes.name
        files["bpe_codes_sha256"] = file_sha256(codes)
    encoders = {
        lang: segmentation.LineEncoder(segmentation.Segmenter(lang, data_cfg.moses, codes))
        for lang in langs
    }
    return files, encoders


def _train_spm(data_cfg, train_text: list[tuple[str, Path]], out: Path, langs) -> dict[str, str]:
    """Train the sentencepiece model(s); return ``{lang: model file name}``."""
    if data_cfg.spm.joint:
        spm.train_spm([path for _, path in train_text], out / "spm", data_cfg.spm)
        return dict.fromkeys(langs, "spm.model")
    for lang in langs:
        own = [path for file_lang, path in train_text if file_lang == lang]
        spm.train_spm(own, out / f"spm.{lang}", data_cfg.spm)
    return {lang: f"spm.{lang}.model" for lang in langs}


def encode_file(encoder, source: Path, dest: Path, total: int, progress, label):
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


def binarise_file(pieces: Path, dictionary, out_prefix: Path, workers: int, progress, label):
    """fairseq's binary ``<out_prefix>.{bin,idx}`` of a piece file; its token counts. The
    workers report when done, so progress is per file."""
    task = progress.add_task(label, total=1)
    stats = binarize.binarize_file(pieces, dictionary, out_prefix, workers)
    progress.remove_task(task)
    return {"tokens": stats.tokens, "unknown": stats.unknown}


def _workers(data_cfg) -> int:
    """``data.workers``, or the machine's cores."""
    if data_cfg.workers is None:
        return os.cpu_count() or 1
    if data_cfg.workers < 1:
        raise MoeMtError(f"data.workers={data_cfg.workers}: must be at least 1 (null: the cores)")
    return int(data_cfg.workers)


def _dictionaries(data_cfg, train_pieces, bin_dir: Path, langs, workers: int) -> dict:
    """``{lang: fairseq dictionary}`` (from ``(lang, piece file)`` pairs), each saved as
    ``bin/dict.<lang>.txt``."""
    if data_cfg.joined_dictionary:
        joined = binarize.build_dictionary([path for _, path in train_pieces], workers)
        dictionaries = dict.fromkeys(langs, joined)
    else:
        dictionaries = {
            lang: binarize.build_dictionary(
                [p for file_lang, p in train_pieces if file_lang == lang], workers
            )
            for lang in langs
        }
    for lang, dictionary in dictionaries.items():
        dictionary.save(str(bin_dir / f"dict.{lang}.txt"))
    return dictionaries
