"""``data.sources``: a multilingual recipe names a registry corpus per language pair; prep fetches
them (one shared archive downloaded once) and prepares them as local files.

The archive served from 127.0.0.1 has the layout of the IWSLT 2017 multilingual release
(``DeEnItNlRo-DeEnItNlRo/``: ``train.tags`` files with their metadata lines, dev2010 / tst2010 as
XML), made of real text: IWSLT'17 dev/test segments from ``../shared/data/iwslt17_ted_devtest``
and Tatoeba sentences as training talks. The registry entries under test are the real
``iwslt17_multi_*`` ones with only the archive's URL and checksum swapped.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_mt.cli.main import app
from moe_mt.config import load_config
from moe_mt.data_prep.sources import Archive, get_source, register_source
from moe_mt.data_prep.sources import unregister_source as unregister
from moe_mt.errors import MoeMtError
from moe_mt.workflows.prep.pipeline import prep
from tests.conftest import REPO, SHARED_DATA
from tests.test_download import Server, make_tar, sha

PAIRS = ("de", "nl", "ro")  # the English pairs of the shared IWSLT'17 dev/test set
NON_ENGLISH = (("de", "nl"), ("de", "ro"), ("nl", "ro"))
TRAIN_LINES = 300
XML_LINES = 60
ROOT = "DeEnItNlRo-DeEnItNlRo"

pytestmark = pytest.mark.skipif(
    not (SHARED_DATA / "iwslt17_ted_devtest").is_dir(), reason="shared corpora not present"
)


def _lines(path: Path, n: int) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:n]


def _train_tags(lines: list[str], lang: str) -> bytes:
    """Talks of 50 lines, each after the metadata lines of a WIT3 train.tags file; the title
    and description are text lines too (kept, without their tags)."""
    out = []
    for start in range(0, len(lines), 50):
        talk = start // 50 + 1
        out += [
            f"<url>http://www.ted.com/talks/talk_{talk}</url>",
            f"<keywords>talks, {lang}</keywords>",
            f"<speaker>Speaker {talk}</speaker>",
            f"<talkid>{talk}</talkid>",
            f"<title>Talk {talk} ({lang})</title>",
            f"<description>What talk {talk} is about ({lang}).</description>",
            '<reviewer href="http://www.ted.com/profiles/1">R</reviewer>',
            '<translator href="http://www.ted.com/profiles/2">T</translator>',
        ]
        out += lines[start : start + 50]
    return ("\n".join(out) + "\n").encode("utf-8")


def _xml(lines: list[str], stem: str, lang: str) -> bytes:
    """An IWSLT17 dev/test XML file: one document, one ``<seg id>`` line per segment, with the
    spaces the release puts around segment text."""
    segs = [f'<seg id="{i}"> {line}    </seg>' for i, line in enumerate(lines, start=1)]
    text = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<mteval>",
        f'<srcset setid="iwslt2017-{stem}" srclang="{lang}">',
        '<doc docid="535" genre="lectures">',
        "<url>http://www.ted.com/talks/a_talk</url> ",
        "<talkid>535</talkid> ",
        *segs,
        "</doc>",
        "</srcset>",
        "</mteval>",
    ]
    return ("\n".join(text) + "\n").encode("utf-8")


def release_members() -> dict[str, bytes]:
    """The fixture release: en-de, en-nl, en-ro as the real archive names them."""
    members = {}
    for x in PAIRS:
        pair = f"en-{x}"
        for lang in ("en", x):
            train = _lines(SHARED_DATA / "tatoeba_en_xx" / pair / f"train.{lang}", TRAIN_LINES)
            members[f"{ROOT}/train.tags.{pair}.{lang}"] = _train_tags(train, lang)
            for stem, split in (("dev2010", "valid"), ("tst2010", "test")):
                text = _lines(
                    SHARED_DATA / "iwslt17_ted_devtest" / pair / f"{split}.{lang}", XML_LINES
                )
                members[f"{ROOT}/IWSLT17.TED.{stem}.{pair}.{lang}.xml"] = _xml(text, stem, lang)
    # The pairs without English (zero-shot for an English-centric model): FLORES-200 devtest
    # lines, which are multi-way aligned, stand in for their talks.
    flores = SHARED_DATA / "flores200_devtest"
    for a, b in NON_ENGLISH:
        pair = f"{a}-{b}"
        for lang in (a, b):
            members[f"{ROOT}/train.tags.{pair}.{lang}"] = _train_tags(
                _lines(flores / f"test.{lang}", 100), lang
            )
            for stem in ("dev2010", "tst2010"):
                text = _lines(flores / f"test.{lang}", XML_LINES)
                members[f"{ROOT}/IWSLT17.TED.{stem}.{pair}.{lang}.xml"] = _xml(text, stem, lang)
    return members


def serve_release(tmp_path: Path, names: dict[str, str]):
    """Serve the fixture release and register ``names`` (fixture name -> real registry name):
    the real entries with the archive swapped. Returns the server (close it, then unregister)."""
    server = Server()
    body = make_tar(tmp_path / "release.tgz", release_members()).read_bytes()
    archive = Archive(
        urls=(server.add("/DeEnItNlRo-DeEnItNlRo.tgz", body),),
        filename="fixture-DeEnItNlRo.tgz",
        sha256=sha(body),
        sha256_note="test fixture",
    )
    for name, real in names.items():
        source = get_source(real)
        splits = {
            split: [replace(part, archive=archive) for part in parts]
            for split, parts in source.splits.items()
        }
        register_source(replace(source, name=name, splits=splits), replace=True)
    return server


# en-it is registered but not in the archive: a recipe may list sources its data.pairs skip.
FIXTURES = {f"fixture_multi_en_{x}": f"iwslt17_multi_en_{x}" for x in (*PAIRS, "it")}
FIXTURES.update({f"fixture_multi_{a}_{b}": f"iwslt17_multi_{a}_{b}" for a, b in NON_ENGLISH})


@pytest.fixture
def release(tmp_path):
    server = serve_release(tmp_path, FIXTURES)
    yield server
    server.close()
    for name in FIXTURES:
        unregister(name)


ALL_SOURCES = "{" + ", ".join(f"en-{x}: fixture_multi_en_{x}" for x in (*PAIRS, "it")) + "}"


def _config(tmp_path: Path, *overrides: str, sources: str = ALL_SOURCES):
    """The demo recipe on the fixture release; ``sources`` replaces data.sources (an override
    of a mapping merges into the recipe's, so the mapping is given once here)."""
    pairs = ",".join(f"en-{x},{x}-en" for x in PAIRS)
    return load_config(
        REPO / "recipes" / "demo_multilingual.yaml",
        [
            f"run_dir={tmp_path / 'run'}",
            f"data.pairs=[{pairs}]",
            f"data.sources={sources}",
            "data.zero_shot=[]",
            "data.train=null",
            "data.valid=null",
            "data.test=null",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.spm.vocab_size=300",
            *overrides,
        ],
    )


def test_prep_fetches_every_pair_from_one_download(tmp_path, release):
    cfg = _config(tmp_path)
    manifest = prep(cfg).manifest
    # One archive serves the three pairs: it is downloaded once.
    assert [path for path, _ in release.requests] == ["/DeEnItNlRo-DeEnItNlRo.tgz"]
    assert sorted(manifest["corpora"]) == ["en-de", "en-nl", "en-ro"]
    assert manifest["languages"]["langs"] == ["de", "en", "nl", "ro"]
    text = tmp_path / "run" / "data" / "text"
    for x in PAIRS:
        corpus = manifest["corpora"][f"en-{x}"]
        assert corpus["directions"] == [f"en-{x}", f"{x}-en"]
        lines = {split: info["lines"] for split, info in corpus["splits"].items()}
        # dev2010 / tst2010: the <seg> text, exactly the shared copy's lines.
        for split in ("valid", "test"):
            assert lines[split]["kept"] == XML_LINES
            for lang in ("en", x):
                shared = SHARED_DATA / "iwslt17_ted_devtest" / f"en-{x}" / f"{split}.{lang}"
                ours = (text / f"en-{x}" / f"{split}.{lang}").read_text(encoding="utf-8")
                assert ours.split("\n")[:-1] == _lines(shared, XML_LINES)
        # train.tags: the talk lines plus each talk's title and description, no metadata.
        talks = -(-TRAIN_LINES // 50)
        assert lines["train"]["raw"] == TRAIN_LINES + 2 * talks
        train_en = (text / f"en-{x}" / "train.en").read_text(encoding="utf-8")
        assert "Talk 1 (en)" in train_en and "<" not in train_en and "ted.com" not in train_en
        for split in corpus["splits"]:
            assert "/corpora/fixture_multi_en_" in corpus["inputs"][split]["en"]["path"]
    bin_dir = tmp_path / "run" / "data" / "bin"
    assert (bin_dir / "train.en-ro.ro.bin").is_file() and (bin_dir / "dict.nl.txt").is_file()

    # A second prep reuses the cache and the prepared data: nothing is fetched again.
    again = prep(cfg)
    assert again.up_to_date and len(release.requests) == 1


def test_a_local_multi_way_test_set_replaces_the_sources_test(tmp_path, release):
    flores = (SHARED_DATA / "flores200_devtest").resolve() / "test"  # as config paths resolve
    manifest = prep(_config(tmp_path, f"data.test={flores}")).manifest
    for x in PAIRS:
        corpus = manifest["corpora"][f"en-{x}"]
        assert corpus["inputs"]["test"][x]["path"] == f"{flores}.{x}"
        assert corpus["splits"]["test"]["lines"]["kept"] == 1012
        assert "/corpora/" in corpus["inputs"]["valid"][x]["path"]


@pytest.mark.slow  # seconds; the default run stays near 6 min (-m slow runs it)
def test_pairs_without_a_source_read_local_files(tmp_path, release):
    tatoeba = SHARED_DATA / "tatoeba_en_xx" / "{pair}"
    cfg = _config(
        tmp_path,
        "data.pairs=[en-de,de-en,en-fr,fr-en]",
        f"data.train={tatoeba}/train",
        f"data.valid={tatoeba}/valid",
        sources="{en-de: fixture_multi_en_de}",
    )
    manifest = prep(cfg).manifest
    inputs = {name: c["inputs"] for name, c in manifest["corpora"].items()}
    assert "/corpora/fixture_multi_en_de/" in inputs["en-de"]["train"]["de"]["path"]
    assert inputs["en-fr"]["train"]["fr"]["path"].endswith("tatoeba_en_xx/en-fr/train.fr")
    assert "test" in inputs["en-de"] and "test" not in inputs["en-fr"]


def test_zero_shot_directions_prepare_their_test_text_only(tmp_path, release):
    sources = ALL_SOURCES[:-1] + ", de-nl: fixture_multi_de_nl, ro-de: fixture_multi_de_ro}"
    trained = "[en-de, en-nl, nl-en, en-ro, ro-en]"  # de-en is not trained: zero-shot too
    cfg = _config(
        tmp_path,
        f"data.pairs={trained}",
        "data.zero_shot=[de-nl, nl-de, ro-de, de-en]",
        sources=sources,
    )
    manifest = prep(cfg).manifest
    assert manifest["languages"]["zero_shot"] == ["de-nl", "nl-de", "ro-de", "de-en"]
    assert manifest["languages"]["directions"] == ["en-de", "en-nl", "nl-en", "en-ro", "ro-en"]
    # de-en reads the trained en-de corpus' test set: no corpus of its own.
    assert manifest["corpora"]["en-de"]["zero_shot"] == ["de-en"]
    assert not manifest["corpora"]["en-de"]["test_only"]
    data = tmp_path / "run" / "data"
    flores = SHARED_DATA / "flores200_devtest"
    for name, pair in (("de-nl", ("de", "nl")), ("ro-de", ("ro", "de"))):
        corpus = manifest["corpora"][name]
        assert corpus["test_only"] and list(corpus["splits"]) == ["test"]
        assert set(corpus["languages"]) == set(pair)
        for lang in pair:
            text = (data / "text" / name / f"test.{lang}").read_text(encoding="utf-8")
            # the <seg> text: stripped, inner spaces collapsed (FLORES has trailing spaces)
            expected = [
                " ".join(line.split()) for line in _lines(flores / f"test.{lang}", XML_LINES)
            ]
            assert text.split("\n")[:-1] == expected
        # nothing of a test-only pair is binarised: training cannot read it
        assert not list((data / "bin").glob(f"*.{name}.*"))
    assert manifest["corpora"]["de-nl"]["zero_shot"] == ["de-nl", "nl-de"]
    assert manifest["corpora"]["ro-de"]["zero_shot"] == ["ro-de"]


@pytest.mark.parametrize(
    ("zero_shot", "message"),
    [
        ("[en-de]", "data.zero_shot: en-de is a direction of data.pairs (trained)"),
        ("[de-it]", "data.zero_shot: de-it: 'it' is not a language of data.pairs (de, en, nl, ro)"),
        ("[de-nl, de-nl]", "data.zero_shot: de-nl is listed twice"),
        ("[nl-ro]", "data.zero_shot: the pair nl-ro has no test set (give data.sources.nl-ro"),
    ],
)
def test_bad_zero_shot_directions_are_one_line_errors(tmp_path, release, zero_shot, message):
    with pytest.raises(MoeMtError) as err:
        prep(_config(tmp_path, f"data.zero_shot={zero_shot}"))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert release.requests == []


ONE = "{en-de: fixture_multi_en_de}"


@pytest.mark.parametrize(
    ("sources", "override", "message"),
    [
        (
            ALL_SOURCES,
            "data.source=fixture_multi_en_de",
            "data.source names one pair's corpus; with data.pairs, give data.sources",
        ),
        (
            "{en-fr: fixture_multi_en_de}",
            None,
            "data.sources.en-fr=fixture_multi_en_de is en-de, not en-fr",
        ),
        (
            "{en-de: fixture_multi_en_nl}",
            None,
            "data.sources.en-de=fixture_multi_en_nl is en-nl, not en-de",
        ),
        ("{en-de: nope}", None, "data.sources.en-de: unknown corpus source 'nope'"),
        (
            "{en-de: fixture_multi_en_de, de-en: fixture_multi_en_de}",
            None,
            "data.sources.de-en: a second source for the pair de-en",
        ),
        (
            "{en_de: fixture_multi_en_de}",
            None,
            "data.sources.en_de: 'en_de' is not a direction of the form src-tgt",
        ),
        (ALL_SOURCES, "data.valid=somewhere/valid", "data.valid="),
        (ONE, None, "data.train: missing (needed for the pair en-nl)"),
    ],
)
def test_bad_sources_are_one_line_errors(tmp_path, release, sources, override, message):
    overrides = [override] if override else []
    with pytest.raises(MoeMtError) as err:
        prep(_config(tmp_path, *overrides, sources=sources))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "data").exists() and release.requests == []


def test_sources_need_pairs(tmp_path):
    cfg = load_config(
        REPO / "recipes" / "demo.yaml",
        [f"run_dir={tmp_path / 'run'}", "data.sources={en-de: iwslt17_multi_en_de}"],
    )
    with pytest.raises(MoeMtError, match=r"^data.sources \(a corpus per language pair\) needs"):
        prep(cfg)


def test_dry_run_lists_the_shared_download_once_and_writes_nothing(tmp_path, release):
    pairs = ",".join(f"en-{x},{x}-en" for x in PAIRS)
    recipe = REPO / "recipes" / "demo_multilingual.yaml"
    result = CliRunner().invoke(
        app,
        [
            "prep",
            str(recipe),
            f"run_dir={tmp_path / 'run'}",
            f"data.pairs=[{pairs}]",
            f"data.sources={ALL_SOURCES}",
            "data.zero_shot=[]",
            "data.train=null",
            "data.valid=null",
            "data.test=null",
            f"data.cache_dir={tmp_path / 'cache'}",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "inputs: registry corpora, multilingual (en-de, de-en" in out
    assert out.count("fixture-DeEnItNlRo.tgz [train, valid, test] ") == 3
    assert out.count("(listed above)") == 2 and out.count("url: http://127.0.0.1") == 1
    for x in PAIRS:
        assert f"source: fixture_multi_en_{x}:" in out
        assert f"bin/test.en-{x}.{x}.bin, .idx" in out.replace(
            str(tmp_path / "run" / "data") + "/", ""
        )
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    assert release.requests == []


def test_manifest_names_the_source_of_every_input(tmp_path, release):
    prep(_config(tmp_path))
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert manifest["config"]["sources"] == {
        f"en-{x}": f"fixture_multi_en_{x}" for x in (*PAIRS, "it")
    }


# -- the full-size recipes, end to end on the release layout ------------------------------------

FAMILIES = ("dense", "mhmoe", "soft_moe", "switch", "thor", "xmoe")


@pytest.fixture
def real_names_served(tmp_path):
    """The real ``iwslt17_multi_en_{de,nl,ro}`` entries pointed at the fixture release for the
    test (restored afterwards), so that a recipe runs unchanged but for its budget."""
    real = [f"iwslt17_multi_en_{x}" for x in PAIRS]
    real += [f"iwslt17_multi_{a}_{b}" for a, b in NON_ENGLISH]
    originals = [get_source(name) for name in real]
    server = serve_release(tmp_path, {name: name for name in real})
    yield server
    server.close()
    for source in originals:
        register_source(source, replace=True)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_full_size_recipe_runs_end_to_end(family, tmp_path, real_names_served):
    """prep -> train -> eval of recipes/multilingual/iwslt17_en_xx.yaml with the family's piece
    and a CPU budget; data.pairs and data.zero_shot leave out Italian (no Italian text here),
    the recipe's sources stay."""
    recipe = REPO / "recipes" / "multilingual" / "iwslt17_en_xx.yaml"
    piece = REPO / "recipes" / "families" / f"{family}.yaml"
    pairs = ",".join(f"en-{x},{x}-en" for x in PAIRS)
    zero_shot = ",".join(f"{a}-{b},{b}-{a}" for a, b in NON_ENGLISH)
    overrides = [
        str(piece),
        f"run_dir={tmp_path / 'run'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"data.pairs=[{pairs}]",
        f"data.zero_shot=[{zero_shot}]",
        "data.spm.vocab_size=300",
        "train.fp16=false",
        "train.max_tokens=1024",
        "train.update_freq=1",
        "train.max_update=6",
        "eval.checkpoint=last",
        "eval.beam=2",
        "eval.max_len_a=0",
        "eval.max_len_b=10",
    ]
    runner = CliRunner()
    for command in ("prep", "train", "eval"):
        result = runner.invoke(app, [command, str(recipe), *overrides])
        assert result.exit_code == 0, f"moemt {command}: {result.output[-2000:]}"
    report = json.loads((tmp_path / "run" / "eval" / "test" / "report.json").read_text())
    assert list(report["directions"]) == pairs.split(",") + zero_shot.split(",")
    assert all(d["lines"] == XML_LINES for d in report["directions"].values())
    assert report["average"]["BLEU"]["directions"] == 6
    assert report["zero_shot_average"]["BLEU"]["directions"] == 6
    assert report["checkpoint"]["num_updates"] == 6
