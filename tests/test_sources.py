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
