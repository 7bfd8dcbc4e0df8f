"""Translate with an export (``moemt export``) in CTranslate2 as :class:`Translator` in fairseq.

The same interface as :class:`moe_mt.workflows.translate.Translator` (``translate``,
``for_direction``, ``num_parameters``, ``arch``, ``num_updates``; ``models`` is empty: there is
no torch module to observe), and the same decoding, option by option (:func:`ct2_options`):

- batches: fairseq's. Sources are ordered as fairseq's inference dataset orders them (by length,
  ties in a permutation seeded with fairseq's default seed 1) and cut by fairseq's own
  ``batch_by_size`` under ``eval.max_tokens`` / ``eval.batch_size``, so that every sentence is
  decoded in a batch of the same shape in both engines;
- ``beam`` -> ``beam_size``; ``lenpen`` -> ``length_penalty``: both rank finished hypotheses by
  their summed log-probability divided by ``length ** lenpen``;
- maximum length: fairseq stops a hypothesis at ``min(int(max_len_a * n + max_len_b),
  max_target_positions - 1)`` tokens before its ``</s>``, where ``n`` is the batch's padded
  source length (``</s>`` and a language token included); CTranslate2 takes one
  ``max_decoding_length`` per call, given that same number per batch (:func:`max_decoding_length`);
- ``no_repeat_ngram_size`` -> ``no_repeat_ngram_size`` (moemt's fairseq fix makes fairseq's work
  on CPU: :mod:`moe_mt.compat`);
- a source longer than the model's positions is cut as :class:`Translator` cuts it;
- multilingual runs: the encoder's language token before the source, the target language's
  token as ``target_prefix`` (fairseq forces it as the first decoded token); language tokens are
  removed from the output.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moe_mt.errors import MoeMtError
from moe_mt.workflows.translate.translator import DecodeOptions, Translations, check_languages

#: An export's own record of itself (:mod:`.exporter`), the one file its ``files`` leave out.
EXPORT_JSON = "export.json"


def export_files(export_dir: Path) -> dict[str, int]:
    """``{name: bytes}`` of every file of ``export_dir`` but :data:`EXPORT_JSON`: what
    export.json records as ``files``, so that a file cut short or replaced is not used."""
    return {
        path.name: path.stat().st_size
        for path in sorted(Path(export_dir).iterdir())
        if path.name != EXPORT_JSON and path.is_file() and not path.is_symlink()
    }


def _own_name(name) -> bool:
    """Whether ``name`` is a plain file name, of a file inside the directory it is read in."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


def export_problem(export_dir: Path, info: dict) -> str | None:
    """Why the files of ``export_dir`` are not those its export.json (``info``) records, or
    None: a name that leaves the directory, a link (to anywhere), a file missing, or of another
    size than recorded (an export made before sizes were recorded has none: not checkable)."""
    export_dir = Path(export_dir)
    recorded = info.get("files")
    spm = info.get("spm")
    if not isinstance(recorded, dict) or not isinstance(spm, dict):
        return f"{EXPORT_JSON} records no file sizes"
    for name in [*spm.values(), *recorded]:
        if not _own_name(name):
            return f"{EXPORT_JSON} names {name!r}, not a file of the export directory"
    for path in sorted(export_dir.iterdir()):
        if path.is_symlink():
            return f"{path.name} is a link; an export holds its own files"
    for name, size in recorded.items():
        path = export_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name}: {path.stat().st_size} bytes, {EXPORT_JSON} records {size}"
    missing = [name for name in spm.values() if name not in recorded]
    if missing:
        return f"{missing[0]} is not among the files {EXPORT_JSON} records"
    return None


def check_export(export_dir: Path, info: dict) -> None:
    """Refuse to load an export whose files are not those its export.json records
    (:func:`export_problem`), in one line, before CTranslate2 or sentencepiece opens them."""
    problem = export_problem(export_dir, info)
    if problem is not None:
        raise MoeMtError(
            f"{export_dir}: damaged export ({problem}); export it again (`moemt export`)"
        )


