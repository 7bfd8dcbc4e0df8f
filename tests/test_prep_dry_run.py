"""``moemt prep --dry-run``: what would be downloaded (URLs, sizes, checksums, cache paths, cached
or not) and produced, for local and registry recipes, every shipped recipe included; nothing is
written, neither in the run directory nor in the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_mt.cli.main import app
from moe_mt.config import load_config
from moe_mt.data_prep.sources import get_source
from moe_mt.workflows.prep.plan import prep_plan
from tests.conftest import REPO

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
# Pieces (and family pieces, named beside a recipe) are not recipes on their own.
RECIPES = [
    p for p in RECIPES if {"pieces", "families"}.isdisjoint(p.relative_to(REPO / "recipes").parts)
]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")) if root.exists() else []


def _dry_run(*args: str) -> str:
    result = CliRunner().invoke(app, ["prep", *args, "--dry-run"])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_local_recipe(tmp_path):
    out = _dry_run(str(REPO / "recipes" / "demo.yaml"), f"run_dir={tmp_path / 'run'}")
    corpus = REPO / "corpora" / "tatoeba_en_de"
    size = (corpus / "train.de").stat().st_size
    assert f"  train: {corpus / 'train.de'} ({size / 1000:.1f} KB)" in out
    assert "sentencepiece unigram, 8,000 pieces, joint" in out
    assert "splits: en-de/train, en-de/valid, en-de/test" in out
    for produced in ("config.yaml", "data/spm.model", "data/bin/dict.de.txt",
                     "data/text/en-de/test.de", "data/bin/valid.en-de.en.bin"):  # fmt: skip
        assert str(tmp_path / "run" / produced) in out
    assert _files(tmp_path) == []


def _source_args(tmp_path: Path, name: str, src: str, tgt: str) -> list[str]:
    return [
        str(REPO / "recipes" / "demo.yaml"),
        f"run_dir={tmp_path / 'run'}",
        f"data.source={name}",
        f"data.src={src}",
        f"data.tgt={tgt}",
        "data.train=null",
        "data.valid=null",
        "data.test=null",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]


def test_registry_recipe_lists_urls_sizes_checksums_and_cache_state(tmp_path):
    args = _source_args(tmp_path, "wmt16_en_de", "en", "de")
    out = _dry_run(*args)
    downloads = tmp_path / "cache" / "downloads"
    for archive in get_source("wmt16_en_de").archives():  # the three training archives
        assert f"  {archive.filename} [train] {archive.size / 1e6:.1f} MB, not cached" in out
        for url in archive.urls:
            assert f"    url: {url}" in out
        assert f"    checksum: sha256 {archive.sha256}" in out
        assert f"    path: {downloads / archive.filename}" in out
    # newstest2013 / 2014 come from sacrebleu's registry: its MD5, no published sha256.
    assert "sacrebleu-wmt13-test.tgz [valid] size unknown, not cached" in out
    assert "url: https://statmt.org/wmt14/test-full.tgz" in out
    assert "(sacrebleu's); sha256 unverified" in out
    assert "downloads: 5 files, 5 to fetch (1.7 GB + sizes unknown)" in out
    assert _files(tmp_path) == []

    # A download the downloader would reuse (file + its .sha256 record) shows as cached.
    downloads.mkdir(parents=True)
    (downloads / "training-parallel-nc-v11.tgz").write_bytes(b"x")
    (downloads / "training-parallel-nc-v11.tgz.sha256").write_text("x")
    before = _files(tmp_path)
    out = _dry_run(*args)
    assert "training-parallel-nc-v11.tgz [train] 75.2 MB, cached" in out
    assert "downloads: 5 files, 4 to fetch" in out
    assert _files(tmp_path) == before


def test_unverified_archive_and_holdout_and_lowercase(tmp_path):
    args = _source_args(tmp_path, "iwslt14_de_en", "de", "en")
    out = _dry_run(*args, "data.lowercase=true")
    assert "iwslt14-de-en.tgz [train, test] size unknown, not cached" in out
    assert "checksum: unverified (no published checksum; recorded on first download)" in out
    assert "valid.de, valid.en (held out: lines n of train with n % 23 == 0)" in out
    assert f"lowercased copies: {tmp_path / 'cache' / 'lowercased'}" in out
    assert "lowercase: True" in out
    # Once a first download recorded its hash, the plan shows it (still unverified).
    (tmp_path / "cache").mkdir()
    digest = "ab" * 32
    record = {"iwslt14-de-en.tgz": {"sha256": digest, "verified": False}}
    (tmp_path / "cache" / "checksums.json").write_text(json.dumps(record))
    out = _dry_run(*args)
    assert f"checksum: unverified (sha256 {digest} recorded on first use)" in out


def test_bad_registry_recipe_is_a_one_line_error(tmp_path):
    args = _source_args(tmp_path, "wmt16_en_de", "en", "fr")
    result = CliRunner().invoke(app, ["prep", *args, "--dry-run"])
    assert result.exit_code == 1
    assert "data.source=wmt16_en_de is en-de, but data.src=en data.tgt=fr" in result.stderr


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_dry_runs_without_writing(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("MOEMT_CACHE_DIR", str(tmp_path / "cache"))  # recipes use the default
    cfg = load_config(recipe, [f"run_dir={tmp_path / 'run'}"])
    lines = prep_plan(cfg).lines
    assert lines[-1] == "dry run: nothing was downloaded or written"
    assert any(line.startswith("vocabulary: ") for line in lines)
    assert _files(tmp_path) == []
