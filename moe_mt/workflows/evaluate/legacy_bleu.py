"""Legacy tokenised BLEU with compound splitting: the number WMT En-De papers report.

Not sacreBLEU, and not comparable to it: it is computed on Moses-tokenised text in which every
hyphen between two non-space characters is split off as ``##AT##-##AT##``, as tensor2tensor's
``get_ende_bleu.sh`` and fairseq's ``examples/scripts/compound_split_bleu.sh`` do (Vaswani et al.
2017, Ott et al. 2018 and the MoE papers that follow them report this). ``moemt eval`` adds it to
``report.json`` under ``legacy_bleu`` beside sacreBLEU, only with ``eval.legacy_bleu: true``.

The three steps, each as its reference defines it:

1. :func:`moses_tokenize`: Moses ``tokenizer.perl`` in its default mode (what the scripts above
   run: no ``-a`` aggressive hyphen splitting, special characters escaped as ``&amp;`` ``&#124;``
   ``&lt;`` ``&gt;`` ``&apos;`` ``&quot;`` ``&#91;`` ``&#93;``), written here from its rules:
   separate every character that is not a letter, digit, space, ``.``, ``'``, `````, ``,`` or
   ``-``; keep ``...`` runs together; split ``,`` unless between digits; split apostrophes by the
   language's rule (English: ``don 't``; French/Italian: ``l' homme``; others: ``' `` alone);
   split a word-final ``.`` unless the word is a non-breaking prefix, holds another ``.`` and a
   letter (``z.B.``), or the next word starts in lower case. sacrebleu's ``13a`` / ``intl``
   tokenizers were not used: 13a keeps apostrophes and non-ASCII quotes attached and intl splits
   every hyphen, which changes exactly what compound splitting counts. Moses ships long
   per-language prefix lists; :data:`NONBREAKING_PREFIXES` holds the single capital letters and
   common abbreviations of English, German and French only. That affects only a word-final ``.``
   of a rarer abbreviation followed by a capitalised word, the same way on both sides.
2. :func:`compound_split`: Perl's ``s{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g``, scanning left to
   right without overlap (``a-b-c`` becomes ``a ##AT##-##AT## b-c``, as in Perl).
3. :func:`multi_bleu`: Moses ``multi-bleu.perl`` with one reference (fairseq-score computes the
   same): corpus-level clipped n-gram precisions for n = 1..4 over whitespace tokens, geometric
   mean with no smoothing (a zero precision gives 0), brevity penalty exp(1 - r/c) when c < r,
   case-sensitive.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import regex

NOTE = "tokenised BLEU (Moses tokenizer, multi-bleu.perl); not comparable to sacreBLEU"

# Moses's lists are per language and long; these are the single capital letters every list has
# and common abbreviations. Value 2: a prefix only before a number (``No. 5``), as Moses marks it.
_LETTERS = {chr(c): 1 for c in range(ord("A"), ord("Z") + 1)}
NONBREAKING_PREFIXES = {
    "en": {
        **_LETTERS,
        **dict.fromkeys("Mr Mrs Ms Dr Prof Sr Jr St Mt Gen Gov Sen Rep Lt Col Capt Sgt".split(), 1),
        **dict.fromkeys("vs etc Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec".split(), 1),
        **dict.fromkeys("No Nos Art pp".split(), 2),
    },
    "de": {
        **_LETTERS,
        **dict.fromkeys("Dr Prof Hr Fr Hrsg bzw ca usw vgl evtl ggf inkl Mio Mrd Str".split(), 1),
        **dict.fromkeys("Jan Feb Mär Apr Jun Jul Aug Sep Sept Okt Nov Dez".split(), 1),
        **dict.fromkeys("Nr Art Abs S".split(), 2),
    },
    "fr": {
        **_LETTERS,
        **dict.fromkeys("M MM Mme Mlle Dr Pr Me St Ste etc cf env av".split(), 1),
        **dict.fromkeys("No n°".split(), 2),
    },
}

_SPECIAL = regex.compile(r"([^\p{Alphabetic}\p{Nd}\s\.\'\`\,\-])")
_COMPOUND = regex.compile(r"(\S)-(\S)")
_ESCAPES = (
    ("&", "&amp;"),  # first: the others introduce '&'
    ("|", "&#124;"),
    ("<", "&lt;"),
    (">", "&gt;"),
    ("'", "&apos;"),
    ('"', "&quot;"),
    ("[", "&#91;"),
    ("]", "&#93;"),
)
_A, _N = r"\p{Alphabetic}", r"\p{N}"
_APOSTROPHE_RULES = {
    # (pattern, replacement), applied in order, as tokenizer.perl's language branches.
    "en": (
        (rf"([^{_A}])'([^{_A}])", r"\1 ' \2"),
        (rf"([^{_A}{_N}])'([{_A}])", r"\1 ' \2"),
        (rf"([{_A}])'([^{_A}])", r"\1 ' \2"),
        (rf"([{_A}])'([{_A}])", r"\1 '\2"),  # don't -> don 't
        (rf"([{_N}])'(s)", r"\1 '\2"),  # 1990's -> 1990 's
    ),
    "fr": (
        (rf"([^{_A}])'([^{_A}])", r"\1 ' \2"),
        (rf"([^{_A}])'([{_A}])", r"\1 ' \2"),
        (rf"([{_A}])'([^{_A}])", r"\1 ' \2"),
        (rf"([{_A}])'([{_A}])", r"\1' \2"),  # l'homme -> l' homme
    ),
}
_APOSTROPHE_RULES["it"] = _APOSTROPHE_RULES["fr"]


def moses_tokenize(text: str, lang: str) -> str:
    """One line tokenised as Moses ``tokenizer.perl -l lang`` (default mode, escaped)."""
    text = regex.sub(r"\s+", " ", f" {text} ")
    text = regex.sub(r"[\x00-\x1f]", "", text)
    text = _SPECIAL.sub(r" \1 ", text)
    # Runs of dots become one token of their own ("a...b" -> "a ... b").
    text = regex.sub(r"\.(\.+)", lambda m: " " + "DOTMULTI" * (len(m.group(1)) + 1) + " ", text)
    text = regex.sub(rf"([^{_N}]),", r"\1 , ", text)  # comma, unless within a number
    text = regex.sub(rf",([^{_N}])", r" , \1", text)
    text = regex.sub(rf"([{_N}]),$", r"\1 ,", text)
    rules = _APOSTROPHE_RULES.get(lang)
    if rules is None:
        text = text.replace("'", " ' ")
    else:
        for pattern, replacement in rules:
            text = regex.sub(pattern, replacement, text)
    text = " ".join(_final_periods(text.split(), NONBREAKING_PREFIXES.get(lang, _LETTERS)))
    text = regex.sub(r"\.' ?$", " . ' ", text).strip()
    text = regex.sub(r"(?:DOTMULTI)+", lambda m: "." * (len(m.group(0)) // 8), text)
    for char, escaped in _ESCAPES:
        text = text.replace(char, escaped)
    return text


def _final_periods(words: list[str], prefixes: dict[str, int]) -> list[str]:
    """Split a word-final '.' off unless Moses keeps it (see the module docstring)."""
    out = []
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else ""
        match = regex.fullmatch(r"(\S+)\.", word)
        if match:
            pre = match.group(1)
            keep = (
                ("." in pre and regex.search(rf"[{_A}]", pre))
                or prefixes.get(pre) == 1
                or regex.match(r"\p{Lowercase}", following)
                or (prefixes.get(pre) == 2 and regex.match(r"[0-9]", following))
            )
            if not keep:
                word = f"{pre} ."
        out.append(word)
    return out


def compound_split(text: str) -> str:
    """``a-b`` -> ``a ##AT##-##AT## b`` for every hyphen between non-spaces (no overlap)."""
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", text)