#: fairseq's default ``--seed``: its inference batches order equal lengths by a permutation
#: drawn under this seed (``get_batch_iterator(seed=1)``).
FAIRSEQ_SEED = 1


def max_decoding_length(width: int, options: DecodeOptions, max_target_positions: int) -> int:
    """fairseq's limit on a hypothesis's tokens before ``</s>`` for a batch whose padded source
    length is ``width`` (``SequenceGenerator``: ``max_len_a * src_len + max_len_b``, capped by
    the decoder's positions)."""
    return min(int(options.max_len_a * width + options.max_len_b), max_target_positions - 1)


def fairseq_batches(lengths: Sequence[int], options: DecodeOptions) -> list[np.ndarray]:
    """Indices of ``lengths`` in fairseq's inference batches: ordered by length (ties by a
    permutation seeded as fairseq's), cut by fairseq's ``batch_by_size``."""
    from fairseq.data import data_utils

    sizes = np.asarray(lengths, dtype=np.int64)
    with data_utils.numpy_seed(FAIRSEQ_SEED):
        order = np.random.permutation(len(sizes))
    order = order[np.argsort(sizes[order], kind="mergesort")]
    return data_utils.batch_by_size(
        order,
        num_tokens_fn=lambda i: int(sizes[i]),
        num_tokens_vec=sizes[order],
        max_tokens=options.max_tokens,
        max_sentences=options.batch_size,
    )


def ct2_options(options: DecodeOptions) -> dict:
    """``translate_batch`` arguments of moemt's decoding options (the length: per batch)."""
    return {
        "beam_size": options.beam,
        "length_penalty": options.lenpen,
        "no_repeat_ngram_size": options.no_repeat_ngram_size,
        "max_input_length": 0,  # sources are cut to the model's positions beforehand
        "return_end_token": False,
    }


@dataclass
class _Languages:
    """Where a direction's language tokens go (multilingual exports)."""

    source_prefix: list[str]  # before the source pieces
    target_prefix: list[str] | None  # forced first target tokens
    strip: frozenset[str]  # every language token: never text


