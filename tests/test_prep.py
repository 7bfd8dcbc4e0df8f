"""moemt prep: bad input is refused with `file:line: what` and exit code 1; good input is
validated, cleaned, encoded and binarised into an atomic run directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_mt.cli.main import app
from moe_mt.data_prep.download import file_sha256
from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.rundir import RunDir
from moe_mt.workflows.prep.pipeline import prep

SMALL = 300  # lines of the shipped corpus per split in these tests


def _write_corpus(root: Path, shipped: Path) -> Path:
    """A small copy of the shipped corpus (train/valid/test, en/de) to break in tests."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        for lang in ("en", "de"):
            lines = (shipped / f"{split}.{lang}").read_bytes().split(b"\n")[:SMALL]
            (root / f"{split}.{lang}").write_bytes(b"\n".join(lines) + b"\n")
    return root


def _recipe(tmp: Path, corpus: Path, extra: str = "") -> Path:
    recipe = tmp / "recipe.yaml"
    recipe.write_text(
        "name: t\n"
        f"run_dir: {tmp / 'run'}\n"
        "data:\n"
        "  src: en\n  tgt: de\n"
        f"  train: {corpus}/train\n  valid: {corpus}/valid\n  test: {corpus}/test\n"
        "  spm: {vocab_size: 300}\n" + extra,
        encoding="utf-8",
    )
    return recipe


def _set_line(path: Path, number: int, content: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[number - 1] = content
    path.write_bytes(b"\n".join(lines))


@pytest.fixture
def corpus(tmp_path, shipped_corpus) -> Path:
    return _write_corpus(tmp_path / "corpus", shipped_corpus)


def _run(*args: str):
    result = CliRunner().invoke(app, ["prep", *args])
    return result.exit_code, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""


def test_recoverable_problems_in_train_are_dropped_and_counted(tmp_path, corpus):
    from collections import Counter

    base = prep(_load(tmp_path, corpus)).manifest["corpora"]["en-de"]["splits"]["train"]
    base_dropped = Counter(base["dropped"])  # the real text has a few pairs of its own to drop
    _set_line(corpus / "train.en", 2, b"")  # empty
    _set_line(corpus / "train.de", 3, "mojibake \u009a here".encode())  # control character
    _set_line(corpus / "train.de", 4, b"y" * 2500)  # over-long
    _set_line(corpus / "train.en", 6, b"one two three four five six seven eight nine ten")
    _set_line(corpus / "train.de", 6, b"eins")  # ratio 10 > 3
    lines = (corpus / "train.en").read_bytes().split(b"\n")
    de = (corpus / "train.de").read_bytes().split(b"\n")
    lines[10], de[10] = lines[20], de[20]  # exact duplicate of pair 21 at line 11
    (corpus / "train.en").write_bytes(b"\n".join(lines))
    (corpus / "train.de").write_bytes(b"\n".join(de))

    result = prep(_load(tmp_path, corpus))
    train = result.manifest["corpora"]["en-de"]["splits"]["train"]
    added = Counter(train["dropped"]) - base_dropped
    assert added == {"empty": 1, "control_char": 1, "too_long": 1, "ratio": 1, "duplicate": 1}
    d = Counter(train["dropped"])
    after_validation = SMALL - d["empty"] - d["control_char"] - d["too_long"]
    assert train["lines"] == {
        "raw": SMALL,
        "after_validation": after_validation,
        "after_length": after_validation - d["length"],
        "after_ratio": after_validation - d["length"] - d["ratio"],
        "after_duplicate": after_validation - d["length"] - d["ratio"] - d["duplicate"],
        "kept": SMALL - sum(d.values()),
    }
    kept = (result.run_dir / "data" / "text" / "en-de" / "train.en").read_text(encoding="utf-8")
    assert len(kept.splitlines()) == SMALL - sum(d.values())


def _load(tmp_path, corpus, *overrides):
    from moe_mt.config import load_config

    return load_config(_recipe(tmp_path, corpus), list(overrides))


def test_manifest_and_layout(tmp_path, corpus):
    result = prep(_load(tmp_path, corpus))
    data = RunDir(result.run_dir).data
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["format"] == 2 and manifest["multilingual"] is False
    assert manifest["languages"] == {
        "langs": ["de", "en"],
        "directions": ["en-de"],
        "zero_shot": [],
    }
    corpus_info = manifest["corpora"]["en-de"]
    assert corpus_info["text"] == "text/en-de" and not corpus_info["test_only"]
    assert corpus_info["inputs"]["test"]["de"]["sha256"] == file_sha256(corpus / "test.de")
    train = corpus_info["splits"]["train"]
    assert train["lines"]["kept"] == SMALL - sum(train["dropped"].values())
    for split in ("train", "valid", "test"):
        assert corpus_info["splits"][split]["lines"]["raw"] == SMALL
        for lang in ("en", "de"):
            assert (data / "bin" / f"{split}.en-de.{lang}.bin").is_file()
            tokens = corpus_info["splits"][split]["tokens"][lang]["tokens"]
            assert tokens > SMALL  # at least one piece + </s> per sentence
    # valid/test are byte copies: the untouched references for scoring.
    assert (data / "text" / "en-de" / "test.de").read_bytes() == (corpus / "test.de").read_bytes()
    assert (data / "spm.model").is_file()
    assert manifest["versions"]["fairseq"] == "0.12.2"
    stages = manifest["stage_seconds"]  # a slow stage shows in the manifest
    assert list(stages) == ["validate_clean", "subwords", "encode", "dictionary", "binarise"]
    assert all(s >= 0 for s in stages.values()) and sum(stages.values()) <= manifest["seconds"]
    assert (data / "bin" / "dict.en.txt").read_text() == (data / "bin" / "dict.de.txt").read_text()

    # The binarised test set decodes back to the references' pieces.
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(data / "bin" / "dict.de.txt"))
    dataset = data_utils.load_indexed_dataset(str(data / "bin" / "test.en-de.de"), dictionary)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(data / "spm.model"))
    first = sp.decode(dictionary.string(dataset[0]).split())
    assert first == (corpus / "test.de").read_text(encoding="utf-8").splitlines()[0]


