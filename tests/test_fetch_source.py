"""``data.source``: prep fetches a registry corpus (served from 127.0.0.1) and prepares it as it
prepares local files; ``data.lowercase`` lowercases every split (fairseq's IWSLT14 rule), the
references in ``text/`` included."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_mt.config import load_config
from moe_mt.data_prep import fetch_source
from moe_mt.data_prep.sources import Archive, Holdout, Part, Source, register_source
from moe_mt.data_prep.sources import unregister_source as unregister
from moe_mt.errors import MoeMtError
from moe_mt.workflows.prep.pipeline import prep
from tests.test_download import Server, make_tar, sha

NAME = "fixture_en_de"
LINES = 240  # per split: enough text for a 100-piece sentencepiece model


def _text(shipped: Path, split: str, lang: str) -> bytes:
    lines = (shipped / f"{split}.{lang}").read_bytes().split(b"\n")[:LINES]
    return b"\n".join(lines) + b"\n"


@pytest.fixture
def served_source(tmp_path, shipped_corpus):
    """A registry source ``fixture_en_de``: one tar of the shipped corpus's first lines, with
    valid held out from train as fairseq's IWSLT14 (every 23rd line) and test as a part."""
    server = Server()
    members = {
        f"c/{split}.{lang}": _text(shipped_corpus, split, lang)
        for split in ("train", "test")
        for lang in ("en", "de")
    }
    body = make_tar(tmp_path / "fixture.tgz", members).read_bytes()
    archive = Archive(
        urls=(server.add("/fixture.tgz", body),),
        filename="fixture.tgz",
        sha256=sha(body),
        sha256_note="test fixture",
        size=len(body),
    )
    source = Source(
        name=NAME,
        description="test fixture",
        languages=("en", "de"),
        splits={
            "train": [Part(archive, {"en": "c/train.en", "de": "c/train.de"})],
            "test": [Part(archive, {"en": "c/test.en", "de": "c/test.de"})],
        },
        holdouts=(Holdout("valid", "train", 23),),
        license="test",
    )
    register_source(source)
    yield server, members
    unregister(NAME)
    server.close()


def _config(tmp_path: Path, *overrides: str):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: t\ndata:\n  src: de\n  tgt: en\n  source: {NAME}\n  cache_dir: cache\n"
        "  spm: {vocab_size: 100}\n",
        encoding="utf-8",
    )
    return load_config(recipe, [f"run_dir={tmp_path / 'run'}", *overrides])


def test_prep_fetches_the_source_then_prepares_it_like_local_files(tmp_path, served_source):
    server, members = served_source
    cfg = _config(tmp_path)
    assert cfg.data.cache_dir == str(tmp_path / "cache")  # relative to the recipe
    result = prep(cfg)
    text = Path(cfg.run_dir) / "data" / "text" / "de-en"
    # The references are the registry's test text, byte for byte (cased: no lowercasing asked).
    assert (text / "test.en").read_bytes() == members["c/test.en"]
    train_en = members["c/train.en"].decode().splitlines()
    valid = [line for i, line in enumerate(train_en, 1) if i % 23 == 0]
    assert (text / "valid.en").read_text().splitlines() == valid
    splits = result.manifest["corpora"]["de-en"]["splits"]
    assert splits["valid"]["lines"]["raw"] == len(valid) == LINES // 23
    assert splits["train"]["lines"]["raw"] == LINES - len(valid)
    inputs = result.manifest["corpora"]["de-en"]["inputs"]
    assert inputs["test"]["en"]["path"].startswith(str(tmp_path / "cache"))
    assert (Path(cfg.run_dir) / "data" / "bin" / "train.de-en.de.bin").is_file()

    requests = len(server.requests)
    again = prep(_config(tmp_path))
    assert again.up_to_date and len(server.requests) == requests  # nothing fetched again


