"""The multilingual path: data.pairs prep, translation_multi_simple_epoch training (dense and
MoE), per-direction eval with the macro average, language tokens, translate --src/--tgt.

The small corpus is cut from the shared Tatoeba English-centric set (skipped without it): en-de
and en-fr in both directions and es-en, whose files live under ``en-es/`` (the reversed-name
rule), a few hundred training lines each.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from moe_mt.cli.main import app
from moe_mt.config import load_config
from moe_mt.data_prep.download import file_sha256
from moe_mt.errors import MoeMtError
from moe_mt.workflows.evaluate.evaluation import evaluate
from moe_mt.workflows.evaluate.scoring import macro_average, score
from moe_mt.workflows.prep.corpora import Direction, corpora, pair_files, parse_direction
from moe_mt.workflows.prep.pipeline import prep
from tests.conftest import REPO, TINY_MODEL

PAIRS = ("en-de", "de-en", "en-fr", "fr-en", "es-en")
LINES = {"train": 300, "valid": 30, "test": 20}
#: Fast decoding for tiny, barely trained models: hypotheses of at most 12 tokens.
FAST_EVAL = ("eval.beam=2", "eval.max_len_a=0", "eval.max_len_b=12")
TINY_ML = (*TINY_MODEL, "data.spm.vocab_size=500", "train.save_interval_updates=10")


def _write_corpus(shared: Path, root: Path) -> Path:
    for corpus in ("en-de", "en-fr", "en-es"):
        (root / corpus).mkdir(parents=True)
        for split, n in LINES.items():
            for lang in corpus.split("-"):
                src = shared / "tatoeba_en_xx" / corpus / f"{split}.{lang}"
                with open(src, "rb") as handle:
                    lines = [next(handle) for _ in range(n)]
                (root / corpus / f"{split}.{lang}").write_bytes(b"".join(lines))
    return root


def _recipe(tmp: Path, corpus: Path, pairs=PAIRS, test: str | None = None) -> Path:
    test = test or f"{corpus}/{{pair}}/test"
    recipe = tmp / "ml.yaml"
    recipe.write_text(
        "name: ml\n"
        "data:\n"
        f"  pairs: [{', '.join(pairs)}]\n"
        f"  train: {corpus}/{{pair}}/train\n"
        f"  valid: {corpus}/{{pair}}/valid\n"
        f"  test: {test}\n",
        encoding="utf-8",
    )
    return recipe


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory) -> Path:
    return _write_corpus(shared_data, tmp_path_factory.mktemp("ml_corpus"))


@pytest.fixture(scope="module")
def recipe(corpus, tmp_path_factory) -> Path:
    return _recipe(tmp_path_factory.mktemp("ml_recipe"), corpus)


def _cfg(recipe: Path, run_dir: Path, *overrides: str):
    return load_config(recipe, [f"run_dir={run_dir}", *TINY_ML, *overrides])


@pytest.fixture(scope="module")
def prepped(recipe, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ml_prepped") / "run"
    prep(_cfg(recipe, run_dir))
    return run_dir


@pytest.fixture(scope="module")
def trained(recipe, prepped, tmp_path_factory) -> Path:
    """The prepared run with a tiny dense model trained for 30 updates (read-only)."""
    from moe_mt.workflows.train.trainer import train

    run_dir = tmp_path_factory.mktemp("ml_trained") / "run"
    shutil.copytree(prepped, run_dir)
    train(_cfg(recipe, run_dir, "train.max_update=30"))
    return run_dir


# -- directions and files ----------------------------------------------------------------------


def test_directions_parse_and_share_one_corpus_per_language_pair():
    assert parse_direction("de-en", "k") == Direction("de", "en")
    for bad, what in (("en_de", "not a direction"), ("en-en", "into itself"), ("en-", "not a")):
        with pytest.raises(MoeMtError, match=f"^k: '{bad}' .*{what}"):
            parse_direction(bad, "k")
    dirs = [parse_direction(p, "data.pairs") for p in PAIRS]
    assert corpora(dirs) == {"en-de": ("en", "de"), "en-fr": ("en", "fr"), "es-en": ("es", "en")}


def test_pair_files_layout_rule(tmp_path):
    (tmp_path / "en-de").mkdir()
    for lang in ("en", "de"):
        (tmp_path / "en-de" / f"train.{lang}").write_text("x\n")
        (tmp_path / f"test.{lang}").write_text("x\n")  # multi-way, one file per language
    prefix = f"{tmp_path}/{{pair}}/train"
    expected = {lang: tmp_path / "en-de" / f"train.{lang}" for lang in ("en", "de")}
    assert pair_files(prefix, ("en", "de"), "data.train") == expected
    assert pair_files(prefix, ("de", "en"), "data.train") == expected  # the reversed name
    assert pair_files(f"{tmp_path}/test", ("de", "en"), "data.test") == {
        lang: tmp_path / f"test.{lang}" for lang in ("de", "en")
    }
    with pytest.raises(
        MoeMtError, match=r"fr-en/train\.fr: no such file \(data\.train=.*, pair fr-en\)"
    ):
        pair_files(prefix, ("fr", "en"), "data.train")


# -- prep --------------------------------------------------------------------------------------


def test_prep_writes_one_dictionary_and_the_multilingual_layout(prepped, corpus):
    data = prepped / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["multilingual"] is True
    languages = {"langs": ["de", "en", "es", "fr"], "directions": list(PAIRS), "zero_shot": []}
    assert manifest["languages"] == languages
    assert manifest["corpora"]["en-de"]["directions"] == ["en-de", "de-en"]
    assert manifest["corpora"]["es-en"]["directions"] == ["es-en"]
    # One joint dictionary, saved under every language's name (the task checks they are equal).
    dicts = {
        lang: (data / "bin" / f"dict.{lang}.txt").read_bytes() for lang in "de en es fr".split()
    }
    assert len(set(dicts.values())) == 1
    for name, info in manifest["corpora"].items():
        a, b = info["languages"]
        for split in ("train", "valid", "test"):
            assert info["splits"][split]["lines"]["kept"] > 0
            for lang in (a, b):
                assert (data / "bin" / f"{split}.{name}.{lang}.idx").is_file()
        # inputs by sha256, valid/test kept byte for byte (the references of eval)
        folder = "en-es" if name == "es-en" else name
        for split in ("valid", "test"):
            for lang in (a, b):
                original = corpus / folder / f"{split}.{lang}"
                assert info["inputs"][split][lang]["sha256"] == file_sha256(original)
                assert (data / "text" / name / f"{split}.{lang}").read_bytes() == (
                    original.read_bytes()
                )
        assert info["splits"]["valid"]["lines"]["raw"] == LINES["valid"]
    assert manifest["corpora"]["en-de"]["splits"]["train"]["lines"]["raw"] == LINES["train"]


def test_prep_validates_each_pair_as_a_single_pair(corpus, tmp_path):
    bad = tmp_path / "corpus"
    shutil.copytree(corpus, bad)
    lines = (bad / "en-fr" / "valid.fr").read_text().splitlines(keepends=True)
    lines[4] = "\n"
    (bad / "en-fr" / "valid.fr").write_text("".join(lines))
    recipe = _recipe(tmp_path, bad)
    with pytest.raises(MoeMtError, match=r"en-fr/valid\.fr:5: empty line"):
        prep(_cfg(recipe, tmp_path / "run"))
    with pytest.raises(MoeMtError, match="data.pairs needs data.spm.joint=true"):
        prep(_cfg(recipe, tmp_path / "run", "data.spm.joint=false"))
    with pytest.raises(MoeMtError, match="data.pairs: de-en is listed twice"):
        prep(load_config(_recipe(tmp_path, bad, ("de-en", "de-en")), [f"run_dir={tmp_path}/r"]))
    assert not (tmp_path / "run" / "data").exists()


def test_multi_way_test_set_without_pair_placeholder(corpus, tmp_path):
    # FLORES-200 / NTREX-128 style: test.<lang> for every language, no {pair}.
    multiway = tmp_path / "multiway"
    multiway.mkdir()
    for lang in ("en", "de", "fr", "es"):
        folder = "en-de" if lang in ("en", "de") else f"en-{lang}"
        lines = (corpus / folder / f"test.{lang}").read_bytes().splitlines(keepends=True)
        (multiway / f"test.{lang}").write_bytes(b"".join(lines[:10]))
    run_dir = tmp_path / "run"
    manifest = prep(_cfg(_recipe(tmp_path, corpus, test=f"{multiway}/test"), run_dir)).manifest
    for info in manifest["corpora"].values():
        assert info["splits"]["test"]["lines"]["raw"] == 10
        for lang in info["languages"]:
            assert info["inputs"]["test"][lang]["sha256"] == file_sha256(multiway / f"test.{lang}")


def test_lowercase_applies_to_every_corpus(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("MOEMT_CACHE_DIR", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    prep(_cfg(_recipe(tmp_path, corpus), run_dir, "data.lowercase=true"))
    for name in ("en-de", "es-en"):
        folder = "en-es" if name == "es-en" else name
        for lang in name.split("-"):
            original = (corpus / folder / f"test.{lang}").read_text(encoding="utf-8")
            copied = (run_dir / "data" / "text" / name / f"test.{lang}").read_text(encoding="utf-8")
            assert copied == original.lower() != original


# -- training arguments ------------------------------------------------------------------------


def test_fairseq_task_arguments(recipe, tmp_path):
    from moe_mt.workflows.common.rundir import RunDir
    from moe_mt.workflows.train.fairseq_args import train_args
    from moe_mt.workflows.train.trainer import parse_fairseq_args

    cfg = _cfg(recipe, tmp_path / "run", "train.sampling_temperature=2.0")
    args = train_args(cfg, RunDir(cfg.run_dir))
    parsed = parse_fairseq_args(args).task
    assert parsed._name == "translation_multi_simple_epoch"
    assert parsed.lang_pairs == ",".join(PAIRS)
    assert parsed.langs == ["de", "en", "es", "fr"]  # sorted: stable language-token ids
    assert parsed.sampling_method == "temperature" and parsed.sampling_temperature == 2.0
    assert parsed.encoder_langtok == "src" and parsed.decoder_langtok is True
    assert parsed.source_lang is None  # training: every direction
    with pytest.raises(MoeMtError, match="train.encoder_langtok=both"):
        train_args(_cfg(recipe, tmp_path / "run", "train.encoder_langtok=both"), RunDir(tmp_path))


# -- language tokens ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def translator(trained):
    from moe_mt.workflows.translate.translator import DecodeOptions, Translator

    checkpoint = trained / "checkpoints" / "checkpoint_last.pt"
    return Translator.load(trained, checkpoint, DecodeOptions(beam=2, max_len_a=0, max_len_b=8))


def test_export_keeps_the_language_tokens_and_translates_with_a_target_prefix(
    recipe, trained, tmp_path
):
    """The CTranslate2 export of a multilingual run: the source language token before the
    source, the target's as target prefix; the same greedy translations as fairseq's in every
    direction, language tokens stripped."""
    from moe_mt.workflows.export.ct2_translator import Ct2Translator
    from moe_mt.workflows.export.exporter import export
    from moe_mt.workflows.translate.translator import DecodeOptions, Translator

    result = export(_cfg(recipe, trained), out=tmp_path / "ct2")
    languages = result.info["languages"]
    assert languages["multilingual"] and languages["directions"] == list(PAIRS)
    assert languages["tokens"] == {lang: f"__{lang}__" for lang in ("de", "en", "es", "fr")}
    assert (languages["encoder_langtok"], languages["decoder_langtok"]) == ("src", "tgt")
    options = DecodeOptions(beam=1, max_len_a=0, max_len_b=12)
    checkpoint = trained / "checkpoints" / "checkpoint_last.pt"
    fairseq = Translator.load(trained, checkpoint, options)
    ct2 = Ct2Translator.load(result.out_dir, result.info, options, ("en", "de"), threads=1)
    sentences = ["Where is the station?", "I like tea.", "Tom is here."]
    for src, tgt in (("en", "de"), ("de", "en"), ("en", "fr"), ("es", "en")):
        expected = fairseq.for_direction(src, tgt).translate(sentences).hypotheses
        got = ct2.for_direction(src, tgt).translate(sentences).hypotheses
        assert got == expected and not any("__" in h for h in got)
    # the decoder starts with the target language's token (CTranslate2 returns the prefix)
    pieces = ct2.spm["en"].encode(sentences[0], out_type=str)
    (out,) = ct2.translator.translate_batch([["__en__", *pieces]], target_prefix=[["__fr__"]])
    assert out.hypotheses[0][0] == "__fr__"
    with pytest.raises(MoeMtError, match="language 'it' is not one of the run's"):
        ct2.for_direction("en", "it")


def test_source_carries_its_language_token_and_decoder_starts_with_the_target_one(translator):
    dictionary = translator.task.source_dictionary
    sentences = ["Where is the station?", "I like tea."]
    for src, tgt in (("en", "de"), ("de", "en"), ("en", "fr"), ("es", "en")):
        t = translator.for_direction(src, tgt)
        assert t.direction == (src, tgt)
        _, tokens, _ = t._encode(sentences)
        dataset = t.task.build_dataset_for_inference(tokens, [x.numel() for x in tokens])
        sample = dataset.collater([dataset[i] for i in range(len(tokens))])
        src_tokens = sample["net_input"]["src_tokens"]
        # left-padded: the first non-pad token of each row is the source language token
        first = [row[row.ne(dictionary.pad())][0].item() for row in src_tokens]
        assert first == [dictionary.index(f"__{src}__")] * len(sentences)
        hypos = t.task.inference_step(t.generator, t.models, sample)
        starts = {h[0]["tokens"][0].item() for h in hypos}
        assert starts == {dictionary.index(f"__{tgt}__")}
        # ... and the output text carries no language token
        assert not any("__" in h for h in t.translate(sentences).hypotheses)
    with pytest.raises(MoeMtError, match="en-xx: language 'xx' is not one of the run's"):
        translator.for_direction("en", "xx")


def test_every_language_token_is_stripped_from_the_output(translator, monkeypatch):
    # The generator strips the forced target token only; an undertrained model can emit
    # another language's token mid-sentence, which must not reach the hypothesis text.
    t = translator.for_direction("en", "de")
    dictionary = t.task.target_dictionary
    assert t._language_tokens() == {dictionary.index(f"__{x}__") for x in ("de", "en", "es", "fr")}
    word, other = dictionary.nspecial + 10, dictionary.nspecial + 11  # two sentencepiece pieces
    de, fr = dictionary.index("__de__"), dictionary.index("__fr__")
    emitted = torch.tensor([de, word, fr, other, dictionary.eos()])
    monkeypatch.setattr(
        t.task, "inference_step", lambda g, m, batch: [[{"tokens": emitted}] for _ in batch["id"]]
    )
    (hypothesis,) = t.translate(["Where is the station?"]).hypotheses
    assert "__" not in hypothesis and hypothesis.strip()


def test_dry_run_summary_counts_the_language_tokens(recipe, trained, translator):
    from moe_mt.workflows.train.model_summary import model_summary

    # The model embeds the joint dictionary plus one __<lang>__ token per language: the summary
    # of the config must count exactly the parameters of the model trained from it.
    cfg = _cfg(recipe, trained, "train.max_update=30")
    assert model_summary(cfg)["parameters"] == translator.num_parameters


# -- eval --------------------------------------------------------------------------------------


def test_macro_average_is_the_unweighted_mean_over_directions():
    refs_a = ["the cat sat on the mat", "a dog barked loudly today"]
    refs_b = ["un chat", "le chien aboie fort aujourd'hui", "bonjour", "merci beaucoup"]
    perfect = score(refs_a, refs_a)
    poor = score(["x y z"] * 4, refs_b)
    average = macro_average({"en-xx": perfect, "en-yy": poor})
    for metric in ("BLEU", "chrF2", "TER"):
        expected = (perfect[metric]["score"] + poor[metric]["score"]) / 2
        assert average[metric]["score"] == pytest.approx(expected)
        assert average[metric]["signature"] == perfect[metric]["signature"]
        assert average[metric]["directions"] == 2
    assert average["BLEU"]["score"] == pytest.approx(50.0)  # not the pooled corpus BLEU
    other = {**poor, "BLEU": {**poor["BLEU"], "signature": "tok:intl"}}
    with pytest.raises(MoeMtError, match="BLEU: directions scored with different signatures"):
        macro_average({"a": perfect, "b": other})


class _OracleTranslator:
    """Stands in for a model: "translates" each test line into the line of the same number in
    ``<corpus dir>/test.<tgt>`` of the original corpus, i.e. perfectly, so that each direction
    scores 100 BLEU only if eval scores it against the reference in the target language."""

    def __init__(self, corpus: Path, direction=None):
        self.corpus, self.direction = corpus, direction
        self.models, self.num_parameters, self.arch = [None], 0, "oracle"

    def for_direction(self, src, tgt):
        return _OracleTranslator(self.corpus, (src, tgt))

    def translate(self, lines, on_batch=None):
        from moe_mt.workflows.translate.translator import Translations

        src, tgt = self.direction
        folder = "en-" + (tgt if src == "en" else src)
        source = (self.corpus / folder / f"test.{src}").read_text().splitlines()
        target = (self.corpus / folder / f"test.{tgt}").read_text().splitlines()
        assert list(lines) == source  # the source side is the source language's file
        return Translations(list(target), 1.0, 0, 0, 0)


def test_each_direction_is_scored_against_its_target_language(
    trained, corpus, tmp_path, monkeypatch
):
    from moe_mt.workflows.translate.translator import Translator

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    monkeypatch.setattr(
        Translator,
        "load",
        classmethod(lambda cls, *a, **k: _OracleTranslator(corpus)),
    )
    report = evaluate(load_config(run_dir, [])).report
    assert list(report["directions"]) == list(PAIRS)
    for name, info in report["directions"].items():
        assert info["scores"]["BLEU"]["score"] == pytest.approx(100.0), name
        tgt = name.split("-")[1]
        assert info["files"]["reference"]["path"].endswith(f"test.{tgt}")
        folder = "en-" + (tgt if name.startswith("en-") else name.split("-")[0])
        assert info["files"]["reference"]["sha256"] == file_sha256(corpus / folder / f"test.{tgt}")
    assert report["average"]["BLEU"]["score"] == pytest.approx(100.0)


def test_train_and_eval_dense_end_to_end(recipe, trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    summary = json.loads((run_dir / "logs" / "train_summary.json").read_text())
    assert summary["num_updates"] == 30 and float(summary["last_valid"]["loss"]) > 0

    result = CliRunner().invoke(
        app, ["eval", str(run_dir), *FAST_EVAL, "eval.directions=[de-en,en-fr]"]
    )
    assert result.exit_code == 0, result.output
    assert "de-en" in result.stdout and "average" in result.stdout and "nrefs:1" in result.stdout
    out = run_dir / "eval" / "test"
    report = json.loads((out / "report.json").read_text())
    assert list(report["directions"]) == ["de-en", "en-fr"]
    for name, info in report["directions"].items():
        hyps = (out / name / "hyp.txt").read_text(encoding="utf-8").split("\n")[:-1]
        assert len(hyps) == info["lines"] == LINES["test"]
        for metric in ("BLEU", "chrF2", "TER"):
            assert info["scores"][metric]["signature"].startswith("nrefs:1")
    for metric in ("BLEU", "chrF2", "TER"):
        scores = [d["scores"][metric]["score"] for d in report["directions"].values()]
        assert report["average"][metric]["score"] == pytest.approx(sum(scores) / 2)

    # translate: one direction, by --src/--tgt; refused without one
    result = CliRunner().invoke(
        app,
        ["translate", str(run_dir), "--src", "de", "--tgt", "en", *FAST_EVAL],
        input="Hallo.\n\n",
    )
    assert result.exit_code == 0, result.output
    assert len(result.stdout.split("\n")[:-1]) == 2
    result = CliRunner().invoke(app, ["translate", str(run_dir)], input="Hallo.\n")
    assert result.exit_code == 1 and "translate takes one direction" in result.stderr

    # compare: per direction, plus their mean, against a baseline (here: the same run)
    from moe_mt.workflows.compare import compare

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    compared = compare([run_dir, other], tmp_path / "cmp", resamples=20, summaries=False)
    assert compared["directions"] == ["de-en", "en-fr"]
    row = compared["runs"][1]
    for metric in ("BLEU", "chrF2", "TER"):
        assert row["scores"][metric] == pytest.approx(report["average"][metric]["score"])
        for name in ("de-en", "en-fr"):
            expected = report["directions"][name]["scores"][metric]["score"]
            assert row["directions"][name][metric] == pytest.approx(expected)
            assert row["bootstrap"][name][metric]["p_value"] == 1.0  # identical systems
    assert "BLEU per direction" in (tmp_path / "cmp" / "compare.md").read_text()


@pytest.mark.slow  # seconds; the default run stays near 6 min (-m slow runs it)
def test_training_resumes_with_the_sampled_multilingual_data(recipe, trained, tmp_path):
    from moe_mt.workflows.train.trainer import checkpoint_update, train

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    result = train(_cfg(recipe, run_dir, "train.max_update=40"))
    assert result.resumed_from_update == 30
    assert checkpoint_update(run_dir / "checkpoints" / "checkpoint_last.pt") == 40
    with pytest.raises(MoeMtError, match=r"train\.sampling_temperature: 5\.0 -> 1\.0"):
        train(_cfg(recipe, run_dir, "train.max_update=50", "train.sampling_temperature=1.0"))


def test_a_run_does_not_inherit_another_runs_best_validation(recipe, prepped, tmp_path):
    from fairseq import checkpoint_utils

    from moe_mt.workflows.train.trainer import train

    # as if an earlier training in this process had reached a loss no new run can beat
    checkpoint_utils.save_checkpoint.best = -1.0
    run_dir = tmp_path / "run"
    shutil.copytree(prepped, run_dir)
    train(_cfg(recipe, run_dir, "train.max_update=10"))
    assert (run_dir / "checkpoints" / "checkpoint_best.pt").is_file()


def test_moe_family_trains_and_evaluates_on_multilingual_batches(recipe, prepped, tmp_path):
    from moe_mt.workflows.train.trainer import train

    run_dir = tmp_path / "run"
    shutil.copytree(prepped, run_dir)
    cfg = _cfg(
        recipe, run_dir, "train.max_update=10", "model.arch=switch_transformer_demo",
        "train.criterion=moe_label_smoothed_cross_entropy", "model.moe.num_experts=4",
        "model.moe.freq=1", *FAST_EVAL, "eval.directions=[fr-en]",
    )  # fmt: skip
    summary = train(cfg).summary
    assert summary["num_updates"] == 10
    valid = summary["last_valid"]
    assert float(valid["loss"]) > 0 and 0 < float(valid["moe_active"]) <= 1
    report = evaluate(cfg).report
    usage = report["directions"]["fr-en"]["expert_usage"]
    assert usage is not None and usage["layers"]
    assert (run_dir / "eval" / "test" / "fr-en" / "expert_usage.png").is_file()


@pytest.mark.parametrize(
    "family",
    [
        ("xmoe_transformer_demo", "moe_label_smoothed_cross_entropy", "model.moe.router_dim=16"),
        ("thor_transformer_demo", "thor_label_smoothed_cross_entropy", "model.moe.num_experts=2"),
        ("mhmoe_transformer_demo", "moe_label_smoothed_cross_entropy", "model.moe.heads=4"),
        (
            "soft_moe_transformer_demo",
            "moe_label_smoothed_cross_entropy",
            "model.moe.sides=encoder",
        ),
    ],
    ids=lambda f: f[0].split("_transformer")[0],
)
@pytest.mark.slow  # seconds; the default run stays near 6 min (-m slow runs it)
def test_other_moe_families_train_and_evaluate(recipe, prepped, tmp_path, family):
    from moe_mt.workflows.train.trainer import train

    arch, criterion, extra = family
    run_dir = tmp_path / "run"
    shutil.copytree(prepped, run_dir)
    cfg = _cfg(
        recipe, run_dir, "train.max_update=10", f"model.arch={arch}",
        f"train.criterion={criterion}", "model.moe.freq=1", extra, *FAST_EVAL,
        "eval.directions=[en-de,es-en]",
    )  # fmt: skip
    assert train(cfg).summary["num_updates"] == 10
    report = evaluate(cfg).report
    assert set(report["directions"]) == {"en-de", "es-en"}
    for info in report["directions"].values():  # THOR: its consistency in every direction
        if arch.startswith("thor"):
            draws = cfg.eval.thor_draws
            assert info["thor"]["draws"] == draws and len(info["thor"]["bleu"]) == draws
        else:
            assert info["thor"] is None


@pytest.mark.slow
def test_demo_multilingual_recipe_prepares_and_trains(shared_data, tmp_path):
    from moe_mt.workflows.train.trainer import train

    cfg = load_config(
        REPO / "recipes" / "demo_multilingual.yaml",
        [f"run_dir={tmp_path / 'run'}", *TINY_MODEL, "train.max_update=20", *FAST_EVAL],
    )
    manifest = prep(cfg).manifest
    assert set(manifest["languages"]["directions"]) == set(cfg.data.pairs)
    assert manifest["corpora"]["de-fr"]["zero_shot"] == ["de-fr", "fr-de"]  # FLORES serves it
    train(cfg)
    report = evaluate(load_config(tmp_path / "run", ["eval.directions=[en-de]"])).report
    assert report["directions"]["en-de"]["lines"] == 1012  # FLORES-200 devtest


def test_zero_shot_directions_are_scored_apart(recipe, trained, shared_data, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    multiway = tmp_path / "flores"  # multi-way: it serves the untrained pairs too
    multiway.mkdir()
    for lang in ("en", "de", "fr", "es"):
        lines = (shared_data / "flores200_devtest" / f"test.{lang}").read_bytes().splitlines(True)
        (multiway / f"test.{lang}").write_bytes(b"".join(lines[:12]))
    # Prepared again with the zero-shot test sets: the same training text gives the same
    # vocabulary, so the trained checkpoint still fits.
    cfg = _cfg(recipe, run_dir, f"data.test={multiway}/test", "data.zero_shot=[de-fr, fr-es]")
    prep(cfg)
    result = CliRunner().invoke(app, ["eval", str(run_dir), *FAST_EVAL])
    assert result.exit_code == 0, result.output
    assert "de-fr (zero-shot)" in result.stdout and "zero-shot average" in result.stdout
    report = json.loads((run_dir / "eval" / "test" / "report.json").read_text())
    assert list(report["directions"]) == [*PAIRS, "de-fr", "fr-es"]
    for name, info in report["directions"].items():
        assert info["zero_shot"] is (name in ("de-fr", "fr-es")) and info["lines"] == 12
    assert report["average"]["BLEU"]["directions"] == len(PAIRS)
    zero_shot = report["zero_shot_average"]["BLEU"]
    scores = [report["directions"][d]["scores"]["BLEU"]["score"] for d in ("de-fr", "fr-es")]
    assert zero_shot["directions"] == 2 and zero_shot["score"] == pytest.approx(sum(scores) / 2)
    # Asked for alone, a zero-shot direction has no supervised average.
    only = evaluate(load_config(run_dir, [*FAST_EVAL, "eval.directions=[fr-es]", "eval.name=zs"]))
    assert only.report["average"] is None and only.report["zero_shot_average"] is not None


def test_eval_name_is_checked_for_multilingual_runs_too(recipe, trained):
    from moe_mt.errors import MoeMtError

    with pytest.raises(MoeMtError, match="eval.name='../x'"):
        evaluate(_cfg(recipe, trained, "eval.name=../x"))
    assert not (trained / "x").exists()  # eval/../x


def test_legacy_bleu_per_direction_of_a_multilingual_run(recipe, trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    cfg = _cfg(
        recipe, run_dir, *FAST_EVAL, "eval.directions=[de-en,en-fr]", "eval.legacy_bleu=true"
    )
    report = evaluate(cfg).report
    for name in ("de-en", "en-fr"):
        legacy = report["directions"][name]["legacy_bleu"]
        assert legacy is not None and 0 <= legacy["score"] <= 100


@pytest.mark.slow  # end-to-end run, seconds (the default run stays near 6 min)
def test_word_level_distillation_of_a_multilingual_run(recipe, trained, tmp_path):
    from moe_mt.workflows.distill import distill

    teacher = tmp_path / "teacher"
    shutil.copytree(trained, teacher)
    overrides = (*FAST_EVAL, "eval.directions=[de-en,en-fr]", f"distill.teacher={teacher}")
    student = tmp_path / "student"
    report = distill(_cfg(recipe, student, *overrides, "train.max_update=3")).report
    # Every row scores the same directions; its BLEU is their macro average.
    evaluated = json.loads((student / "eval" / "test" / "report.json").read_text())
    assert list(evaluated["directions"]) == ["de-en", "en-fr"]
    assert report["student"]["bleu"] == evaluated["average"]["BLEU"]["score"]
    assert set(report["teacher"]["reference_sha256"]) == {"de-en", "en-fr"}
    assert report["init"]["copied"] > 0
    # Sequence-level KD would swap one direction's targets in a corpus that serves two.
    with pytest.raises(MoeMtError, match="^distill.mode=sequence: not for multilingual"):
        distill(_cfg(recipe, tmp_path / "seq", *overrides, "distill.mode=sequence"))