def test_rerun_is_noop_and_change_rebuilds(tmp_path, corpus):
    cfg = _load(tmp_path, corpus)
    first = prep(cfg)
    assert not first.up_to_date
    mtime = (first.run_dir / "data" / "manifest.json").stat().st_mtime_ns
    again = prep(cfg)
    assert again.up_to_date
    assert (first.run_dir / "data" / "manifest.json").stat().st_mtime_ns == mtime

    code, _ = _run(str(tmp_path / "run"))  # a run directory works as CONFIG too
    assert code == 0

    changed = prep(_load(tmp_path, corpus, "data.clean.max_words=12"))
    assert not changed.up_to_date
    assert changed.manifest["corpora"]["en-de"]["splits"]["train"]["dropped"]["length"] > 0


def test_interrupted_rebuild_keeps_previous_data(tmp_path, corpus, monkeypatch):
    prep(_load(tmp_path, corpus))
    manifest = (tmp_path / "run" / "data" / "manifest.json").read_bytes()

    from moe_mt.workflows.prep import pipeline as prep_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep_module.spm, "train_spm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prep(_load(tmp_path, corpus, "data.spm.vocab_size=250"))
    assert (tmp_path / "run" / "data" / "manifest.json").read_bytes() == manifest


def test_cli_prints_summary(tmp_path, corpus):
    result = CliRunner().invoke(app, ["prep", str(_recipe(tmp_path, corpus))])
    assert result.exit_code == 0, result.stderr
    assert "prep en-de" in result.stdout and "train" in result.stdout


def test_demo_recipe_paths_resolve_from_any_directory(tmp_path, monkeypatch):
    from moe_mt.config import load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path(__file__).parent.parent / "recipes" / "demo.yaml")
    assert Path(cfg.data.train + ".en").is_file()
    assert cfg.run_dir == str(tmp_path / "runs" / "demo")
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)


def test_run_directory_as_config_is_that_directory(tmp_path, corpus):
    from moe_mt.config import load_config

    prep(_load(tmp_path, corpus))
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "run", moved)
    assert load_config(moved).run_dir == str(moved.resolve())
    assert load_config(moved, [f"run_dir={tmp_path / 'x'}"]).run_dir == str(tmp_path / "x")