def test_lowercase_applies_to_every_split_and_the_references(tmp_path, served_source):
    _, members = served_source
    cfg = _config(tmp_path, "data.lowercase=true")
    manifest = prep(cfg).manifest
    text = Path(cfg.run_dir) / "data" / "text" / "de-en"
    assert (text / "test.de").read_text() == members["c/test.de"].decode().lower()
    assert (text / "test.de").read_text() != members["c/test.de"].decode()  # it had capitals
    for name in ("train.en", "train.de", "valid.en", "valid.de"):
        content = (text / name).read_text()
        assert content == content.lower() and content
    assert manifest["config"]["lowercase"] is True


def test_lowercased_copies_follow_perls_lc_and_are_reused(tmp_path):
    original = tmp_path / "x.de"
    # Full Unicode lowercase mapping, character by character (Perl's lc does the same):
    # İ (U+0130) becomes i + combining dot above; ß stays; \r is kept for validation to see.
    original.write_text("Der ÄRGER İst GROß\r\nZWEI\n", encoding="utf-8", newline="")
    out = fetch_source.lowercased({"test": {"de": original}}, tmp_path / "lc")
    copy = out["test"]["de"]
    assert copy.read_bytes() == "der ärger i\u0307st groß\r\nzwei\n".encode()
    copy.write_text("marked\n")  # the same original maps to the same copy: it is reused
    again = fetch_source.lowercased({"test": {"de": original}}, tmp_path / "lc")
    assert again["test"]["de"] == copy and copy.read_text() == "marked\n"
    original.write_text("Neu\n")
    changed = fetch_source.lowercased({"test": {"de": original}}, tmp_path / "lc")
    assert changed["test"]["de"] != copy and changed["test"]["de"].read_text() == "neu\n"


def test_lowercase_works_on_local_files_too(tmp_path, shipped_corpus):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "valid", "test"):
        for lang in ("en", "de"):
            (corpus / f"{split}.{lang}").write_bytes(_text(shipped_corpus, split, lang))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: t\ndata: {{src: en, tgt: de, train: {corpus}/train, valid: {corpus}/valid, "
        f"test: {corpus}/test, lowercase: true, cache_dir: {tmp_path / 'c'}, "
        "spm: {vocab_size: 100}}\n",
        encoding="utf-8",
    )
    cfg = load_config(recipe, [f"run_dir={tmp_path / 'run'}"])
    prep(cfg)
    reference = Path(cfg.run_dir) / "data" / "text" / "en-de" / "test.de"
    assert reference.read_text() == (corpus / "test.de").read_text().lower()


def test_wrong_languages_unknown_source_and_mixed_inputs_are_one_line_errors(
    tmp_path, served_source
):
    with pytest.raises(
        MoeMtError, match=f"data.source={NAME} is en-de, but data.src=de data.tgt=fr"
    ):
        prep(_config(tmp_path, "data.tgt=fr"))
    with pytest.raises(
        MoeMtError, match="data.source: unknown corpus source 'nope'.*iwslt14_de_en"
    ):
        prep(_config(tmp_path, "data.source=nope"))
    with pytest.raises(MoeMtError, match=f"data.source={NAME} and data.train exclude each other"):
        _config(tmp_path, f"data.train={tmp_path}/x")
    # Checked before anything is fetched or built.
    assert not (tmp_path / "run" / "data").exists() and not (tmp_path / "cache").exists()


def test_a_bad_download_is_an_error_naming_the_source(tmp_path, served_source):
    server, _ = served_source
    server.files["/fixture.tgz"] = b"changed upstream"
    with pytest.raises(MoeMtError, match=f"data.source={NAME}: .*sha256"):
        prep(_config(tmp_path))
    assert not (tmp_path / "run" / "data").exists()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MOEMT_CACHE_DIR", str(tmp_path / "a"))
    assert fetch_source.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("MOEMT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch_source.default_cache_dir() == tmp_path / "xdg" / "moemt"
