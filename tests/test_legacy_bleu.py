"""Legacy tokenised, compound-split BLEU: Moses tokenisation (sacremoses), ##AT## splitting and
multi-bleu.perl's arithmetic (sacreBLEU, tokenize=none, no smoothing) on hand-computed cases, and
in eval's report beside (never instead of) sacreBLEU."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from moe_mt.workflows.evaluate.legacy_bleu import (
    NOTE,
    compound_split,
    legacy_bleu,
    moses_tokenize,
    multi_bleu,
)


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("Hello, world!", "en", "Hello , world !"),
        # English contractions split before the apostrophe, French ones after it.
        ("Don't stop.", "en", "Don &apos;t stop ."),
        ("the 1990's", "en", "the 1990 &apos;s"),
        ("l'homme", "fr", "l&apos; homme"),
        ("geht's", "de", "geht &apos; s"),
        # Commas inside numbers stay; dots inside tokens stay; only a final '.' is split.
        ("Die Zahl 5,300 und 1.000 Euro.", "de", "Die Zahl 5,300 und 1.000 Euro ."),
        # Non-breaking prefixes (Dr.), abbreviations with inner dots (z.B.), numeric-only
        # prefixes before a number (Nr. 5).
        ("Dr. Müller kam z.B. um 5 Uhr.", "de", "Dr. Müller kam z.B. um 5 Uhr ."),
        ("Nr. 5 ist da.", "de", "Nr. 5 ist da ."),
        ("Er kam. Dann", "de", "Er kam . Dann"),
        ("er kam. dann", "de", "er kam. dann"),  # a lower-case next word keeps the dot
        ("U.S. troops.", "en", "U.S. troops ."),
        # Moses' full prefix lists: "Adj." is on the English one, "Fig." only before a number.
        ("See Fig. 3 and Adj. Gen. Smith.", "en", "See Fig . 3 and Adj. Gen. Smith ."),
        # A language without a prefix list uses the English one (as tokenizer.perl falls back),
        # but the generic apostrophe rule, not English's.
        ("Mr. Smith's No. 5 don't.", "xx", "Mr. Smith &apos; s No. 5 don &apos; t ."),
        # Every other non-alphanumeric character is a token, escaped as Moses escapes it.
        ('Er sagte "ja" & <nein>|[x]', "de", "Er sagte &quot; ja &quot; &amp; &lt; nein &gt; "
         "&#124; &#91; x &#93;"),
        ("„Gut“, sagte er.", "de", "„ Gut “ , sagte er ."),
        ("Wait... a...b", "en", "Wait ... a ... b"),
        # Hyphens are left alone by the default (non-aggressive) mode.
        ("e-mail  und\tAnti-Terror", "de", "e-mail und Anti-Terror"),
    ],
)  # fmt: skip
def test_moses_tokenize_hand_computed(text, lang, expected):
    assert moses_tokenize(text, lang) == expected


def test_compound_split_scans_left_to_right_without_overlap():
    assert compound_split("e-mail") == "e ##AT##-##AT## mail"
    assert compound_split("Rhein-Main-Gebiet") == ("Rhein ##AT##-##AT## Main ##AT##-##AT## Gebiet")
    # Perl's s{(\S)-(\S)}{...}g resumes after the consumed 'b': the second hyphen stays.
    assert compound_split("a-b-c") == "a ##AT##-##AT## b-c"
    assert compound_split("a - b -c d-") == "a - b -c d-"


def test_multi_bleu_hand_computed():
    # Perfect precisions, hypothesis 5 tokens against 8: BP = exp(1 - 8/5).
    result = multi_bleu(["a b c d e"], ["a b c d e f g h"])
    assert result.precisions == (100.0, 100.0, 100.0, 100.0)
    assert result.score == pytest.approx(100 * math.exp(1 - 8 / 5))
    assert result.format().startswith("BLEU = 54.88, 100.0/100.0/100.0/100.0 (BP=0.549")
    # 5/6, 3/5, 1/4, 0/3: one zero precision gives 0 (multi-bleu.perl does not smooth).
    zero = multi_bleu(["the cat sat on the mat"], ["the cat is on the mat"])
    assert zero.precisions == pytest.approx((500 / 6, 60.0, 25.0, 0.0))
    assert zero.score == 0.0
    # Counts are clipped by the reference and pooled over the corpus before dividing.
    pooled = multi_bleu(["the the the the", "a b c d"], ["the cat", "a b c d"])
    assert pooled.precisions == pytest.approx((500 / 8, 300 / 6, 200 / 4, 100 / 2))
    assert pooled.brevity_penalty == 1.0 and (pooled.sys_len, pooled.ref_len) == (8, 6)
    assert pooled.score == pytest.approx(100 * (5 / 8 * 3 / 6 * 2 / 4 * 1 / 2) ** 0.25)
    # No 4-grams at all: multi-bleu.perl has no effective order, so the score is 0.
    short = multi_bleu(["a b c"], ["a b c"])
    assert short.precisions == (100.0, 100.0, 100.0, 0.0) and short.score == 0.0
    empty = multi_bleu([""], ["a"])
    assert empty.score == 0.0 and empty.brevity_penalty == 0.0
    assert (
        empty.format()
        == "BLEU = 0.00, 0.0/0.0/0.0/0.0 (BP=0.000, ratio=0.000, hyp_len=0, ref_len=1)"
    )
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        multi_bleu(["a", "b"], ["a"])


def test_legacy_bleu_entry_tokenises_and_splits_both_sides():
    hyp, ref = ["Das ist ein Rhein-Main-Test."], ["Das ist ein Rhein-Main-Test ."]
    entry = legacy_bleu(hyp, ref, "de")
    assert entry["score"] == 100.0  # the same after tokenisation
    assert (
        entry["sys_len"] == 3 + 5 + 1
    )  # Das ist ein, Rhein ##AT##-##AT## Main ##AT##-##AT## Test, .
    assert entry["compound_split"] is True and entry["note"] == NOTE
    assert "not comparable to sacreBLEU" in entry["note"]
    plain = legacy_bleu(hyp, ref, "de", compound=False)
    assert plain["sys_len"] == 5 and plain["compound_split"] is False
    # Splitting compounds rewards a half-right compound: more matching n-grams.
    half = (["ein Rhein-Neckar-Test ."], ["ein Rhein-Main-Test ."])
    assert (
        legacy_bleu(*half, "de")["precisions"][0] > legacy_bleu(*half, "de", False)["precisions"][0]
    )


def test_eval_reports_legacy_bleu_only_when_asked(trained_demo, tmp_path):
    from moe_mt.workflows.evaluate.evaluation import evaluate, read_lines
    from tests.conftest import TINY_MODEL, demo_config

    run = tmp_path / "run"
    shutil.copytree(trained_demo, run)
    pair = tmp_path / "pair"
    pair.mkdir()
    for lang in ("en", "de"):
        lines = read_lines(run / "data" / "text" / "en-de" / f"test.{lang}")[:30]
        (pair / f"x.{lang}").write_text("".join(f"{line}\n" for line in lines))
    base = ("data.spm.vocab_size=2000", *TINY_MODEL, "eval.beam=1")
    files = (f"eval.source={pair}/x.en", f"eval.reference={pair}/x.de")

    plain = evaluate(demo_config(run, *base, *files)).report["directions"]["en-de"]
    assert plain["legacy_bleu"] is None

    asked = evaluate(demo_config(run, *base, *files, "eval.legacy_bleu=true"))
    assert asked.out_dir == run / "eval" / "pair_x.en"  # the source's folder and name
    report = json.loads((asked.out_dir / "report.json").read_text())
    assert report == asked.report
    direction = report["directions"]["en-de"]
    hypotheses = read_lines(asked.out_dir / direction["files"]["hypotheses"])
    references = read_lines(pair / "x.de")
    assert direction["legacy_bleu"] == legacy_bleu(hypotheses, references, "de")
    assert direction["scores"] == plain["scores"]  # sacreBLEU is still there, unchanged
    assert "BLEU" in direction["scores"] and "sacremoses" in direction["legacy_bleu"]["tokenizer"]
