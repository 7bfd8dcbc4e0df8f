"""The registry of corpus sources: where each corpus lives and which files make which split.

A :class:`Source` maps each split (``train``, ``valid``, ``test``) to an ordered list of parts;
the split is the concatenation of its parts. A part is either

- a :class:`Part`: one member file per language inside an :class:`Archive` (or the downloaded
  file itself), in a :class:`Format` (plain text, WMT/IWSLT SGML, IWSLT ``train.tags``), or
- a :class:`SacrebleuPart`: one of sacrebleu's own test sets, resolved through the installed
  sacrebleu's dataset registry (its URL, its MD5 and its member paths), so that our test text is
  the text that ``sacrebleu -t`` scores against.

A :class:`Holdout` builds a split by sampling another (fairseq's IWSLT14 valid: every 23rd line of
train). Rules that prep applies later (fairseq's lowercasing) are recorded here, not applied.

Checksums: ``Archive.sha256`` is a published sha256, and each one names where it was published;
``None`` comes with a reason, and the downloader then trusts the first download (recording the
hash it saw, labelled unverified) and verifies every later one against it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from moe_mt.data_prep.download_extract import archive_kind

__all__ = [
    "Archive",
    "Format",
    "Holdout",
    "Part",
    "SacrebleuPart",
    "Source",
    "SourceError",
    "get_source",
    "list_sources",
    "register_source",
    "unregister_source",
]


class SourceError(ValueError):
    """A registry entry is unknown or malformed."""


class Format(enum.Enum):
    """How a member file holds its sentences (a ``.gz`` member is decompressed first)."""

    TEXT = "text"  # one sentence per line
    SGML = "sgml"  # WMT fake-SGML / IWSLT XML: the text of each <seg ...>...</seg> line
    TAGS = "tags"  # IWSLT train.tags: plain lines plus tag lines (<url>, <talkid>, ...)


@dataclass(frozen=True)
class Archive:
    """One downloadable file.

    ``urls`` are mirrors of the same bytes, tried in order. ``sha256`` is the published checksum
    (``None`` needs ``sha256_note`` saying why). ``md5`` is used where the only published checksum
    is an MD5 (sacrebleu's registry). ``filename`` is the name in the download cache.
    """

    urls: tuple[str, ...]
    filename: str
    sha256: str | None
    sha256_note: str
    size: int | None = None
    md5: str | None = None

    @property
    def kind(self) -> str:
        """``tar``, ``zip``, ``gz`` (one gzipped file) or ``file`` (used as downloaded)."""
        return archive_kind(Path(self.filename))


@dataclass(frozen=True)
class Part:
    """One line-aligned piece of a split: a member path per language inside ``archive``.

    ``archive`` is one archive for both languages, or a dict language -> archive where each
    language is its own download. ``members`` maps language -> path inside the archive (for an
    archive of kind ``file`` or ``gz`` the path is ignored: the file is the member).
    ``replacements`` are literal (old, new) substitutions applied to each extracted line
    (fairseq's IWSLT14 test: ’ -> ').
    ``drop_tags`` (TAGS format) are the tags whose lines are dropped; ``strip_tags`` are removed
    from the lines that remain.
    """

    archive: Archive | dict[str, Archive]
    members: dict[str, str]
    format: Format = Format.TEXT
    replacements: tuple[tuple[str, str], ...] = ()
    drop_tags: tuple[str, ...] = ()
    strip_tags: tuple[str, ...] = ()

    def archive_for(self, lang: str) -> Archive:
        """The archive that holds ``lang``'s member."""
        return self.archive[lang] if isinstance(self.archive, dict) else self.archive

    def all_archives(self) -> list[Archive]:
        """This part's archives (one, or one per language)."""
        return list(self.archive.values()) if isinstance(self.archive, dict) else [self.archive]


@dataclass(frozen=True)
class SacrebleuPart:
    """One of sacrebleu's test sets, e.g. ``SacrebleuPart("wmt14/full", "en-de")``.

    Source and reference come from the installed sacrebleu's registry (URL, MD5, member paths),
    so the text is the one sacrebleu scores against.
    """

    test_set: str
    langpair: str


@dataclass(frozen=True)
class Holdout:
    """Build ``split`` from every ``every``-th line of ``from_split`` and drop those lines there.

    Lines are counted from 1 (awk's ``NR % every == 0``), as fairseq's prepare-iwslt14.sh does.
    """

    split: str
    from_split: str
    every: int


@dataclass(frozen=True)
class Source:
    """A corpus: a language pair and, per split, the parts concatenated in order."""

    name: str
    description: str
    languages: tuple[str, str]  # (source, target) in the usual direction
    splits: dict[str, list[Part | SacrebleuPart]]
    license: str
    holdouts: tuple[Holdout, ...] = ()
    lowercase: bool = False  # rule for prep: lowercase every split, both sides (fairseq IWSLT14)
    notes: str = ""
    homepage: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def split_names(self) -> list[str]:
        """Every split the corpus provides, holdouts included."""
        names = list(self.splits)
        names += [h.split for h in self.holdouts if h.split not in names]
        return names

    def archives(self) -> list[Archive]:
        """The distinct archives of the registry parts, in first-use order."""
        seen: dict[str, Archive] = {}
        for parts in self.splits.values():
            for part in parts:
                if isinstance(part, Part):
                    for archive in part.all_archives():
                        seen.setdefault(archive.filename, archive)
        return list(seen.values())

    def validate(self) -> None:
        """Raise :class:`SourceError` if the entry is not self-consistent."""
        where = f"source {self.name!r}"
        if len(set(self.languages)) != 2:
            raise SourceError(f"{where}: needs two distinct languages, got {self.languages}")
        if not self.splits:
            raise SourceError(f"{where}: has no splits")
        for split, parts in self.splits.items():
            if not parts:
                raise SourceError(f"{where}: split {split!r} has no parts")
            for part in parts:
                _validate_part(where, split, part, self.languages)
        for holdout in self.holdouts:
            bad = holdout.split in self.splits or holdout.from_split not in self.splits
            if bad or holdout.every < 2:
                raise SourceError(f"{where}: bad holdout {holdout}")


def _validate_part(where: str, split: str, part: Part | SacrebleuPart, langs) -> None:
    if isinstance(part, SacrebleuPart):
        if set(part.langpair.split("-")) != set(langs):
            raise SourceError(f"{where}: split {split!r}: sacrebleu pair {part.langpair!r}")
        return
    if set(part.members) != set(langs):
        raise SourceError(f"{where}: split {split!r}: members {sorted(part.members)} != {langs}")
    if isinstance(part.archive, dict) and set(part.archive) != set(langs):
        raise SourceError(f"{where}: split {split!r}: archives {sorted(part.archive)} != {langs}")
    for archive in part.all_archives():
        _validate_archive(where, archive)
    for member in part.members.values():
        pure = PurePosixPath(member)
        if pure.is_absolute() or ".." in pure.parts:
            raise SourceError(f"{where}: member {member!r} escapes the archive")


def _validate_archive(where: str, archive: Archive) -> None:
    if not archive.urls or not all(u.startswith(("http://", "https://")) for u in archive.urls):
        raise SourceError(f"{where}: archive {archive.filename!r} has no http(s) url")
    if archive.sha256 is None and not archive.sha256_note:
        raise SourceError(f"{where}: archive {archive.filename!r}: no sha256 and no reason")
    if archive.sha256 is not None and len(archive.sha256) != 64:
        raise SourceError(f"{where}: archive {archive.filename!r}: malformed sha256")
    if "/" in archive.filename or archive.filename.startswith("."):
        raise SourceError(f"{where}: archive filename {archive.filename!r} is not a plain name")


# --------------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------------

_TOFU = "no published sha256 found; trusted on first download and recorded as unverified"

# Hugging Face `datasets` (github.com/huggingface/datasets), datasets/wmt14/dataset_infos.json and
# datasets/wmt16/dataset_infos.json, "download_checksums" (sha256, num_bytes), at commit 7737311ffa
# (statmt.org URLs) and a5f81953ad/ab0de804ae (the same bytes at huggingface.co/datasets/wmt/...,
# used here as mirrors: same size and sha256).
_HF_WMT = "sha256 from huggingface/datasets datasets/{}/dataset_infos.json (download_checksums)"

EUROPARL_V7 = Archive(
    urls=(
        "https://www.statmt.org/wmt13/training-parallel-europarl-v7.tgz",
        "https://huggingface.co/datasets/wmt/wmt13/resolve/main/training-parallel-europarl-v7.tgz",
    ),
    filename="training-parallel-europarl-v7.tgz",
    sha256="0224c7c710c8a063dfd893b0cc0830202d61f4c75c17eb8e31836103d27d96e7",
    sha256_note=_HF_WMT.format("wmt14"),
    size=657632379,
)
COMMONCRAWL = Archive(
    urls=(
        "https://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz",
        "https://huggingface.co/datasets/wmt/wmt13/resolve/main/training-parallel-commoncrawl.tgz",
    ),
    filename="training-parallel-commoncrawl.tgz",
    sha256="c7a74e2ea01ac6c920123108627e35278d4ccb5701e15428ffa34de86fa3a9e5",
    sha256_note=_HF_WMT.format("wmt14"),
    size=918311367,
)
NEWS_COMMENTARY_V9 = Archive(
    urls=(
        "https://www.statmt.org/wmt14/training-parallel-nc-v9.tgz",
        "https://huggingface.co/datasets/wmt/wmt14/resolve/main/training-parallel-nc-v9.tgz",
    ),
    filename="training-parallel-nc-v9.tgz",
    sha256="cb8953f292298e6877ae433c98912b927cb0766b303f4540512ddd286c748485",
    sha256_note=_HF_WMT.format("wmt14"),
    size=80418416,
)
NEWS_COMMENTARY_V11 = Archive(
    urls=(
        "https://data.statmt.org/wmt16/translation-task/training-parallel-nc-v11.tgz",
        "https://huggingface.co/datasets/wmt/wmt16/resolve/main/translation-task/"
        "training-parallel-nc-v11.tgz",
    ),
    filename="training-parallel-nc-v11.tgz",
    sha256="cfe8ab047e05043476e498ee765c98e939c7b7d6d294e856344c84476b619d6a",
    sha256_note=_HF_WMT.format("wmt16"),
    size=75178032,
)
UN_V1 = Archive(
    urls=("https://www.statmt.org/wmt13/training-parallel-un.tgz",),
    filename="training-parallel-un.tgz",
    sha256=None,
    # huggingface/datasets publishes a sha256 only for its re-zipped copy (main-zip/*.zip).
    sha256_note=_TOFU,
)
GIGAFREN = Archive(
    urls=("https://www.statmt.org/wmt10/training-giga-fren.tar",),
    filename="training-giga-fren.tar",
    sha256=None,
    size=2595102720,  # as recorded by TensorFlow's translate tutorial (_WMT_ENFR_TRAIN_SIZE)
    # huggingface/datasets publishes a sha256 only for its re-zipped copy (main-zip/*.zip).
    sha256_note=_TOFU,
)

# fairseq's examples/translation/prepare-iwslt14.sh (the original wit3.fbk.eu 2014-01 archive,
# now served by fairseq); fairseq publishes no checksum for it.
IWSLT14_DE_EN = Archive(
    urls=("http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz",),
    filename="iwslt14-de-en.tgz",
    sha256=None,
    sha256_note=_TOFU,
)

# huggingface/datasets datasets/iwslt2017/dataset_infos.json, "download_checksums" at commit
# 040102f100 (huggingface.co URLs) and b811663c86 (the same size and sha256 at wit3.fbk.eu).
_HF_IWSLT17 = "sha256 from huggingface/datasets datasets/iwslt2017/dataset_infos.json"
_HF_IWSLT17_URL = (
    "https://huggingface.co/datasets/iwslt2017/resolve/ebd7c60d9800c2a1be010a227e5f0a2363730f7a"
    "/data/2017-01-trnted/texts/{s}/{t}/{s}-{t}.tgz"
)
IWSLT17_EN_DE = Archive(
    urls=(
        _HF_IWSLT17_URL.format(s="en", t="de"),
        "https://wit3.fbk.eu/archive/2017-01-trnted/texts/en/de/en-de.tgz",
    ),
    filename="iwslt17-en-de.tgz",
    sha256="623caec69988b224dbe741f16ad90411b93430117a8021c4bb2bcab7ad1eb21e",
    sha256_note=_HF_IWSLT17,
    size=16751364,
)
IWSLT17_EN_FR = Archive(
    urls=(
        _HF_IWSLT17_URL.format(s="en", t="fr"),
        "https://wit3.fbk.eu/archive/2017-01-trnted/texts/en/fr/en-fr.tgz",
    ),
    filename="iwslt17-en-fr.tgz",
    sha256="1f5bd8cd242de15fb58a04af265adb8e604a7e1b805a42cb0de7dfd15447c5c6",
    sha256_note=_HF_IWSLT17,
    size=27691674,
)
# The IWSLT 2017 multilingual task's release (2017-01-trnmted): TED talks in German, English,
# Italian, Dutch and Romanian, every one of the 20 directions as its own files under
# DeEnItNlRo-DeEnItNlRo/ (train.tags.x-y.{x,y}, IWSLT17.TED.{dev2010,tst2010}.x-y.{x,y}.xml).
IWSLT17_MULTILINGUAL = Archive(
    urls=(
        "https://huggingface.co/datasets/iwslt2017/resolve/ebd7c60d9800c2a1be010a227e5f0a2363730f7a"
        "/data/2017-01-trnmted/texts/DeEnItNlRo/DeEnItNlRo/DeEnItNlRo-DeEnItNlRo.tgz",
        "https://wit3.fbk.eu/archive/2017-01-trnmted/texts/DeEnItNlRo/DeEnItNlRo/"
        "DeEnItNlRo-DeEnItNlRo.tgz",
    ),
    filename="iwslt17-DeEnItNlRo.tgz",
    sha256="cebb3839b7580f8e4eecf66d75424caa29b9410a9a491a732b2d343626ee0243",
    sha256_note=_HF_IWSLT17,
    size=329331279,
)
IWSLT17_MULTILINGUAL_LANGUAGES = ("de", "en", "it", "nl", "ro")


def _iwslt17_multilingual_pairs() -> list[tuple[str, str]]:
    """The ten pairs of the multilingual release, English first where it is one of the two
    (the archive holds both orders of every pair; the registry names one)."""
    langs = IWSLT17_MULTILINGUAL_LANGUAGES
    pairs = [(a, b) for i, a in enumerate(langs) for b in langs[i + 1 :]]
    return [(b, a) if b == "en" else (a, b) for a, b in pairs]


def _stanford_en_vi(name: str) -> Archive:
    # Stanford NLP's preprocessed IWSLT'15 En-Vi (Luong & Manning 2015): plain files, no checksum.
    return Archive(
        urls=(f"https://nlp.stanford.edu/projects/nmt/data/iwslt15.en-vi/{name}",),
        filename=f"iwslt15-en-vi.{name}",
        sha256=None,
        sha256_note=_TOFU,
    )


def _europarl_v7_pair(pair: str) -> Archive:
    # The Europarl v7 release (statmt.org/europarl), one archive per pair; no published checksum.
    # Its members (europarl-v7.<pair>.<lang> at the archive root) are as the release is usually
    # described; no copy of the archive could be checked here.
    return Archive(
        urls=(f"https://www.statmt.org/europarl/v7/{pair}.tgz",),
        filename=f"europarl-v7-{pair}.tgz",
        sha256=None,
        sha256_note=_TOFU,
    )


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

_TED_LICENSE = "TED talks: CC BY-NC-ND 4.0 (WIT3 / IWSLT)"
_WMT_LICENSE = "WMT shared-task data: research use; each corpus keeps its own terms (statmt.org)"
_EUROPARL_LICENSE = "Europarl: no known copyright restrictions (statmt.org/europarl)"


def _pair(archive: Archive, pattern: str, langs: tuple[str, str], **kw) -> Part:
    """A Part whose member for language ``l`` is ``pattern.format(l=l)``."""
    return Part(archive, {lang: pattern.format(l=lang) for lang in langs}, **kw)


def _iwslt14_de_en() -> Source:
    langs = ("de", "en")
    xml = [
        "IWSLT14.TED.dev2010",
        "IWSLT14.TEDX.dev2012",
        "IWSLT14.TED.tst2010",
        "IWSLT14.TED.tst2011",
        "IWSLT14.TED.tst2012",
    ]
    test = [
        _pair(
            IWSLT14_DE_EN,
            f"de-en/{stem}.de-en.{{l}}.xml",
            langs,
            format=Format.SGML,
            replacements=(("\u2019", "'"),),
        )
        for stem in xml
    ]
    train = _pair(
        IWSLT14_DE_EN,
        "de-en/train.tags.de-en.{l}",
        langs,
        format=Format.TAGS,
        drop_tags=("url", "talkid", "keywords"),
        strip_tags=("title", "description"),
    )
    return Source(
        name="iwslt14_de_en",
        description="IWSLT'14 De-En TED talks, split as fairseq's prepare-iwslt14.sh",
        languages=langs,
        splits={"train": [train], "test": test},
        holdouts=(Holdout(split="valid", from_split="train", every=23),),
        lowercase=True,
        license=_TED_LICENSE,
        homepage="https://wit3.fbk.eu/2014-01",
        notes=(
            "fairseq drops <url>/<talkid>/<keywords> lines and <title>/<description> tags from "
            "train.tags, takes every 23rd line of train (NR%23==0) as valid and the rest as train, "
            "and tests on dev2010+TEDX.dev2012+tst2010+tst2011+tst2012 (with ’ -> '). fairseq "
            "samples after Moses tokenisation and clean-corpus-n (ratio 1.5, 1-175 tokens), so "
            "its valid lines are drawn from a slightly smaller train; here they are drawn from the "
            "extracted lines. fairseq lowercases every split, both sides (Moses lowercase.perl): "
            "`lowercase` records that rule for prep."
        ),
    )


def _ted_train_tags(archive: Archive, prefix: str, langs: tuple[str, str]) -> Part:
    """The ``train.tags.<s>-<t>.<lang>`` files of a WIT3 TED release: the talk text is on the
    lines that do not start with a tag (the release README); titles and descriptions keep their
    text, as fairseq's prepare-iwslt14.sh keeps it."""
    return _pair(
        archive,
        f"{prefix}/train.tags.{langs[0]}-{langs[1]}.{{l}}",
        langs,
        format=Format.TAGS,
        drop_tags=("url", "talkid", "keywords", "speaker", "reviewer", "translator", "doc", "/doc"),
        strip_tags=("title", "description"),
    )


def _ted_xml(archive: Archive, prefix: str, stem: str, langs: tuple[str, str]) -> Part:
    """``<prefix>/IWSLT17.TED.<stem>.<s>-<t>.<lang>.xml``: the ``<seg>`` lines of a dev/test set."""
    d = f"{langs[0]}-{langs[1]}"
    return _pair(archive, f"{prefix}/IWSLT17.TED.{stem}.{d}.{{l}}.xml", langs, format=Format.SGML)


def _iwslt17(langs: tuple[str, str], archive: Archive) -> Source:
    s, t = langs
    d = f"{s}-{t}"
    return Source(
        name=f"iwslt17_{s}_{t}",
        description=f"IWSLT'17 TED {s.capitalize()}-{t.capitalize()} (2017-01-trnted release)",
        languages=langs,
        splits={
            "train": [_ted_train_tags(archive, d, langs)],
            "valid": [_ted_xml(archive, d, "dev2010", langs)],
            "test": [_ted_xml(archive, d, f"tst{year}", langs) for year in range(2010, 2016)],
        },
        license=_TED_LICENSE,
        homepage="https://wit3.fbk.eu/2017-01",
        notes=(
            "valid: dev2010; test: tst2010..tst2015 concatenated (as Hugging Face's iwslt2017). "
            "THOR's low-resource study used IWSLT En-De and En-Fr with larger validation sets "
            "(7,283 / 8,453 sentences) that it does not publish."
        ),
    )


def _iwslt17_multilingual(langs: tuple[str, str]) -> Source:
    """One pair of the IWSLT 2017 multilingual task (Cettolo et al. 2017): its own training
    talks (the release aligns talks per pair, not across pairs), dev2010 and tst2010."""
    s, t = langs
    prefix = "DeEnItNlRo-DeEnItNlRo"
    return Source(
        name=f"iwslt17_multi_{s}_{t}",
        description=(
            f"IWSLT'17 multilingual TED, the {s}-{t} pair (2017-01-trnmted release, DeEnItNlRo)"
        ),
        languages=langs,
        splits={
            "train": [_ted_train_tags(IWSLT17_MULTILINGUAL, prefix, langs)],
            "valid": [_ted_xml(IWSLT17_MULTILINGUAL, prefix, "dev2010", langs)],
            "test": [_ted_xml(IWSLT17_MULTILINGUAL, prefix, "tst2010", langs)],
        },
        license="TED talks: CC BY-NC-ND 3.0 (the release's README; copyright TED Conference LLC)",
        homepage="https://wit3.fbk.eu/2017-01",
        notes=(
            "One archive serves all ten pairs of de, en, it, nl, ro. valid dev2010, test tst2010 "
            "(as Hugging Face's iwslt2017; the task's evaluation set, tst2017, is not in this "
            "release). XML entities in the <seg> text (&amp;, &gt;: up to 4 tst2010 lines in each "
            "English pair) are kept, as sacrebleu and fairseq's IWSLT scripts keep them."
        ),
    )


def _iwslt15_en_vi() -> Source:
    langs = ("en", "vi")

    def files(stem: str) -> list[Part]:
        # One plain file per language, each its own download.
        archives = {lang: _stanford_en_vi(f"{stem}.{lang}") for lang in langs}
        return [Part(archives, {lang: "" for lang in langs})]

    return Source(
        name="iwslt15_en_vi",
        description="IWSLT'15 En-Vi TED talks as released by Stanford NLP (Luong & Manning 2015)",
        languages=langs,
        splits={"train": files("train"), "valid": files("tst2012"), "test": files("tst2013")},
        license=_TED_LICENSE,
        homepage="https://nlp.stanford.edu/projects/nmt/",
        notes=(
            "Stanford's release is Moses-tokenised already. valid tst2012, test tst2013, as in "
            "Luong & Manning; THOR reports a 5,098-sentence validation set it does not publish."
        ),
    )


def _europarl(tgt: str, train: Part, valid: SacrebleuPart, test: SacrebleuPart, note: str):
    return Source(
        name=f"europarl_en_{tgt}",
        description=f"Europarl v7 En-{tgt.capitalize()} (THOR's low-resource study)",
        languages=("en", tgt),
        splits={"train": [train], "valid": [valid], "test": [test]},
        license=_EUROPARL_LICENSE + "; test sets: " + _WMT_LICENSE,
        homepage="https://www.statmt.org/europarl/",
        notes=(
            "THOR's validation sets for Europarl En-Ro / En-Lv / En-Cs (1,900 / 1,949 / 2,902 "
            f"sentences) are not published; the WMT news sets stand in for them. {note}"
        ),
    )


def _wmt16_en_de() -> Source:
    langs = ("en", "de")
    return Source(
        name="wmt16_en_de",
        description="WMT'16 En-De: Europarl v7 + Common Crawl + News Commentary v11",
        languages=langs,
        splits={
            "train": [
                _pair(EUROPARL_V7, "training/europarl-v7.de-en.{l}", langs),
                _pair(COMMONCRAWL, "commoncrawl.de-en.{l}", langs),
                _pair(
                    NEWS_COMMENTARY_V11,
                    "training-parallel-nc-v11/news-commentary-v11.de-en.{l}",
                    langs,
                ),
            ],
            "valid": [SacrebleuPart("wmt13", "en-de")],
            "test": [SacrebleuPart("wmt14/full", "en-de")],
        },
        license=_WMT_LICENSE,
        homepage="https://www.statmt.org/wmt16/translation-task.html",
        notes=(
            "The Transformer-paper setup (4.5M pairs; no Rapid 2016). valid newstest2013, test "
            "newstest2014 (full, 3,003 lines), both from sacrebleu's registry."
        ),
    )


def _wmt14_en_fr() -> Source:
    langs = ("en", "fr")
    return Source(
        name="wmt14_en_fr",
        description="WMT'14 En-Fr: Europarl v7 + Common Crawl + UN + News Commentary v9 + Gigafren",
        languages=langs,
        splits={
            "train": [
                _pair(EUROPARL_V7, "training/europarl-v7.fr-en.{l}", langs),
                _pair(COMMONCRAWL, "commoncrawl.fr-en.{l}", langs),
                _pair(UN_V1, "un/undoc.2000.fr-en.{l}", langs),
                _pair(NEWS_COMMENTARY_V9, "training/news-commentary-v9.fr-en.{l}", langs),
                _pair(GIGAFREN, "giga-fren.release2.fixed.{l}.gz", langs),
            ],
            "valid": [SacrebleuPart("wmt13", "en-fr")],
            "test": [SacrebleuPart("wmt14/full", "en-fr")],
        },
        license=_WMT_LICENSE,
        homepage="https://www.statmt.org/wmt14/translation-task.html",
        notes=(
            "About 40.8M pairs before cleaning. valid newstest2013 (fairseq's prepare-wmt14en2fr "
            "holds out every 1333rd train line instead), test newstest2014 (full, 3,003 lines)."
        ),
    )


def _builtin_sources() -> list[Source]:
    return [
        _iwslt14_de_en(),
        _iwslt17(("en", "de"), IWSLT17_EN_DE),
        _iwslt17(("en", "fr"), IWSLT17_EN_FR),
        *(_iwslt17_multilingual(pair) for pair in _iwslt17_multilingual_pairs()),
        _iwslt15_en_vi(),
        _europarl(
            "ro",
            _pair(_europarl_v7_pair("ro-en"), "europarl-v7.ro-en.{l}", ("en", "ro")),
            SacrebleuPart("wmt16/dev", "en-ro"),
            SacrebleuPart("wmt16", "en-ro"),
            "valid newsdev2016, test newstest2016.",
        ),
        _europarl(
            "lv",
            _pair(_europarl_v7_pair("lv-en"), "europarl-v7.lv-en.{l}", ("en", "lv")),
            SacrebleuPart("wmt17/dev", "en-lv"),
            SacrebleuPart("wmt17", "en-lv"),
            "valid newsdev2017, test newstest2017.",
        ),
        _europarl(
            "cs",
            _pair(EUROPARL_V7, "training/europarl-v7.cs-en.{l}", ("en", "cs")),
            SacrebleuPart("wmt13", "en-cs"),
            SacrebleuPart("wmt14/full", "en-cs"),
            "valid newstest2013, test newstest2014 (full).",
        ),
        _wmt16_en_de(),
        _wmt14_en_fr(),
    ]


_REGISTRY: dict[str, Source] = {}


def register_source(source: Source, replace: bool = False) -> Source:
    """Add ``source`` to the registry (validated); a taken name is an error unless ``replace``."""
    source.validate()
    if source.name in _REGISTRY and not replace:
        raise SourceError(f"source {source.name!r} is already registered")
    _REGISTRY[source.name] = source
    return source


def unregister_source(name: str) -> None:
    """Remove ``name`` from the registry (tests register temporary sources)."""
    _REGISTRY.pop(name, None)


def list_sources() -> list[Source]:
    """Every registered source, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_source(name: str) -> Source:
    """The source called ``name``; an unknown name is an error that lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise SourceError(f"unknown corpus source {name!r}; known sources: {known}") from None


for _source in _builtin_sources():
    register_source(_source)