class Ct2Translator:
    """A CTranslate2 export, its sentencepiece models and decoding options."""

    def __init__(self, translator, info: dict, export_dir: Path, options, direction, spm, threads):
        self.translator = translator  # ctranslate2.Translator (shared across directions)
        self.threads = threads
        self.info = info
        self.export_dir = export_dir
        self.options = options
        self.direction = direction
        self.spm = spm  # lang -> SentencePieceProcessor
        self.models = ()  # no torch module: no expert usage to observe, no THOR draws
        arch = info["architecture"]
        self.arch = arch["arch"]
        self.num_parameters = arch["parameters"]
        self.num_updates = info["checkpoint"]["num_updates"]
        self.max_source_positions = arch["max_source_positions"]
        self.max_target_positions = arch["max_target_positions"]
        self.languages = _direction_tokens(info["languages"], *direction)

    @classmethod
    def load(
        cls,
        export_dir: str | Path,
        info: dict,
        options: DecodeOptions,
        direction: tuple[str, str],
        threads: int,
    ) -> Ct2Translator:
        """Load the CTranslate2 model of ``export_dir`` (``info``: its export.json) on the CPU
        with ``threads`` threads, in the weight type it was exported with."""
        import ctranslate2
        import sentencepiece

        export_dir = Path(export_dir)
        check_export(export_dir, info)
        translator = ctranslate2.Translator(
            str(export_dir), device="cpu", compute_type="default", intra_threads=threads
        )
        spm = {
            lang: sentencepiece.SentencePieceProcessor(model_file=str(export_dir / name))
            for lang, name in info["spm"].items()
        }
        return cls(translator, info, export_dir, options, direction, spm, threads)

    @property
    def compute_type(self) -> str:
        return self.translator.compute_type

    def for_direction(self, src: str, tgt: str) -> Ct2Translator:
        if (src, tgt) == self.direction:
            return self
        languages = self.info["languages"]
        if not languages["multilingual"]:
            here = "-".join(self.direction)
            raise MoeMtError(f"{src}-{tgt}: this run translates {here} only (no data.pairs)")
        check_languages(list(languages["tokens"]), src, tgt)
        return Ct2Translator(
            self.translator, self.info, self.export_dir, self.options, (src, tgt), self.spm,
            self.threads,
        )  # fmt: skip

    def translate(
        self, lines: Sequence[str], on_batch: Callable[[int], None] | None = None
    ) -> Translations:
        """Translate ``lines`` (no newlines); ``on_batch(n)`` after each batch of n lines."""
        started = time.perf_counter()
        hypotheses = [""] * len(lines)
        ids, sources, truncated = self._encode(lines)
        if len(ids) < len(lines) and on_batch is not None:
            on_batch(len(lines) - len(ids))  # blank lines: done already
        # fairseq's lengths: pieces + </s> (the dataset's sizes leave the language token out).
        lengths = [len(pieces) + 1 for pieces in sources]
        prefix = self.languages.source_prefix
        options = ct2_options(self.options)
        generated = 0
        spm_tgt = self.spm[self.direction[1]]
        for batch in fairseq_batches(lengths, self.options) if ids else []:
            width = len(prefix) + max(lengths[i] for i in batch)
            target_prefix = self.languages.target_prefix
            results = self.translator.translate_batch(
                [prefix + sources[i] for i in batch],
                target_prefix=[target_prefix] * len(batch) if target_prefix else None,
                max_decoding_length=max_decoding_length(
                    width, self.options, self.max_target_positions
                ),
                **options,
            )
            for i, result in zip(batch, results, strict=True):
                tokens = result.hypotheses[0]
                generated += len(tokens) + 1  # with </s>, as fairseq counts
                text = [t for t in tokens if t not in self.languages.strip]
                hypotheses[ids[i]] = spm_tgt.decode(text)
            if on_batch is not None:
                on_batch(len(batch))
        return Translations(
            hypotheses=hypotheses,
            seconds=time.perf_counter() - started,
            source_tokens=sum(len(prefix) + n for n in lengths),
            generated_tokens=generated,
            truncated=truncated,
        )

    def _encode(self, lines: Sequence[str]):
        """Pieces of the non-blank lines, their line numbers, and how many were cut (as
        :meth:`Translator._encode`: to the model's positions, ``</s>`` and language token
        included)."""
        limit = self.max_source_positions - 1 - len(self.languages.source_prefix)
        ids, texts = [], []
        for number, line in enumerate(lines):
            if line.strip():
                ids.append(number)
                texts.append(line)
        sources, truncated = [], 0
        for pieces in self.spm[self.direction[0]].encode(texts, out_type=str):
            if len(pieces) > limit:
                pieces = pieces[:limit]
                truncated += 1
            sources.append(pieces)
        longest = max((len(p) + 1 for p in sources), default=0)
        if self.options.max_tokens is not None and longest > self.options.max_tokens:
            raise MoeMtError(
                f"eval.max_tokens={self.options.max_tokens} is less than the longest source "
                f"({longest} tokens); raise it"
            )
        return ids, sources, truncated


def _direction_tokens(languages: dict, src: str, tgt: str) -> _Languages:
    tokens = languages.get("tokens") or {}
    if not tokens:
        return _Languages([], None, frozenset())
    encoder = languages.get("encoder_langtok")
    decoder = languages.get("decoder_langtok")
    for name, spec in (("encoder", encoder), ("decoder", decoder)):
        if spec not in (None, "src", "tgt"):
            raise MoeMtError(f"{name} language token {spec!r}: the export supports src or tgt")
    source_prefix = [] if encoder is None else [tokens[src if encoder == "src" else tgt]]
    target_prefix = None if decoder is None else [tokens[tgt]]
    return _Languages(source_prefix, target_prefix, frozenset(tokens.values()))