def test_the_prepared_data_do_not_depend_on_the_number_of_workers(tmp_path, corpus, monkeypatch):
    """data.workers parallelises validation + cleaning, encoding, dictionary and binarisation;
    the files are the same byte for byte, and the manifests differ only in their timings."""
    from fairseq import file_chunker_utils

    from moe_mt.data_prep import binarize, clean_files

    monkeypatch.setattr(clean_files, "CHUNK_LINES", 32)  # cleaning in 10 chunks

    run = [f"run_dir={tmp_path / 'run'}"]
    data = RunDir(prep(_load(tmp_path, corpus, *run, "data.workers=1")).run_dir).data
    one = tmp_path / "one"
    data.rename(one)
    # These files are small: binarise them on three processes all the same.
    monkeypatch.setattr(binarize, "MIN_BYTES_PER_WORKER", 0)
    used, find_offsets = [], file_chunker_utils.find_offsets

    def counted(path, chunks):
        used.append(chunks)
        return find_offsets(path, chunks)

    monkeypatch.setattr(file_chunker_utils, "find_offsets", counted)
    again = prep(_load(tmp_path, corpus, *run, "data.workers=3"))
    assert not again.up_to_date and set(used) == {3}  # built anew, on three workers
    three = RunDir(again.run_dir).data
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(three) for p in three.rglob("*") if p.is_file())
    for name in files:
        if name.suffix == ".model":  # it records its inputs' (temporary) paths: compare pieces
            assert _pieces(one / name) == _pieces(three / name)
        elif name.name != "manifest.json":
            assert (one / name).read_bytes() == (three / name).read_bytes(), name
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (one, three)]
    for manifest in manifests:
        for timing in ("created", "seconds", "stage_seconds"):
            manifest.pop(timing)
    assert manifests[0] == manifests[1]
    assert "workers" not in manifests[0]["config"]  # how prep ran, not what it wrote

    # Same data config but for the workers: up to date, nothing is rebuilt.
    assert prep(_load(tmp_path, corpus, *run, "data.workers=2")).up_to_date
    with pytest.raises(MoeMtError, match="data.workers=0: must be at least 1"):
        prep(_load(tmp_path, corpus, f"run_dir={tmp_path / 'w0'}", "data.workers=0"))


def test_data_prepared_before_a_data_key_existed_still_fit_their_runs(tmp_path, corpus):
    """A manifest written before ``data.spm.threads`` existed records no such key: it compares
    at its default, so the runs trained on those data go on; a key set otherwise still differs."""
    from omegaconf import OmegaConf

    from moe_mt.workflows.common.manifest import prepared_data_config, recorded_data_config

    cfg = _load(tmp_path, corpus)
    manifest = prep(cfg).manifest
    assert recorded_data_config(manifest) == prepared_data_config(cfg.data)
    del manifest["config"]["spm"]["threads"]
    assert recorded_data_config(manifest) == prepared_data_config(cfg.data)
    other = OmegaConf.merge(cfg, {"data": {"spm": {"threads": 1}}})
    assert recorded_data_config(manifest) != prepared_data_config(other.data)
    manifest["config"]["no_such_key"] = 1
    assert recorded_data_config(manifest) is None
    with pytest.raises(MoeMtError, match="data.spm.threads=0: must be at least 1"):
        prep(_load(tmp_path, corpus, f"run_dir={tmp_path / 't0'}", "data.spm.threads=0"))


def _pieces(model: Path) -> list[tuple[str, float]]:
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model))
    return [(processor.id_to_piece(i), processor.get_score(i)) for i in range(len(processor))]


def test_binarised_ids_are_fairseqs_encode_line(tmp_path, monkeypatch):
    """The fast binariser writes the ids (and dtype) of fairseq's Dictionary.encode_line with its
    tokenize_line, in line order on any number of workers, and counts the <unk> tokens."""
    from fairseq.data import Dictionary, indexed_dataset
    from fairseq.tokenizer import tokenize_line

    from moe_mt.data_prep import binarize

    dictionary = Dictionary()
    for piece in ("▁a", "▁b", "c", "d", "▁the"):
        dictionary.add_symbol(piece)
    lines = ["▁a ▁b c", "  ▁the   zz\t d ", "", "<unk> ▁a", "x\u00a0y ▁a", "d"] * 50
    pieces = tmp_path / "pieces.txt"
    pieces.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    expected = [
        dictionary.encode_line(line, tokenize_line, add_if_not_exist=False, append_eos=True)
        for line in lines
    ]
    unknown = sum(ids.tolist().count(dictionary.unk()) for ids in expected)
    monkeypatch.setattr(binarize, "MIN_BYTES_PER_WORKER", 0)  # a small file, 3 processes
    for workers in (1, 3):
        stats = binarize.binarize_file(pieces, dictionary, tmp_path / f"w{workers}", workers)
        written = indexed_dataset.MMapIndexedDataset(str(tmp_path / f"w{workers}"))
        assert [written[i].tolist() for i in range(len(written))] == [e.tolist() for e in expected]
        assert (stats.sentences, stats.unknown) == (len(lines), unknown)
        assert stats.tokens == sum(len(e) for e in expected)
        assert not list(tmp_path.glob("*.part*"))  # the parts are merged and removed
    assert (tmp_path / "w1.bin").read_bytes() == (tmp_path / "w3.bin").read_bytes()
    assert (tmp_path / "w1.idx").read_bytes() == (tmp_path / "w3.idx").read_bytes()
