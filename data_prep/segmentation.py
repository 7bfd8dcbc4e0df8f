"""Subword segmentation other than sentencepiece: subword-nmt BPE on Moses tokens, or none.

``data.subword`` picks how text becomes the pieces fairseq is trained on:

- ``sentencepiece`` (:mod:`.spm`): a model trained on the cleaned training text, the default.
- ``bpe``: the fairseq-era preparation (Sennrich et al. 2016; the Multi30k, IWSLT and WMT scripts
  of that time): with ``data.moses``, Moses ``normalize-punctuation.perl -l LANG`` then
  ``tokenizer.perl -l LANG`` (default mode, escaped) through sacremoses, then subword-nmt BPE
  with ``@@`` continuation marks, from given codes (``data.bpe.codes``) or ``data.bpe.merges``
  joint merges learned on the tokenised training text of both sides (``learn_joint_bpe``
  without a vocabulary filter).
- ``none``: the files are segmented already (fairseq-preprocess semantics): every
  whitespace-separated token is a piece, taken as it is.

After decoding, ``@@ `` marks are removed (fairseq's ``--remove-bpe``); with ``data.moses`` the
tokens are then detokenised (sacremoses' ``MosesDetokenizer``, unescaped), so ``moemt
translate`` prints text of the input's form. :meth:`Segmenter.tokenized` gives the form that
fairseq-era papers score BLEU on (lowercased Moses tokens, BPE removed; multi-bleu.perl).

Each segmenter has the two methods of sentencepiece's processor that translation uses
(``encode(lines, out_type=str)``, ``decode(pieces)``), so the translators take either.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from moe_mt.errors import MoeMtError

SUBWORDS = ("sentencepiece", "bpe", "none")
BPE_SEPARATOR = "@@"
# fairseq's --remove-bpe "@@ ": a mark before a space joins the tokens; one at the end of a line
# (a hypothesis that stopped inside a word) is dropped too, as fairseq's post_process does.
_BPE_MARKS = re.compile(r"@@( |$)")


def remove_bpe(line: str) -> str:
    return _BPE_MARKS.sub("", line.rstrip("\n")).rstrip()


@cache
def _normalizer(lang: str):
    from sacremoses import MosesPunctNormalizer

    # perl_parity: normalize-punctuation.perl maps a ’ that is not between two letters to ",
    # sacremoses' default to ' (Multi30k's „Hook ’em Horns“ reads &quot; in the Perl output).
    return MosesPunctNormalizer(lang, perl_parity=True)


@cache
def _tokenizer(lang: str):
    from sacremoses import MosesTokenizer

    return MosesTokenizer(lang)


@cache
def _detokenizer(lang: str):
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer(lang)


def moses_tokenize(line: str, lang: str) -> str:
    """``normalize-punctuation.perl -l lang | tokenizer.perl -l lang`` (default mode: hyphens
    stay inside words; ``& | < > ' " [ ]`` escaped) on one line."""
    # Perl reads each line with its newline, which normalize-punctuation.perl's "period before a
    # closing quote" rule (``(\.+)"(\s*[^<])``, every language but en and cs) matches as
    # ``[^<]``: a quote at the end of a line moves before the period there. sacremoses strips
    # its input's newline itself, after applying its rules, so the newline is given back here.
    return moses_tokens(_normalizer(lang).normalize(line.rstrip("\n") + "\n"), lang)


def moses_tokens(text: str, lang: str) -> str:
    """``tokenizer.perl -l lang`` alone (default mode, escaped) on one line."""
    return _tokenizer(lang).tokenize(
        text, aggressive_dash_splits=False, return_str=True, escape=True
    )


def moses_detokenize(line: str, lang: str) -> str:
    return _detokenizer(lang).detokenize(line.split(), unescape=True)


class Segmenter:
    """Text of one language to pieces and back (``bpe`` and ``none``; see the module)."""

    def __init__(self, lang: str, moses: bool, codes: Path | None):
        """``codes``: subword-nmt's, for ``bpe``; None for ``none`` (segmented already)."""
        self.lang = lang
        self.moses = moses
        self._bpe = None
        if codes is not None:
            from subword_nmt.apply_bpe import BPE

            with open(codes, encoding="utf-8") as f:
                self._bpe = BPE(f, separator=BPE_SEPARATOR)

    def tokenize(self, line: str) -> str:
        """The Moses tokens of a text line (the line itself without ``data.moses``)."""
        return moses_tokenize(line, self.lang) if self.moses else line.rstrip("\n").strip()

    def encode(self, lines: list[str], out_type=str) -> list[list[str]]:
        tokens = (self.tokenize(line) for line in lines)
        if self._bpe is None:
            return [t.split() for t in tokens]
        return [self._bpe.segment(t).split() for t in tokens]

    def decode(self, pieces: list[str]) -> str:
        tokens = remove_bpe(" ".join(pieces))
        return moses_detokenize(tokens, self.lang) if self.moses else tokens

    def reference(self, line: str) -> str:
        """A reference line as decoded hypotheses read: a segmented reference (``none``) loses
        its ``@@`` marks; raw text (``bpe``) is what it is."""
        return remove_bpe(line) if self._bpe is None else line.rstrip("\n")

    @property
    def convention(self) -> str:
        """How :meth:`tokenized` text was tokenised, for reports."""
        if self.moses:
            from importlib.metadata import version

            return (
                f"Moses normalize-punctuation.perl + tokenizer.perl -l {self.lang} (default mode, "
                f"escaped; sacremoses {version('sacremoses')}), BPE removed"
            )
        if self._bpe is None:
            return "the prepared files' tokens (data.subword=none), '@@ ' removed"
        return "whitespace tokens, BPE removed"

    def tokenized(self, text: str) -> str:
        """A decoded hypothesis or a reference as fairseq-era papers score it: lowercase is the
        data's (``data.lowercase``), Moses tokens, no BPE (``none``: the tokens as given)."""
        return moses_tokenize(text, self.lang) if self.moses else text


class LineEncoder:
    """A segmenter as prep's encoder: lines in, lines of space-separated pieces out."""

    def __init__(self, segmenter: Segmenter):
        self.segmenter = segmenter

    def encode(self, lines: list[str]) -> list[str]:
        return [" ".join(pieces) for pieces in self.segmenter.encode(lines)]


def text_segmenter(data_dir: Path, files: dict, lang: str) -> Segmenter | None:
    """The :class:`Segmenter` of ``lang`` for data prepared with ``bpe`` or ``none``; None for
    sentencepiece (whose text is raw and has no tokenised form)."""
    if files.get("subword", "sentencepiece") == "sentencepiece":
        return None
    return load_segmenter(data_dir, files, lang)


def load_segmenter(data_dir: Path, files: dict, lang: str):
    """What translates ``lang``'s text to pieces and back for a prepared ``data/`` (its
    manifest's ``files``): a sentencepiece processor, or a :class:`Segmenter`."""
    kind = files.get("subword", "sentencepiece")  # data prepared before data.subword existed
    if kind == "sentencepiece":
        import sentencepiece

        model = _prepared_file(data_dir, files["spm"][lang])
        return sentencepiece.SentencePieceProcessor(model_file=str(model))
    codes = _prepared_file(data_dir, files["bpe_codes"]) if kind == "bpe" else None
    return Segmenter(lang, bool(files.get("moses")), codes)


def _prepared_file(data_dir: Path, name: str) -> Path:
    """A file of the prepared data, or one line saying it is gone (sentencepiece and
    subword-nmt would fail on it with their own errors, ``RuntimeError: NOT_FOUND``)."""
    path = data_dir / name
    if not path.is_file():
        raise MoeMtError(f"{path}: missing from the prepared data; run `moemt prep` again")
    return path


def learn_joint_bpe(train_token_files: list[Path], merges: int, codes: Path) -> None:
    """subword-nmt's ``learn_bpe`` on the concatenated tokenised training text of both sides
    (``learn_joint_bpe_and_vocab.py -s merges`` without its vocabulary files)."""
    import io

    from subword_nmt.learn_bpe import learn_bpe

    text = io.StringIO()
    for path in train_token_files:
        text.write(Path(path).read_text(encoding="utf-8"))
    text.seek(0)
    with open(codes, "w", encoding="utf-8") as out:
        learn_bpe(text, out, merges, min_frequency=2, is_dict=False, total_symbols=False)


def check_codes(path: Path, key: str = "data.bpe.codes") -> Path:
    """A readable subword-nmt codes file, or one line naming the key and the path."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise MoeMtError(f"{key}: {path}: cannot be read ({type(exc).__name__})") from None
    if not first.startswith("#version:") and len(first.split()) != 2:
        raise MoeMtError(
            f"{key}: {path}:1: not a subword-nmt codes file (a '#version: 0.2' line, then "
            "one merge 'a b' per line)"
        )
    return path


def check_subword(data_cfg) -> None:
    """``data.subword``, ``data.moses`` and ``data.bpe`` fit together, or one line saying why."""
    if data_cfg.subword not in SUBWORDS:
        raise MoeMtError(f"data.subword: '{data_cfg.subword}' is not one of {', '.join(SUBWORDS)}")
    if data_cfg.moses and data_cfg.subword != "bpe":
        raise MoeMtError(
            f"data.moses=true needs data.subword=bpe, not {data_cfg.subword} (sentencepiece "
            "segments raw text itself; none takes the files as they are)"
        )
    if data_cfg.subword == "bpe" and data_cfg.bpe.codes is not None:
        check_codes(Path(data_cfg.bpe.codes))
    if data_cfg.subword == "bpe" and data_cfg.bpe.codes is None and data_cfg.bpe.merges < 1:
        raise MoeMtError(
            f"data.bpe.merges={data_cfg.bpe.merges}: give at least 1 merge, or data.bpe.codes"
        )
