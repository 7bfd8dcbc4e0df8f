"""data.subword (bpe, none), data.moses and eval.tokenized_bleu on slices of Multi30k as Wu et
al. 2021 prepared it (../shared/data/multi30k_wu2021_en_de) and of its raw text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from moe_mt.data_prep.segmentation import Segmenter, remove_bpe
from moe_mt.errors import MoeMtError
from moe_mt.workflows.evaluate.legacy_bleu import tokenized_bleu
from tests.conftest import REPO, TINY_MODEL

RECIPE = REPO / "recipes" / "multi30k" / "wu2021_tiny.yaml"


def _slice(src: Path, dest: Path, lines: int) -> None:
    with open(src, encoding="utf-8") as f:
        dest.write_text("".join(next(f) for _ in range(lines)), encoding="utf-8")


@pytest.fixture
def wu2021(shared_data) -> Path:
    return shared_data / "multi30k_wu2021_en_de"


def _sliced_corpus(root: Path, folder: Path, names: dict[str, str], lines: int) -> Path:
    root.mkdir()
    for split, name in names.items():
        for lang in ("en", "de"):
            _slice(folder / f"{name}.{lang}", root / f"{split}.{lang}", lines)
    return root


def _config(run_dir: Path, corpus: Path, *overrides: str):
    from moe_mt.config import load_config

    return load_config(
        RECIPE,
        [
            f"run_dir={run_dir}",
            *(f"data.{s}={corpus / s}" for s in ("train", "valid", "test")),
            *overrides,
        ],
    )


def test_remove_bpe_is_fairseqs():
    assert remove_bpe("ein kl@@ einer hund@@ \n") == "ein kleiner hund"
    assert remove_bpe("no marks here") == "no marks here"
    assert remove_bpe("a@@b") == "a@@b"  # only a mark before a space (or the end) joins
    # Segmented data (none): pieces are the tokens; decoding removes the marks, and a reference
    # line loses them as a hypothesis does.
    presegmented = Segmenter("de", False, None)
    assert presegmented.encode(["ein kl@@ einer hund ."]) == [["ein", "kl@@", "einer", "hund", "."]]
    assert presegmented.decode(["ein", "kl@@", "einer", "hund", "."]) == "ein kleiner hund ."
    assert presegmented.reference("ein kl@@ einer hund .\n") == "ein kleiner hund ."


def test_the_authors_files_prepare_to_fairseqs_joined_dictionary(tmp_path, wu2021):
    """The whole training split as given (subword none): 9,712 types, as fairseq-preprocess
    --joined-dictionary builds over these files; nothing cleaned away; no piece changed."""
    from moe_mt.workflows.prep.pipeline import prep

    cfg = _config(tmp_path / "run", wu2021, "data.test=" + str(wu2021 / "test2016"))
    cfg.data.train, cfg.data.valid = str(wu2021 / "train"), str(wu2021 / "valid")
    manifest = prep(cfg).manifest
    assert manifest["dictionary_size"] == {"en": 9712, "de": 9712}
    assert manifest["files"]["subword"] == "none" and manifest["files"]["spm"] == {}
    train = manifest["corpora"]["en-de"]["splits"]["train"]
    assert train["lines"]["kept"] == 29000 and train["tokens"]["en"]["unknown"] == 0
    # Tokens per line + </s>, as the files' own whitespace tokens count them.
    words = sum(len(line.split()) + 1 for line in open(wu2021 / "train.en", encoding="utf-8"))
    assert train["tokens"]["en"]["tokens"] == words


def test_raw_text_with_the_authors_codes_gives_their_files(shared_data, wu2021):
    """lowercase + Moses normalisation and tokenisation + their BPE codes on the raw Multi30k
    text gives their segmented lines (the full splits: benchmarks/wu2021_prep_check.py)."""
    raw = shared_data / "multi30k_en_de"
    for lang in ("en", "de"):
        segmenter = Segmenter(lang, True, wu2021 / "bpe.codes")
        for raw_name, theirs in (("valid", "valid"), ("test", "test2016")):
            lines = open(raw / f"{raw_name}.{lang}", encoding="utf-8").read().splitlines()
            want = open(wu2021 / f"{theirs}.{lang}", encoding="utf-8").read().splitlines()
            mine = [" ".join(p) for p in segmenter.encode([line.lower() for line in lines])]
            assert mine == want, (lang, raw_name)


def test_moses_preparation_is_the_perl_scripts():
    """The two rules where sacremoses' defaults part from the Perl scripts the authors ran
    (both seen in Multi30k's German training text)."""
    german = Segmenter("de", True, None)
    # normalize-punctuation.perl: a quote before a final period moves behind it even at the end
    # of a line (Perl's line keeps its newline, which the rule's [^<] matches).
    assert german.tokenize('sie sagt: "wir sind alle arbeitnehmer."') == (
        "sie sagt : &quot; wir sind alle arbeitnehmer &quot; ."
    )
    # A ’ not between two letters is ", not ' (sacremoses' perl_parity).
    assert german.tokenize("das „hook ’em horns“-zeichen.") == (
        "das &quot; hook &quot; em horns &quot; -zeichen ."
    )


def test_bpe_learned_from_raw_text_round_trips(tmp_path, shared_data):
    """data.subword=bpe with learned merges: the codes, '@@ ' pieces in the binarised data, and
    the translator's segmenter decoding them back to text."""
    from moe_mt.data_prep.segmentation import load_segmenter
    from moe_mt.workflows.prep.pipeline import prep

    corpus = _sliced_corpus(
        tmp_path / "raw",
        shared_data / "multi30k_en_de",
        {"train": "train", "valid": "valid", "test": "test"},
        300,
    )
    cfg = _config(
        tmp_path / "run",
        corpus,
        "data.subword=bpe",
        "data.moses=true",
        "data.lowercase=true",
        "data.bpe.merges=200",
    )
    manifest = prep(cfg).manifest
    data = tmp_path / "run" / "data"
    codes = (data / manifest["files"]["bpe_codes"]).read_text(encoding="utf-8").splitlines()
    assert codes[0].startswith("#version") and len(codes) == 201
    assert manifest["versions"]["subword-nmt"] != "not installed"
    segmenter = load_segmenter(data, manifest["files"], "de")
    line = 'Ein Hund rennt durch den Schnee, "schnell".'
    pieces = segmenter.encode([line.lower()])[0]
    assert any(p.endswith("@@") for p in pieces)  # 200 merges cannot hold every word
    assert segmenter.decode(pieces) == 'ein hund rennt durch den schnee, "schnell".'
    assert segmenter.tokenized(line.lower()) == (
        "ein hund rennt durch den schnee , &quot; schnell &quot; ."
    )
    # Another number of merges is other data: prep rebuilds, and says nothing is up to date.
    cfg.data.bpe.merges = 100
    assert not prep(cfg).up_to_date


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.subword=wordpiece"], "data.subword: 'wordpiece' is not one of"),
        (["data.moses=true"], "data.moses=true needs data.subword=bpe, not none"),
        (["data.subword=bpe", "data.bpe.codes=/nonexistent/codes"], "/nonexistent/codes"),
    ],
)
def test_subword_settings_that_do_not_fit_are_one_line(tmp_path, wu2021, overrides, message):
    from moe_mt.workflows.prep.pipeline import prep

    cfg = _config(tmp_path / "run", wu2021, *overrides)
    with pytest.raises(MoeMtError, match=message) as err:
        prep(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "data").exists()


