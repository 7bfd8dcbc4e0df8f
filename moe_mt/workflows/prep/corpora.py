"""The corpora that serve a run's directions (:func:`.common.manifest.directions`): what
``moemt prep`` reads.

A single-pair recipe (``data.src``/``data.tgt``, files ``<prefix>.<lang>`` or the registry corpus
``data.source``) is the one-direction case: one direction, one corpus named ``<src>-<tgt>``.

A multilingual recipe lists directions (``data.pairs: [en-de, de-en, en-fr, fr-en]``) instead.
One *corpus* serves both directions of a language pair: the files of direction ``a-b`` are
``<prefix>.a`` and ``<prefix>.b``, where ``{pair}`` in a prefix is replaced by ``a-b``, or by
``b-a`` where only those files exist (``tatoeba_en_xx/{pair}/train`` serves en-de and de-en from
``en-de/``); a prefix without ``{pair}`` (FLORES-200 ``test.<lang>``, one file per language,
multi-way) serves every pair. A language pair may instead name a corpus of the download registry
(``data.sources: {en-de: iwslt17_multi_en_de, ...}``): prep fetches it into the cache as
``data.source`` does for one pair, and takes its train and valid splits, and its test split
unless ``data.test`` gives a multi-way test set for every pair.

``data.zero_shot`` lists directions that are tested but never trained (de-it in an
English-centric run): a direction whose language pair no trained corpus holds gets a test-only
corpus (its test set copied into ``text/``, nothing binarised), from ``data.sources`` or
``data.test``; eval scores them and averages them apart from the trained directions.

Every function here gives its files as ``{"<corpus>/<split>": {lang: path}}``; how they become
``data/`` is :mod:`moe_mt.workflows.prep.pipeline`'s one build.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from moe_mt.data_prep import download, fetch_source
from moe_mt.data_prep.sources import Source, SourceError, get_source
from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.manifest import Direction, directions, languages, parse_direction

PLACEHOLDER = "{pair}"
SPLITS = ("train", "valid", "test")


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
        for split in SPLITS:
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
    registry corpora of ``data.source`` / ``data.sources`` are fetched into the cache first (a
    no-op once there)."""
    if not data_cfg.pairs:  # one pair: local files or the registry corpus data.source
        (name,) = corpora(directions(data_cfg))
        found = fetch_source.input_files(data_cfg, local=_existing_local_files, progress=progress)
        return {f"{name}/{split}": langs for split, langs in found.items()}
    sources = check_inputs(data_cfg)
    files = local_files(data_cfg, sources)
    test_only = zero_shot_corpora(data_cfg)
    cache = fetch_source.cache_dir(data_cfg)
    for name, source in sources.items():
        try:
            corpus = download.fetch_corpus(source, cache, progress=progress)
        except (download.DownloadError, SourceError) as err:
            raise MoeMtError(f"data.sources: {source.name}: {err}") from None
        needed = ("test",) if name in test_only else SPLITS
        for split, langs in corpus.files.items():
            if split in needed and f"{name}/{split}" not in files:
                if split != "test" or data_cfg.test is None:
                    files[f"{name}/{split}"] = dict(langs)
    # The order of the manifest whatever the origin: corpus by corpus, train / valid / test.
    order = [f"{name}/{split}" for name in all_corpora(data_cfg) for split in SPLITS]
    files = {key: files[key] for key in order if key in files}
    if data_cfg.get("lowercase"):  # the single-pair rule, every corpus alike
        files = fetch_source.lowercased(files, cache / fetch_source.LOWERCASED_DIR)
    return files


def _existing_local_files(data_cfg: DictConfig) -> dict[str, dict[str, Path]]:
    """:func:`fetch_source.local_files`, each checked to exist."""
    files = fetch_source.local_files(data_cfg)
    for split, langs in files.items():
        for path in langs.values():
            if not path.is_file():
                raise MoeMtError(f"{path}: no such file (data.{split}={data_cfg[split]})")
    return files
