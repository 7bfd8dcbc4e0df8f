"""Legacy tokenised BLEU with compound splitting: the number WMT En-De papers report.

Not sacreBLEU's default, and not comparable to it: it is computed on Moses-tokenised text in which
every hyphen between two non-space characters is split off as ``##AT##-##AT##``, as tensor2tensor's
``get_ende_bleu.sh`` and fairseq's ``examples/scripts/compound_split_bleu.sh`` do (Vaswani et al.
2017, Ott et al. 2018 and the MoE papers that follow them report this). ``moemt eval`` adds it to
``report.json`` under ``legacy_bleu`` beside sacreBLEU, only with ``eval.legacy_bleu: true``.

The three steps, each done by the library that implements its reference:

1. :func:`moses_tokenize` (:func:`.segmentation.moses_tokens`): Moses ``tokenizer.perl -l LANG``
   in its default mode, through sacremoses' ``MosesTokenizer`` (the Python port fairseq's
   ``--tokenizer moses`` uses, with Moses' full per-language non-breaking prefix lists):
   ``aggressive_dash_splits=False`` is tokenizer.perl without ``-a`` (what the scripts above run:
   hyphens stay inside words), and
   ``escape=True`` escapes ``& | < > ' " [ ]`` as tokenizer.perl does. A language code without a
   prefix list (``xx``) falls back to the English list, as tokenizer.perl does (with a warning);
   its apostrophes still follow the generic rule (``'`` split off on both sides), not English's.
   Where sacremoses differs from tokenizer.perl: its source leaves out the Finnish/Swedish colon
   rule and the Somali apostrophe rule (commented out there), so ``fi``, ``sv`` and ``so`` text is
   tokenised by the generic rules. sacrebleu's ``13a`` / ``intl`` tokenizers are not used: 13a
   keeps apostrophes and non-ASCII quotes attached and intl splits every hyphen, which changes
   exactly what compound splitting counts.
2. :func:`compound_split`: Perl's ``s{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g``, scanning left to
   right without overlap (``a-b-c`` becomes ``a ##AT##-##AT## b-c``, as in Perl). No library has
   it; it is one regex.
3. :func:`multi_bleu`: Moses ``multi-bleu.perl`` with one reference, through sacreBLEU's ``BLEU``
   on the tokenised text: ``tokenize="none"`` (split on whitespace only), ``smooth_method="none"``
   (a zero n-gram precision gives 0, as multi-bleu.perl's ``log(0) = -9999999999``),
   ``effective_order=False`` (all four orders always count, so a corpus without 4-grams scores 0,
   as in multi-bleu.perl), case-sensitive, brevity penalty exp(1 - r/c) when c < r and 0 when
   c = 0. ``force=True`` only silences sacreBLEU's warning that the input looks tokenised. Same
   numbers as multi-bleu.perl; :meth:`MultiBleu.format` prints its line.
"""

from __future__ import annotations

from dataclasses import dataclass

import regex

from moe_mt.data_prep.segmentation import moses_tokens as moses_tokenize

NOTE = "tokenised BLEU (Moses tokenizer, multi-bleu.perl); not comparable to sacreBLEU"

_COMPOUND = regex.compile(r"(\S)-(\S)")


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
        return (
            f"BLEU = {self.score:.2f}, {self._precisions()} (BP={self.brevity_penalty:.3f}, "
            f"ratio={self._ratio():.3f}, hyp_len={self.sys_len}, ref_len={self.ref_len})"
        )

    def fairseq_format(self) -> str:
        """fairseq-generate's line for the same numbers."""
        return (
            f"BLEU4 = {self.score:.2f}, {self._precisions()} (BP={self.brevity_penalty:.3f}, "
            f"ratio={self._ratio():.3f}, syslen={self.sys_len}, reflen={self.ref_len})"
        )

    def entry(self, formatted: str, tokenizer: str, note: str) -> dict:
        """The fields a ``report.json`` BLEU entry shares, rounded as the report shows them."""
        return {
            "score": round(self.score, 2),
            "formatted": formatted,
            "precisions": [round(p, 2) for p in self.precisions],
            "brevity_penalty": round(self.brevity_penalty, 4),
            "sys_len": self.sys_len,
            "ref_len": self.ref_len,
            "tokenizer": tokenizer,
            "case_sensitive": True,
            "note": note,
        }

    def _precisions(self) -> str:
        return "/".join(f"{x:.1f}" for x in self.precisions)

    def _ratio(self) -> float:
        return self.sys_len / self.ref_len if self.ref_len else 0.0


def multi_bleu_metric():
    """sacreBLEU's ``BLEU`` set up as multi-bleu.perl (see the module's docstring, step 3)."""
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="none", smooth_method="none", effective_order=False, force=True)


def multi_bleu(hypotheses: list[str], references: list[str]) -> MultiBleu:
    """Corpus BLEU of whitespace-tokenised lines against one reference each (multi-bleu.perl)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    result = multi_bleu_metric().corpus_score(hypotheses, [references])
    return MultiBleu(
        result.score, tuple(result.precisions), result.bp, result.sys_len, result.ref_len
    )


def legacy_bleu(
    hypotheses: list[str], references: list[str], lang: str, compound: bool = True
) -> dict:
    """The ``legacy_bleu`` entry of ``report.json``: detokenised lines in, labelled score out."""
    from importlib.metadata import version

    def prepare(line: str) -> str:
        tokens = moses_tokenize(line, lang)
        return compound_split(tokens) if compound else tokens

    result = multi_bleu([prepare(h) for h in hypotheses], [prepare(r) for r in references])
    tokenizer = (
        f"moses tokenizer.perl -l {lang} (default mode, escaped; "
        f"sacremoses {version('sacremoses')})"
    )
    return {**result.entry(result.format(), tokenizer, NOTE), "compound_split": compound}


TOKENIZED_NOTE = (
    "BLEU4 on the tokenised text with BPE removed, as fairseq's generate (--remove-bpe) and "
    "multi-bleu.perl score it; not comparable to sacreBLEU"
)


def tokenized_bleu(hypotheses: list[str], references: list[str], convention: str) -> dict:
    """The ``tokenized_bleu`` entry of ``report.json``: lines that are tokenised already (BPE
    removed; ``convention`` says how they were tokenised), scored as fairseq-era papers did.

    fairseq's ``generate.py`` with ``--remove-bpe`` scores whitespace tokens with its own BLEU
    (``fairseq.scoring.bleu``: four orders, no smoothing, brevity penalty exp(1 - r/c)), the
    numbers of multi-bleu.perl; :func:`multi_bleu` computes them. ``formatted`` is generate's
    line (``BLEU4 = ..., p1/p2/p3/p4 (BP=..., ratio=..., syslen=..., reflen=...)``). One
    difference: generate scores against the binarised reference, whose out-of-dictionary tokens
    read ``<<unk>>`` and never match; here the reference text is scored as it is."""
    result = multi_bleu(hypotheses, references)
    return result.entry(result.fairseq_format(), convention, TOKENIZED_NOTE)
