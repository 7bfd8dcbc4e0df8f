"""English-centric many-to-many data: directions, their files, and ``moemt prep`` for them.

A multilingual recipe lists directions (``data.pairs: [en-de, de-en, en-fr, fr-en]``) instead of
``data.src``/``data.tgt``. One *corpus* serves both directions of a language pair: the files of
direction ``a-b`` are ``<prefix>.a`` and ``<prefix>.b``, where ``{pair}`` in a prefix is replaced
by ``a-b``, or by ``b-a`` where only those files exist (``tatoeba_en_xx/{pair}/train`` serves
en-de and de-en from ``en-de/``); a prefix without ``{pair}`` (FLORES-200 ``test.<lang>``, one
file per language, multi-way) serves every pair. A language pair may instead name a corpus of
the download registry (``data.sources: {en-de: iwslt17_multi_en_de, ...}``): prep fetches it
into the cache as ``data.source`` does for one pair, and takes its train and valid splits, and
its test split unless ``data.test`` gives a multi-way test set for every pair.

``data.zero_shot`` lists directions that are tested but never trained (de-it in an
English-centric run): a direction whose language pair no trained corpus holds gets a test-only
corpus (its test set copied into ``text/``, nothing binarised), from ``data.sources`` or
``data.test``; eval scores them and averages them apart from the trained directions.

Prep runs the single-pair steps of :mod:`moe_mt.workflows.prep.pipeline` on every corpus
(validation, cleaning of train, byte copies of valid/test), then trains one joint sentencepiece
model on all cleaned training text and builds one joint dictionary (fairseq's
``translation_multi_simple_epoch`` task wants one dictionary for all languages; it adds the
``__<lang>__`` tokens itself when it loads it), written as ``dict.<lang>.txt`` for every
language. ``bin/`` holds ``<split>.<a>-<b>.<lang>.{bin,idx}`` per corpus: the task's reader
finds direction ``b-a`` in the ``a-b`` files (``MultilingualDatasetManager.load_lang_dataset``).

Layout of ``data/``::

    manifest.json               per corpus: inputs (sha256), line counts per split and filter
    text/<a>-<b>/<split>.<lang> train: cleaned; valid/test: byte copies (the references)
    spm.model                   the joint sentencepiece model (+ .vocab)
    bin/                        dict.<lang>.txt (one dictionary), <split>.<a>-<b>.<lang>.{bin,idx}
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress

from moe_mt.data_prep import binarize, download, fetch_source, spm
from moe_mt.data_prep.sources import Source, SourceError, get_source
from moe_mt.errors import MoeMtError
from moe_mt.provenance import package_versions
from moe_mt.workflows.prep import pipeline as single

PLACEHOLDER = "{pair}"
_LANG = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class Direction:
    src: str
    tgt: str

    @property
    def name(self) -> str:
        return f"{self.src}-{self.tgt}"

    def __str__(self) -> str:
        return self.name


def parse_direction(text: str, key: str) -> Direction:
    """``"en-de"`` -> Direction; anything else is an error naming ``key``."""
    src, sep, tgt = str(text).partition("-")
    if not sep or not _LANG.fullmatch(src) or not _LANG.fullmatch(tgt):
        raise MoeMtError(f"{key}: '{text}' is not a direction of the form src-tgt (e.g. en-de)")
    if src == tgt:
        raise MoeMtError(f"{key}: '{text}' translates a language into itself")
    return Direction(src, tgt)


def directions(data_cfg: DictConfig) -> list[Direction]:
    """The directions of ``data.pairs``, in order, each once."""
    parsed = [parse_direction(p, "data.pairs") for p in data_cfg.pairs]
    seen = set()
    for d in parsed:
        if d in seen:
            raise MoeMtError(f"data.pairs: {d} is listed twice")
        seen.add(d)
    return parsed


def languages(dirs: list[Direction]) -> list[str]:
    """Every language of ``dirs``, sorted: the order of fairseq's ``--langs`` (stable, so that
    the language tokens keep their ids whichever order the pairs are listed in)."""
    return sorted({lang for d in dirs for lang in (d.src, d.tgt)})


def corpora(dirs: list[Direction]) -> dict[str, tuple[str, str]]:
    """``{corpus name: (a, b)}``: one corpus per language pair, named after its first listed
    direction (en-de and de-en share corpus ``en-de``)."""
    found: dict[frozenset, tuple[str, str]] = {}
    for d in dirs:
        found.setdefault(frozenset((d.src, d.tgt)), (d.src, d.tgt))
    return {f"{a}-{b}": (a, b) for a, b in found.values()}


def zero_shot_directions(data_cfg: DictConfig) -> list[Direction]:
    """``data.zero_shot``: directions evaluated but never trained, between languages of
    ``data.pairs`` (the model has a language token for each), e.g. de-it in an English-centric
    run. Each is listed once and is not a direction of ``data.pairs``."""
    dirs = directions(data_cfg)
    langs = languages(dirs)
    parsed = [parse_direction(p, "data.zero_shot") for p in data_cfg.get("zero_shot") or ()]
    seen: set[Direction] = set()
    for d in parsed:
        if d in dirs:
            raise MoeMtError(f"data.zero_shot: {d} is a direction of data.pairs (trained)")
        if d in seen:
            raise MoeMtError(f"data.zero_shot: {d} is listed twice")
        for lang in (d.src, d.tgt):
            if lang not in langs:
                raise MoeMtError(
                    f"data.zero_shot: {d}: '{lang}' is not a language of data.pairs "
                    f"({', '.join(langs)}); the model has no token for it"
                )
        seen.add(d)
    return parsed


def zero_shot_corpora(data_cfg: DictConfig) -> dict[str, tuple[str, str]]:
    """The corpora of the zero-shot directions whose language pair no trained corpus holds:
    only their test split is prepared (named as :func:`corpora` names)."""
    trained = {frozenset(pair) for pair in corpora(directions(data_cfg)).values()}
    found = corpora(zero_shot_directions(data_cfg))
    return {name: pair for name, pair in found.items() if frozenset(pair) not in trained}


def all_corpora(data_cfg: DictConfig) -> dict[str, tuple[str, str]]:
    """The trained corpora, then the test-only ones."""
    return {**corpora(directions(data_cfg)), **zero_shot_corpora(data_cfg)}


def pair_files(prefix: str, pair: tuple[str, str], key: str) -> dict[str, Path]:
    """``{lang: path}`` of one split of the corpus ``pair`` (see the module docstring)."""
    a, b = pair
    candidates = [f"{a}-{b}", f"{b}-{a}"] if PLACEHOLDER in prefix else [None]
    tried = []
    for name in candidates:
        base = prefix.replace(PLACEHOLDER, name) if name else prefix
        paths = {lang: Path(f"{base}.{lang}") for lang in pair}
        if all(p.is_file() for p in paths.values()):
            return paths
        tried += [str(p) for p in paths.values() if not p.is_file()]
    raise MoeMtError(f"{tried[0]}: no such file ({key}={prefix}, pair {a}-{b})")


def corpus_sources(data_cfg: DictConfig) -> dict[str, Source]:
    """``{corpus name: registry source}`` of ``data.sources``, whose keys are language pairs
    (``en-de`` or ``de-en`` for the corpus that serves both directions).

    Every entry is checked (pair, registry name, languages, splits); an entry for a pair that
    no direction of ``data.pairs`` or ``data.zero_shot`` uses is then left out, so that a
    recipe's catalogue of sources can serve narrower lists given on the command line.
    """
    by_langs = {frozenset(pair): name for name, pair in all_corpora(data_cfg).items()}
    found: dict[str, Source] = {}
    seen: set[frozenset] = set()
    for key, source_name in (data_cfg.get("sources") or {}).items():
        where = f"data.sources.{key}"
        pair = parse_direction(key, where)
        langs = frozenset((pair.src, pair.tgt))
        if langs in seen:
            raise MoeMtError(f"{where}: a second source for the pair {key}")
        seen.add(langs)
        try:
            source = get_source(source_name)
        except SourceError as err:
            raise MoeMtError(f"{where}: {err}") from None
        if set(source.languages) != langs:
            raise MoeMtError(f"{where}={source_name} is {'-'.join(source.languages)}, not {key}")
        for split in ("train", "valid"):
            if split not in source.split_names:
                raise MoeMtError(f"{where}={source_name} has no {split} split")
        if langs in by_langs:
            found[by_langs[langs]] = source
    return found


def check_inputs(data_cfg: DictConfig) -> dict[str, Source]:
    """Check the input keys of a multilingual recipe; return :func:`corpus_sources`.

    A pair with a ``data.sources`` entry takes train and valid from it, and test too unless
    ``data.test`` is set (a multi-way test set such as FLORES then replaces every pair's); the
    other pairs read ``data.train`` / ``data.valid``, which are an error when no pair needs them.
    """
    if data_cfg.get("source"):
        raise MoeMtError(
            "data.source names one pair's corpus; with data.pairs, give data.sources "
            "{pair: source} (e.g. {en-de: iwslt17_multi_en_de})"
        )
    if not data_cfg.spm.joint or not data_cfg.joined_dictionary:
        raise MoeMtError(
            "data.pairs needs data.spm.joint=true and data.joined_dictionary=true "
            "(the multilingual task reads one dictionary for every language)"
        )
    sources = corpus_sources(data_cfg)
    if all(name in sources for name in corpora(directions(data_cfg))):
        for split in ("train", "valid"):
            if data_cfg[split] is not None:
                raise MoeMtError(
                    f"data.{split}={data_cfg[split]} is unused: every pair of data.pairs has "
                    "a data.sources entry"
                )
    return sources


def local_files(data_cfg: DictConfig, sources: dict[str, Source]) -> dict[str, dict[str, Path]]:
    """``{"<corpus>/<split>": {lang: path}}`` of the local files: every split of the pairs
    without a source, and ``data.test`` of the others (test-only corpora: the test split)."""
    test_only = zero_shot_corpora(data_cfg)
    for name in test_only:
        if name not in sources and data_cfg.test is None:
            raise MoeMtError(
                f"data.zero_shot: the pair {name} has no test set (give data.sources.{name} or "
                "a data.test that holds it)"
            )
    files = {}
    for name, pair in all_corpora(data_cfg).items():
        for split in single.SPLITS:
            if (name in sources or name in test_only) and split != "test":
                continue
            prefix = data_cfg[split]
            if prefix is None:
                if split != "test":
                    raise MoeMtError(f"data.{split}: missing (needed for the pair {name})")
                continue
            files[f"{name}/{split}"] = pair_files(prefix, pair, f"data.{split}")
    return files


def input_files(data_cfg: DictConfig, progress: bool = True) -> dict[str, dict[str, Path]]:
    """``{"<corpus>/<split>": {lang: path}}`` of every corpus and configured split; the
    registry corpora of ``data.sources`` are fetched into the cache first (a no-op once there)."""
    sources = check_inputs(data_cfg)
    files = local_files(data_cfg, sources)
    test_only = zero_shot_corpora(data_cfg)
    cache = fetch_source.cache_dir(data_cfg)
    for name, source in sources.items():
        try:
            corpus = download.fetch_corpus(source, cache, progress=progress)
        except (download.DownloadError, SourceError) as err:
            raise MoeMtError(f"data.sources: {source.name}: {err}") from None
        needed = ("test",) if name in test_only else single.SPLITS
        for split, langs in corpus.files.items():
            if split in needed and f"{name}/{split}" not in files:
                if split != "test" or data_cfg.test is None:
                    files[f"{name}/{split}"] = dict(langs)
    # The order of the manifest whatever the origin: corpus by corpus, train / valid / test.
    order = [f"{name}/{split}" for name in all_corpora(data_cfg) for split in single.SPLITS]
    files = {key: files[key] for key in order if key in files}
    if data_cfg.get("lowercase"):  # the single-pair rule, every corpus alike
        files = fetch_source.lowercased(files, cache / fetch_source.LOWERCASED_DIR)
    return files


def build(data_cfg, files, inputs, out: Path, progress: Progress) -> dict:
    """Prepare every corpus into ``out`` (the building ``data/``); return the manifest."""
    dirs = directions(data_cfg)
    text_dir, work_dir, bin_dir = out / "text", out / "pieces", out / "bin"
    for d in (text_dir, work_dir, bin_dir):
        d.mkdir()
    names = corpora(dirs)
    splits: dict[str, dict[str, dict]] = {}
    # valid/test of every corpus first: small, and any problem there is fatal.
    for name, pair in names.items():
        (text_dir / name).mkdir()
        (work_dir / name).mkdir()
        splits[name] = {"train": {}}
        for split in ("valid", "test"):
            if f"{name}/{split}" in files:
                splits[name][split] = single.check_and_copy_split(
                    files[f"{name}/{split}"],
                    _paths(text_dir / name, split, pair),
                    pair,
                    data_cfg.max_line_chars,
                )
    for name, pair in names.items():
        splits[name]["train"] = single.clean_train(
            data_cfg,
            files[f"{name}/train"],
            _paths(text_dir / name, "train", pair),
            pair,
            progress,
        )

    train_text = _train_files(text_dir, names)
    spm.train_spm(train_text, out / "spm", data_cfg.spm)
    encoder = spm.Encoder(out / "spm.model")
    for name, pair in names.items():
        for split, info in splits[name].items():
            for lang in pair:
                file = f"{name}/{split}.{lang}"
                single.encode_file(
                    encoder,
                    text_dir / file,
                    work_dir / file,
                    info["lines"]["kept"],
                    progress,
                    f"encode {file}",
                )

    dictionary = binarize.build_dictionary(_train_files(work_dir, names))
    langs = languages(dirs)
    for lang in langs:
        dictionary.save(str(bin_dir / f"dict.{lang}.txt"))
    for name, pair in names.items():
        for split, info in splits[name].items():
            info["tokens"] = {
                lang: single.binarise_file(
                    work_dir / name / f"{split}.{lang}",
                    dictionary,
                    bin_dir / f"{split}.{name}.{lang}",
                    info["lines"]["kept"],
                    progress,
                    f"binarise {name} {split}.{lang}",
                )
                for lang in pair
            }
    shutil.rmtree(work_dir)

    # Zero-shot pairs that no trained corpus holds: their test text only (eval reads text/;
    # nothing of them is binarised, so training cannot see them).
    test_only = zero_shot_corpora(data_cfg)
    for name, pair in test_only.items():
        (text_dir / name).mkdir()
        splits[name] = {
            "test": single.check_and_copy_split(
                files[f"{name}/test"],
                _paths(text_dir / name, "test", pair),
                pair,
                data_cfg.max_line_chars,
            )
        }
    zero_shot = zero_shot_directions(data_cfg)

    def in_pair(found: list[Direction], pair) -> list[str]:
        return [d.name for d in found if {d.src, d.tgt} == set(pair)]

    return {
        "format": single.MANIFEST_FORMAT,
        "multilingual": True,
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
                "inputs": {s: inputs[f"{name}/{s}"] for s in splits[name]},
                "splits": splits[name],
            }
            for name, pair in {**names, **test_only}.items()
        },
        "files": {
            "text": "text",
            "bin": "bin",
            "spm": {lang: "spm.model" for lang in langs},
            "dictionaries": {lang: f"bin/dict.{lang}.txt" for lang in langs},
        },
        "dictionary_size": {"joint": len(dictionary)},
        "joined_dictionary": True,
        "config": OmegaConf.to_container(data_cfg),
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _train_files(root: Path, names: dict[str, tuple[str, str]]) -> list[Path]:
    """Every corpus' training files under ``root`` (text or pieces)."""
    return [p for name, pair in names.items() for p in _paths(root / name, "train", pair).values()]


def _paths(directory: Path, split: str, pair: tuple[str, str]) -> dict[str, Path]:
    return {lang: directory / f"{split}.{lang}" for lang in pair}


def task_dictionary(data_cfg: DictConfig, bin_dir: Path):
    """The dictionary a model of ``data.pairs`` embeds: the prepared joint one (before prep, a
    stand-in of ``data.spm.vocab_size`` symbols) with the ``__<lang>__`` token of every
    language added as ``translation_multi_simple_epoch`` adds them (fairseq's
    ``augment_dictionary``, default token style)."""
    from fairseq.data import Dictionary
    from fairseq.data.multilingual.multilingual_utils import augment_dictionary

    langs = languages(directions(data_cfg))
    path = bin_dir / f"dict.{langs[0]}.txt"
    if path.is_file():
        dictionary = Dictionary.load(str(path))
    else:
        dictionary = Dictionary()
        for i in range(data_cfg.spm.vocab_size):
            dictionary.add_symbol(f"w{i}")
    augment_dictionary(dictionary, langs, lang_tok_style="multilingual")
    return dictionary


def is_multilingual(manifest: dict) -> bool:
    return bool(manifest.get("multilingual"))


def _corpus_of(manifest: dict, direction: Direction) -> str | None:
    for name, corpus in manifest["corpora"].items():
        if set(corpus["languages"]) == {direction.src, direction.tgt}:
            return name
    return None


def has_split(manifest: dict, direction: Direction, split: str) -> bool:
    """Whether ``direction``'s corpus has ``split`` prepared (train never counts)."""
    name = _corpus_of(manifest, direction)
    return split != "train" and name is not None and split in manifest["corpora"][name]["splits"]


def text_files(manifest: dict, data_dir: Path, direction: Direction, split: str):
    """(source, reference) text files of ``direction``'s ``split`` in a prepared ``data/``:
    those of the corpus of its language pair (trained or test-only)."""
    name = _corpus_of(manifest, direction)
    if name is None:
        prepared = ", ".join(sorted(manifest["corpora"]))
        raise MoeMtError(
            f"{direction}: no prepared corpus for this language pair (prepared: {prepared}; "
            "a direction that is not trained can be prepared for testing with data.zero_shot)"
        )
    if split not in manifest["corpora"][name]["splits"] or split == "train":
        prepared = [s for s in manifest["corpora"][name]["splits"] if s != "train"]
        raise MoeMtError(
            f"eval.split={split}: not a prepared split of {name} "
            f"(prepared: {', '.join(prepared) or 'none'})"
        )
    text = data_dir / manifest["files"]["text"] / name
    return text / f"{split}.{direction.src}", text / f"{split}.{direction.tgt}"