def test_codes_that_are_not_codes_name_the_file(tmp_path, wu2021):
    from moe_mt.workflows.prep.pipeline import prep

    bad = tmp_path / "codes"
    bad.write_text("this is not\na codes file at all\n", encoding="utf-8")
    cfg = _config(tmp_path / "run", wu2021, "data.subword=bpe", f"data.bpe.codes={bad}")
    with pytest.raises(MoeMtError, match=f"{bad}:1: not a subword-nmt codes file"):
        prep(cfg)


def test_tokenized_bleu_is_multi_bleu_in_fairseqs_format():
    # Unigram 4/5, bigram 2/4, trigram 1/3, 4-gram 0/2 -> 0 (no smoothing, as fairseq).
    result = tokenized_bleu(["a b c d e"], ["a b c x e"], "as given")
    assert result["score"] == 0.0 and result["precisions"][:3] == [80.0, 50.0, 33.33]
    perfect = tokenized_bleu(["a b c d e", "f g h i"], ["a b c d e", "f g h i"], "as given")
    assert perfect["formatted"] == (
        "BLEU4 = 100.00, 100.0/100.0/100.0/100.0 (BP=1.000, ratio=1.000, syslen=9, reflen=9)"
    )
    # Shorter output: brevity penalty exp(1 - 10/9).
    short = tokenized_bleu(["a b c d e", "f g h i"], ["a b c d e", "f g h i j"], "as given")
    assert short["brevity_penalty"] == pytest.approx(0.8948, abs=1e-4)