@dataclass(frozen=True)
class MultiBleu:
    score: float  # 0..100
    precisions: tuple[float, ...]  # n = 1..4, percent
    brevity_penalty: float
    sys_len: int
    ref_len: int

    def format(self) -> str:
        """multi-bleu.perl's output line."""
        p = "/".join(f"{x:.1f}" for x in self.precisions)
        ratio = self.sys_len / self.ref_len if self.ref_len else 0.0
        return (
            f"BLEU = {self.score:.2f}, {p} (BP={self.brevity_penalty:.3f}, ratio={ratio:.3f}, "
            f"hyp_len={self.sys_len}, ref_len={self.ref_len})"
        )


def multi_bleu(hypotheses: list[str], references: list[str], max_order: int = 4) -> MultiBleu:
    """Corpus BLEU of whitespace-tokenised lines against one reference each (multi-bleu.perl)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    correct, total = [0] * max_order, [0] * max_order
    sys_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.split(), ref.split()
        sys_len += len(h)
        ref_len += len(r)
        for n in range(1, max_order + 1):
            h_grams, r_grams = _ngrams(h, n), _ngrams(r, n)
            total[n - 1] += sum(h_grams.values())
            correct[n - 1] += sum(min(c, r_grams[g]) for g, c in h_grams.items())
    if sys_len == 0:
        return MultiBleu(0.0, (0.0,) * max_order, 0.0, 0, ref_len)
    precisions = tuple(c / t if t else 0.0 for c, t in zip(correct, total, strict=True))
    bp = 1.0 if sys_len >= ref_len else math.exp(1 - ref_len / sys_len)
    if min(precisions) == 0.0:
        score = 0.0  # multi-bleu.perl's log(0) = -9999999999: no smoothing
    else:
        score = bp * math.exp(sum(math.log(p) for p in precisions) / max_order)
    return MultiBleu(100 * score, tuple(100 * p for p in precisions), bp, sys_len, ref_len)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def legacy_bleu(
    hypotheses: list[str], references: list[str], lang: str, compound: bool = True
) -> dict:
    """The ``legacy_bleu`` entry of ``report.json``: detokenised lines in, labelled score out."""

    def prepare(line: str) -> str:
        tokens = moses_tokenize(line, lang)
        return compound_split(tokens) if compound else tokens

    result = multi_bleu([prepare(h) for h in hypotheses], [prepare(r) for r in references])
    return {
        "score": round(result.score, 2),
        "formatted": result.format(),
        "precisions": [round(p, 2) for p in result.precisions],
        "brevity_penalty": round(result.brevity_penalty, 4),
        "sys_len": result.sys_len,
        "ref_len": result.ref_len,
        "tokenizer": f"moses tokenizer.perl -l {lang} (default rules, escaped; moemt's own)",
        "compound_split": compound,
        "case_sensitive": True,
        "note": NOTE,
    }
