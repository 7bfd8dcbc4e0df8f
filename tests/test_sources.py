"""The registry of corpus sources: every entry is complete and self-consistent."""

from __future__ import annotations

import re

import pytest
from sacrebleu.dataset import DATASETS

from moe_mt.data_prep.download import resolve_sacrebleu
from moe_mt.data_prep.sources import (
    Archive,
    Part,
    SacrebleuPart,
    Source,
    SourceError,
    get_source,
    list_sources,
)

EXPECTED = {
    "europarl_en_cs",
    "europarl_en_lv",
    "europarl_en_ro",
    "iwslt14_de_en",
    "iwslt15_en_vi",
    "iwslt17_en_de",
    "iwslt17_en_fr",
    "wmt14_en_fr",
    "wmt16_en_de",
    # The IWSLT 2017 multilingual release: every pair of de, en, it, nl, ro, English first.
    *(f"iwslt17_multi_{p}" for p in ("en_de", "en_it", "en_nl", "en_ro")),
    *(f"iwslt17_multi_{p}" for p in ("de_it", "de_nl", "de_ro", "it_nl", "it_ro", "nl_ro")),
}


def test_names_are_the_expected_unique_set():
    names = [s.name for s in list_sources()]
    assert len(names) == len(set(names))
    assert set(names) == EXPECTED


@pytest.mark.parametrize("source", list_sources(), ids=lambda s: s.name)
def test_every_entry_is_complete(source: Source):
    source.validate()
    assert source.description and source.license
    assert {"train", "valid", "test"} <= set(source.split_names)
    for split, parts in source.splits.items():
        for part in parts:
            if isinstance(part, SacrebleuPart):
                resolved = resolve_sacrebleu(part)  # exists in the installed sacrebleu
                assert resolved.archive.md5 and set(resolved.members) == set(source.languages)
                continue
            assert set(part.members) == set(source.languages), split
            for archive in part.all_archives():
                assert archive.urls and all(u.startswith("http") for u in archive.urls)
                if archive.sha256 is None:
                    assert archive.sha256_note, archive.filename
                else:
                    assert re.fullmatch(r"[0-9a-f]{64}", archive.sha256), archive.filename


def test_one_filename_means_one_archive():
    """Archives sharing a cache filename must be the same download."""
    seen: dict[str, Archive] = {}
    for source in list_sources():
        for archive in source.archives():
            assert seen.setdefault(archive.filename, archive) == archive


def test_iwslt14_follows_fairseq():
    source = get_source("iwslt14_de_en")
    assert source.lowercase
    (holdout,) = source.holdouts
    assert (holdout.split, holdout.from_split, holdout.every) == ("valid", "train", 23)
    stems = [p.members["en"].split("/")[-1].split(".")[1:3] for p in source.splits["test"]]
    assert stems == [
        ["TED", "dev2010"],
        ["TEDX", "dev2012"],
        ["TED", "tst2010"],
        ["TED", "tst2011"],
        ["TED", "tst2012"],
    ]


def test_iwslt17_multilingual_members_follow_the_release_readme():
    # The release README names train.tags.x-y.{x,y} and IWSLT17.TED.{dev2010,tst2010}.x-y.{x,y}.xml
    # under DeEnItNlRo-DeEnItNlRo/; the 60 member paths were also checked against an unpacked copy
    # of the release (dev/test text and file names; its train files were not available).
    for source in list_sources():
        if not source.name.startswith("iwslt17_multi_"):
            continue
        a, b = source.languages
        assert source.name == f"iwslt17_multi_{a}_{b}"
        members = {
            split: [part.members for part in parts] for split, parts in source.splits.items()
        }
        root = "DeEnItNlRo-DeEnItNlRo/"
        assert members == {
            "train": [{lang: f"{root}train.tags.{a}-{b}.{lang}" for lang in (a, b)}],
            "valid": [{lang: f"{root}IWSLT17.TED.dev2010.{a}-{b}.{lang}.xml" for lang in (a, b)}],
            "test": [{lang: f"{root}IWSLT17.TED.tst2010.{a}-{b}.{lang}.xml" for lang in (a, b)}],
        }
        (archive,) = source.archives()
        assert archive.sha256 == "cebb3839b7580f8e4eecf66d75424caa29b9410a9a491a732b2d343626ee0243"
        assert archive.size == 329331279


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(SourceError) as err:
        get_source("wmt99_xx_yy")
    message = str(err.value)
    assert "wmt99_xx_yy" in message and all(name in message for name in EXPECTED)


def test_malformed_entries_are_refused():
    archive = Archive(("https://example.org/a.tgz",), "a.tgz", None, "")
    source = Source(
        "bad", "d", ("en", "de"), {"train": [Part(archive, {"en": "a", "de": "b"})]}, "l"
    )
    with pytest.raises(SourceError, match="no sha256 and no reason"):
        source.validate()
    archive = Archive(("https://example.org/a.tgz",), "a.tgz", None, "why")
    source = Source("bad", "d", ("en", "de"), {"train": [Part(archive, {"en": "a"})]}, "l")
    with pytest.raises(SourceError, match="members"):
        source.validate()
    source = Source(
        "bad", "d", ("en", "de"), {"train": [Part(archive, {"en": "../a", "de": "b"})]}, "l"
    )
    with pytest.raises(SourceError, match="escapes"):
        source.validate()


def test_sacrebleu_test_sets_named_by_the_registry_exist():
    for source in list_sources():
        for parts in source.splits.values():
            for part in parts:
                if isinstance(part, SacrebleuPart):
                    assert part.test_set in DATASETS
