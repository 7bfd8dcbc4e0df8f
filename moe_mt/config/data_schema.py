"""The ``data`` section of the recipe schema: corpora, cleaning, sentencepiece, BPE."""

# No `from __future__ import annotations` here: omegaconf 2.0 reads the dataclass field types.
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import MISSING


@dataclass
class CleanConfig:
    """Filters applied to the training split only (valid and test are never altered)."""

    min_words: int = field(
        default=1,
        metadata={"help": "drop pairs with fewer whitespace-separated words on either side"},
    )
    max_words: int = field(
        default=250,
        metadata={"help": "drop pairs with more whitespace-separated words on either side"},
    )
    max_length_ratio: float = field(
        default=3.0,
        metadata={"help": "drop pairs whose word counts differ by more than this factor"},
    )
    dedup: bool = field(
        default=True,
        metadata={"help": "drop exact duplicate (source, target) pairs, keeping the first"},
    )


@dataclass
class SpmConfig:
    """sentencepiece model(s), trained on the cleaned training split only."""

    vocab_size: int = field(
        default=8000, metadata={"help": "sentencepiece vocabulary size (per model)"}
    )
    model_type: str = field(
        default="unigram", metadata={"help": "sentencepiece algorithm: unigram | bpe | char | word"}
    )
    character_coverage: float = field(
        default=1.0,
        metadata={
            "help": (
                "share of characters the model covers (0.9995 is usual for large CJK vocabularies)"
            )
        },
    )
    joint: bool = field(
        default=True, metadata={"help": "one model for both languages (false: one per language)"}
    )
    input_sentence_size: int = field(
        default=2_000_000,
        metadata={"help": "training sentences sampled to train sentencepiece (0: all)"},
    )
    seed: int = field(default=1, metadata={"help": "seed of that sample"})
    threads: int = field(
        default=4,
        metadata={
            "help": (
                "threads of sentencepiece training: the model depends on their number (not on "
                "the machine's cores), so it is a data setting, not data.workers"
            )
        },
    )


@dataclass
class BpeConfig:
    """subword-nmt BPE of ``data.subword=bpe`` (``data_prep/segmentation.py``)."""

    codes: Optional[str] = field(
        default=None,
        metadata={
            "help": "a subword-nmt codes file to apply (null: learn data.bpe.merges on train)"
        },
    )
    merges: int = field(
        default=10000,
        metadata={"help": "joint merges learned on the tokenised training text of both sides"},
    )


@dataclass
class DataConfig:
    """Parallel text: ``<prefix>.<src>`` and ``<prefix>.<tgt>`` per split, line-aligned.

    Multilingual (``pairs`` set, ``src``/``tgt`` unused): every direction ``a-b`` reads
    ``<prefix>.a`` and ``<prefix>.b`` with ``{pair}`` in a prefix replaced by ``a-b``, or by
    ``b-a`` where only those files exist (one corpus serves both directions), or the registry
    corpus that ``sources`` names for its language pair; one joint sentencepiece model and
    dictionary (``moe_mt/workflows/prep/corpora.py``).

    Inputs are local files (``train`` and ``valid`` mandatory, ``test`` optional) or a corpus of
    the download registry (``source``; multilingual: ``sources``), not both.
    """

    src: str = field(
        default=MISSING,
        metadata={
            "help": (
                "source language code, the files' suffix (e.g. en); mandatory unless data.pairs is "
                "set"
            )
        },
    )
    tgt: str = field(
        default=MISSING,
        metadata={"help": "target language code (e.g. de); mandatory unless data.pairs is set"},
    )
    pairs: List[str] = field(
        default_factory=list,
        metadata={"help": "multilingual: the trained directions, e.g. [en-de, de-en]"},
    )
    zero_shot: List[str] = field(
        default_factory=list,
        metadata={
            "help": (
                "multilingual: directions tested but never trained (their test set only), e.g. "
                "[de-it]"
            )
        },
    )
    train: Optional[str] = field(
        default=None,
        metadata={
            "help": "path prefix of the local training files (<prefix>.<src>, <prefix>.<tgt>)"
        },
    )
    valid: Optional[str] = field(
        default=None, metadata={"help": "path prefix of the local validation files"}
    )
    test: Optional[str] = field(
        default=None, metadata={"help": "path prefix of the local test files"}
    )
    source: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "download registry corpus that prep fetches instead of local files (`moemt ls "
                "sources`)"
            )
        },
    )
    sources: Dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": (
                "multilingual: a registry corpus per language pair, {en-de: iwslt17_multi_en_de, "
                "...}"
            )
        },
    )
    cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "where downloads are kept (null: $MOEMT_CACHE_DIR, else ~/.cache/moemt)"},
    )
    lowercase: bool = field(
        default=False,
        metadata={"help": "lowercase every split, both sides (as fairseq's IWSLT14 preparation)"},
    )
    max_line_chars: int = field(
        default=2000,
        metadata={"help": "longer lines are dropped from train and are an error in valid/test"},
    )
    joined_dictionary: bool = field(
        default=True,
        metadata={
            "help": "one fairseq dictionary for both sides (needed by model.share_all_embeddings)"
        },
    )
    workers: Optional[int] = field(
        default=None,
        metadata={
            "help": (
                "processes for validation + cleaning, the dictionary and binarisation, threads "
                "for encoding (null: the machine's cores); the prepared data are the same "
                "whatever the number"
            )
        },
    )
    clean: CleanConfig = field(
        default_factory=CleanConfig, metadata={"help": "training-split filters"}
    )
    subword: str = field(
        default="sentencepiece",
        metadata={
            "help": (
                "segmentation: sentencepiece (data.spm) | bpe (subword-nmt, data.bpe) | none "
                "(the files are segmented already and taken as they are; '@@ ' removed after "
                "decoding)"
            )
        },
    )
    moses: bool = field(
        default=False,
        metadata={
            "help": (
                "Moses punctuation normalisation and tokenisation (sacremoses, escaped) before "
                "the subwords, as fairseq-era papers prepared text; detokenised after decoding"
            )
        },
    )
    spm: SpmConfig = field(default_factory=SpmConfig, metadata={"help": "sentencepiece model(s)"})
    bpe: BpeConfig = field(default_factory=BpeConfig, metadata={"help": "subword-nmt BPE"})