def test_train_and_eval_on_segmented_data(tmp_path, wu2021):
    """A few epochs of a tiny model on 300 segmented pairs, then eval as the recipe does: the
    average of the last epoch checkpoints, hypotheses without '@@', references without them,
    and the paper's BLEU4 beside sacreBLEU."""
    from moe_mt.workflows.evaluate.evaluation import evaluate
    from moe_mt.workflows.prep.pipeline import prep
    from moe_mt.workflows.train.trainer import train

    corpus = _sliced_corpus(
        tmp_path / "seg", wu2021, {"train": "train", "valid": "valid", "test": "test2016"}, 300
    )
    run_dir = tmp_path / "run"
    cfg = _config(
        run_dir,
        corpus,
        *TINY_MODEL,
        "train.max_tokens=1024",
        "train.update_freq=1",
        "train.max_update=16",  # 8 batches per epoch: two epoch ends
        "train.warmup_updates=5",
        "eval.average_last=2",
        "eval.beam=2",
    )
    prep(cfg)
    train(cfg)
    assert len(list((run_dir / "checkpoints").glob("checkpoint[0-9]*.pt"))) >= 2
    result = evaluate(cfg)
    report = json.loads((result.out_dir / "report.json").read_text())
    assert report["checkpoint"]["choice"] == "average"
    assert Path(report["checkpoint"]["path"]).name == "average_last2_epochs.pt"
    entry = report["directions"]["en-de"]
    bleu4 = entry["tokenized_bleu"]
    assert bleu4["formatted"].startswith("BLEU4 = ")
    # Reference length: test2016's first 300 lines in words, '@@ ' removed.
    lines = (corpus / "test.de").read_text(encoding="utf-8").splitlines()
    assert bleu4["ref_len"] == sum(len(remove_bpe(line).split()) for line in lines)
    assert (result.out_dir / "en-de" / "hyp.txt").is_file()
    assert "tok:13a" in entry["scores"]["BLEU"]["signature"]

    # compare shows the paper's BLEU4 beside sacreBLEU, each with its bootstrap, against
    # references without '@@' (the bootstrap's baseline score is the report's own).
    from moe_mt.workflows.compare.comparison import compare

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    from moe_mt.config import load_config

    evaluate(load_config(other, ["eval.beam=1", "eval.name=test"]))  # replaces the beam-2 report
    result = compare([run_dir, other], tmp_path / "cmp", summaries=False, resamples=50)
    assert result["metrics"] == ["BLEU", "chrF2", "TER", "BLEU4 tok"]
    bootstrap = result["runs"][1]["bootstrap"]["en-de"]
    assert bootstrap["BLEU4 tok"]["baseline"] == pytest.approx(bleu4["score"], abs=0.01)
    assert bootstrap["BLEU"]["baseline"] == pytest.approx(entry["scores"]["BLEU"]["score"])
    assert "BLEU4 tok" in (tmp_path / "cmp" / "compare.md").read_text()


def test_tokenized_bleu_refuses_sentencepiece_runs(tmp_path, trained_demo):
    from moe_mt.config import load_config
    from moe_mt.workflows.evaluate.evaluation import evaluate

    run = tmp_path / "demo"
    shutil.copytree(trained_demo, run)
    cfg = load_config(run, ["eval.tokenized_bleu=true"])
    with pytest.raises(MoeMtError, match="eval.tokenized_bleu=true needs data prepared with"):
        evaluate(cfg)


def test_dry_run_names_the_subwords_it_would_use(tmp_path, wu2021):
    from moe_mt.workflows.prep.plan import prep_plan

    given = "\n".join(prep_plan(_config(tmp_path / "run", wu2021)).lines)
    assert "vocabulary: the files' own tokens (segmented already)" in given
    assert "sentencepiece" not in given and "spm.model" not in given
    codes = wu2021 / "bpe.codes"
    bpe = "\n".join(
        prep_plan(
            _config(tmp_path / "run", wu2021, "data.subword=bpe", "data.moses=true",
                    f"data.bpe.codes={codes}")
        ).lines
    )  # fmt: skip
    assert f"vocabulary: Moses tokens, subword-nmt BPE from {codes}" in bpe
    assert str(tmp_path / "run" / "data" / "bpe.codes") in bpe
