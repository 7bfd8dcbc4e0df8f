"""``moemt prep --dry-run``: what prep would download and produce, with nothing written.

For a registry corpus (``data.source``) the plan lists every download (URLs, size where known,
the published sha256 or "unverified", the cache path and whether it is already there), the
corpus files the cache would hold, and for ``data.lowercase`` where the lowercased copies go.
For local files it lists each input with its size. Then the run directory's files (text copies,
sentencepiece model(s), dictionaries, binarised splits), the vocabulary and the splits.
Nothing is created: not the run directory, not the cache (the plan only reads them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from moe_mt.data_prep import download as dl
from moe_mt.data_prep import fetch_source
from moe_mt.data_prep.sources import Source
from moe_mt.workflows.common.manifest import directions
from moe_mt.workflows.prep import corpora

SPLITS = fetch_source.SPLITS


@dataclass
class PrepPlan:
    run_dir: Path
    lines: list[str] = field(default_factory=list)  # the report, one line each

    def add(self, text: str = "") -> None:
        self.lines.append(text)


def prep_plan(cfg: DictConfig) -> PrepPlan:
    """The dry-run report of ``moemt prep`` for ``cfg`` (reads the filesystem, writes nothing)."""
    data = cfg.data
    plan = PrepPlan(Path(cfg.run_dir))
    plan.add(f"run directory: {plan.run_dir}")
    manifest = plan.run_dir / "data" / "manifest.json"
    if manifest.is_file():
        plan.add(f"  {manifest} exists: prep reruns only if inputs or data config changed")
    if data.get("pairs"):
        splits = _multilingual_inputs(cfg, plan)
    else:
        fetch_source.check_single_pair(data)
        found = _source_inputs(data, plan) if data.source else _local_inputs(data, plan)
        splits = {f"{data.src}-{data.tgt}/{split}": pair for split, pair in found.items()}
    text_only = set()
    if data.get("pairs"):  # test-only corpora of zero-shot directions: text, nothing binarised
        text_only = {f"{name}/test" for name in corpora.zero_shot_corpora(data)}
    _produced(data, splits, plan, text_only)
    plan.add("dry run: nothing was downloaded or written")
    return plan


def _source_inputs(data: DictConfig, plan: PrepPlan) -> dict[str, tuple[str, str]]:
    source = fetch_source.registry_source(data)
    _describe_source(source, data, plan, set())
    langs = (data.src, data.tgt)
    return {split: langs for split in SPLITS if split in source.split_names}


def _describe_source(source: Source, data: DictConfig, plan: PrepPlan, listed: set[str]) -> None:
    """The downloads and corpus files of ``source``; archives in ``listed`` (already shown for
    another source) are named only, and the ones shown here are added to it."""
    cache = fetch_source.cache_dir(data)
    corpus_dir = cache / "corpora" / source.name
    plan.add(f"source: {source.name}: {source.description}")
    plan.add(f"  license: {source.license}")
    plan.add(f"  cache: {cache}")
    downloads = fetch_source.download_plan(source, cache)
    todo = [d for d in downloads if not d.cached and d.filename not in listed]
    known = [d.size for d in todo if d.size is not None]
    total = _size(sum(known)) if known else ""
    if len(known) < len(todo):
        total = f"{total} + sizes unknown" if known else "sizes unknown"
    plan.add(
        f"downloads: {len(downloads)} files, {len(todo)} to fetch" + (f" ({total})" if todo else "")
    )
    for item in downloads:
        if item.filename in listed:
            plan.add(f"  {item.filename} [{', '.join(item.used_for)}] (listed above)")
            continue
        listed.add(item.filename)
        state = "cached" if item.cached else "not cached"
        plan.add(f"  {item.filename} [{', '.join(item.used_for)}] {_size(item.size)}, {state}")
        for url in item.urls:
            plan.add(f"    url: {url}")
        plan.add(f"    checksum: {item.checksum}")
        plan.add(f"    path: {item.path}")
    complete = (corpus_dir / dl.CORPUS_MARKER).is_file()
    plan.add(f"corpus files: {corpus_dir} ({'complete' if complete else 'to build'})")
    for split in source.split_names:
        held = [h for h in source.holdouts if h.split == split]
        how = (
            f"held out: lines n of {held[0].from_split} with n % {held[0].every} == 0"
            if held
            else f"{len(source.splits[split])} registry part(s)"
        )
        names = ", ".join(f"{split}.{lang}" for lang in source.languages)
        plan.add(f"  {names} ({how})")
    if data.lowercase:
        plan.add(f"lowercased copies: {cache / fetch_source.LOWERCASED_DIR}")


def _local_inputs(data: DictConfig, plan: PrepPlan) -> dict[str, tuple[str, str]]:
    plan.add("inputs: local files")
    files = fetch_source.local_files(data)
    for split, langs in files.items():
        for path in langs.values():
            size = _size(path.stat().st_size) if path.is_file() else "MISSING"
            plan.add(f"  {split}: {path} ({size})")
    if data.lowercase:
        cache = fetch_source.cache_dir(data) / fetch_source.LOWERCASED_DIR
        plan.add(f"lowercased copies: {cache}")
    return {split: (data.src, data.tgt) for split in files}


def _multilingual_inputs(cfg: DictConfig, plan: PrepPlan) -> dict[str, tuple[str, str]]:
    data = cfg.data
    sources = corpora.check_inputs(data)
    trained = corpora.corpora(directions(data))
    origin = "registry corpora" if sources else "local files"
    if sources and not all(name in sources for name in trained):
        origin = "registry corpora and local files"
    plan.add(f"inputs: {origin}, multilingual ({', '.join(data.pairs)})")
    zero_shot = corpora.zero_shot_directions(data)
    if zero_shot:
        plan.add(f"zero-shot directions, tested only: {', '.join(d.name for d in zero_shot)}")
    files = corpora.local_files(data, sources)
    for key, langs in files.items():
        for path in langs.values():
            size = _size(path.stat().st_size) if path.is_file() else "MISSING"
            plan.add(f"  {key}: {path} ({size})")
    listed: set[str] = set()
    for name, source in sources.items():
        plan.add(f"pair {name}:")
        _describe_source(source, data, plan, listed)
    if data.lowercase and not sources:
        cache = fetch_source.cache_dir(data) / fetch_source.LOWERCASED_DIR
        plan.add(f"lowercased copies: {cache}")
    splits = {}
    test_only = corpora.zero_shot_corpora(data)
    for name, pair in corpora.all_corpora(data).items():
        for split in ("test",) if name in test_only else SPLITS:
            from_source = name in sources and split in sources[name].split_names
            if f"{name}/{split}" in files or (from_source and (split != "test" or not data.test)):
                splits[f"{name}/{split}"] = pair
    return splits


def _produced(
    data: DictConfig, splits: dict[str, tuple[str, str]], plan: PrepPlan, text_only: set[str]
) -> None:
    spm_cfg = data.spm
    all_langs = sorted({lang for langs in splits.values() for lang in langs})
    joint = "joint" if spm_cfg.joint else "per language"
    subwords = {
        "sentencepiece": f"sentencepiece {spm_cfg.model_type}, {spm_cfg.vocab_size:,} pieces, "
        f"{joint}",
        "bpe": ("Moses tokens, " if data.moses else "")
        + (
            f"subword-nmt BPE from {data.bpe.codes}"
            if data.bpe.codes
            else f"subword-nmt BPE, {data.bpe.merges:,} joint merges"
        ),
        "none": "the files' own tokens (segmented already)",
    }.get(data.subword, data.subword)
    plan.add(
        f"vocabulary: {subwords}; {'one joined' if data.joined_dictionary else 'one per language'}"
        f" fairseq dictionary; lowercase: {bool(data.lowercase)}"
    )
    plan.add(f"splits: {', '.join(splits)} (train cleaned; valid/test copied as references)")
    data_dir = plan.run_dir / "data"
    plan.add("would write:")
    plan.add(f"  {plan.run_dir / 'config.yaml'}")
    plan.add(f"  {data_dir / 'manifest.json'}")
    if data.subword == "sentencepiece":
        models = ["spm"] if spm_cfg.joint else [f"spm.{lang}" for lang in all_langs]
        for model in models:
            plan.add(f"  {data_dir / model}.model, .vocab")
    elif data.subword == "bpe":
        plan.add(f"  {data_dir / 'bpe.codes'}")
    for lang in all_langs:
        plan.add(f"  {data_dir / 'bin' / f'dict.{lang}.txt'}")
    for key, (a, b) in splits.items():
        corpus, _, split = key.rpartition("/")
        text = data_dir / "text" / corpus
        for lang in (a, b):
            plan.add(f"  {text / f'{split}.{lang}'}")
            if key not in text_only:
                plan.add(f"  {data_dir / 'bin' / f'{split}.{a}-{b}.{lang}'}.bin, .idx")


def _size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
