"""The recipe schema (OmegaConf structured config) and recipe loading: one source of truth for
every key, its default and its help text (each field's ``metadata["help"]``, as fairseq's
dataclasses hold theirs; ``moemt config`` prints them).

A recipe is a YAML file; the CLI takes a recipe path (or a run directory holding the
``config.yaml`` an earlier command wrote) and ``key=value`` overrides. A misspelt or unknown key,
a value of the wrong type or a missing mandatory key is a :class:`MoeMtError` naming the key and
the file (or override) it came from.

Relative paths in a recipe are relative to the recipe file, so that a recipe works from any
working directory; relative paths given as overrides are relative to the working directory.

A recipe may compose shared pieces: ``include: [pieces/data/x.yaml, pieces/schedule/y.yaml]``
(paths relative to the including file) merges each piece in order (a piece may include others,
expanded first), later pieces over earlier ones, then the including file itself, then the pieces
named on the command line (``moemt train recipes/europarl/en_ro.yaml recipes/families/switch.yaml``,
each with its own includes), then the ``key=value`` overrides. An include cycle or a missing
piece is an error naming the file. ``model.arch`` left null is then named by ``model.family`` and
``model.size`` (:func:`resolve_architecture`), so a data set's recipe and a family's piece
compose into one run (``name: europarl_en_ro_${model.family}`` names the run after both).
"""

# No `from __future__ import annotations` here: omegaconf 2.0 reads the dataclass field types.
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from moe_mt.bounds import (
    ALL_OR_AT_LEAST_0,
    AT_LEAST_0,
    AT_LEAST_1,
    POSITIVE,
    PROBABILITY,
    Bound,
)
from moe_mt.errors import MoeMtError
from moe_mt.models import families

# Keys whose values are filesystem paths (resolved to absolute paths on load).
PATH_KEYS = (
    "run_dir",
    "data.train",
    "data.valid",
    "data.test",
    "data.cache_dir",
    "data.bpe.codes",
    "train.tensorboard_logdir",
    "train.upcycle_from",
    "eval.source",
    "eval.reference",
    "eval.bootstrap_baseline",
    "distill.teacher",
    "distill.baseline",
)

RUN_CONFIG = "config.yaml"
INCLUDE_KEY = "include"  # a recipe's list of pieces merged before it


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
    """subword-nmt BPE of ``data.subword=bpe`` (``moe_mt/data_prep/segmentation.py``)."""

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


class MoEConfig:
    """Mixture-of-Experts options, passed to fairseq as ``--moe-<key>`` when set.

    Not written here: the fields are the ``model.moe.*`` options of every model family
    (:mod:`moe_mt.models.families`; the built-in families' in ``moe_mt/models/*_options.py``, a
    plugin's in its module, see ``docs/extending.md``), declared by :func:`_declare_moe_fields`
    and declared again, in place, when a family registers (``ModelConfig.moe`` keeps naming this
    class). Every key is optional with default null, which keeps the architecture's (or
    criterion's) own default; each key's help lists those defaults per family. Dense
    architectures take none of these keys; the loss keys need the family's criterion
    (``train.criterion``); THOR's inference mode is an eval key (``eval.thor_inference``).
    """


def _declare_moe_fields() -> None:
    """Make :class:`MoEConfig` the dataclass of the families' options (see its docstring)."""
    generated = ("__init__", "__repr__", "__eq__", "__hash__", "__match_args__")
    for name in (*generated, "__dataclass_fields__", "__dataclass_params__"):
        if name in vars(MoEConfig):
            delattr(MoEConfig, name)
    MoEConfig.__annotations__ = {}
    for name, declared in families.option_specs().items():
        spec = declared[0][1]  # a shared key's type and help are the same in every family
        MoEConfig.__annotations__[name] = Optional[spec.type]
        setattr(MoEConfig, name, field(default=None, metadata={"help": _moe_help(declared)}))
    dataclass(MoEConfig)


def _moe_help(declared) -> str:
    """A key's help and its default per family: ``experts per MoE layer (switch, xmoe: 8; ...)``."""
    by_default: Dict[str, List[str]] = {}
    for family, spec in declared:
        if spec.default is not None:
            by_default.setdefault(str(spec.default), []).append(family)
    defaults = "; ".join(f"{', '.join(names)}: {value}" for value, names in by_default.items())
    return f"{declared[0][1].help} ({defaults})" if defaults else declared[0][1].help


_declare_moe_fields()
families.on_options_changed(_declare_moe_fields)


@dataclass
class ModelConfig:
    """The fairseq architecture and the options that shape it.

    ``arch`` names a registered fairseq architecture (moemt's are listed by ``moemt ls archs``),
    or, left null, is named by ``family`` and ``size`` (``switch`` + ``iwslt``:
    ``switch_transformer_iwslt``), so that a recipe of a data set and a family piece compose
    (:func:`resolve_architecture`); the width keys left at null take the architecture's defaults.
    ``args`` passes any other model option of that architecture by its fairseq name
    (``{encoder_normalize_before: true}``).
    """

    family: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "model family (`moemt ls archs`): dense | switch | xmoe | thor | mhmoe | "
                "soft_moe; with model.size it names the architecture (null: dense, or "
                "model.arch's)"
            )
        },
    )
    size: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "backbone size: tiny | demo | iwslt | wmt | wmt_big (null: demo, or model.arch's)"
            )
        },
    )
    arch: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "fairseq architecture (`moemt ls archs`), e.g. switch_transformer_iwslt; null: "
                "<family>_transformer_<size> (dense: moemt_transformer_<size>)"
            )
        },
    )
    encoder_layers: Optional[int] = field(
        default=None, metadata={"help": "encoder layers (null: the architecture's)"}
    )
    decoder_layers: Optional[int] = field(
        default=None, metadata={"help": "decoder layers (null: the architecture's)"}
    )
    embed_dim: Optional[int] = field(
        default=None,
        metadata={"help": "model width d of encoder and decoder (null: the architecture's)"},
    )
    ffn_embed_dim: Optional[int] = field(
        default=None,
        metadata={
            "help": (
                "FFN (and each expert's) hidden width of encoder and decoder (null: the "
                "architecture's)"
            )
        },
    )
    attention_heads: Optional[int] = field(
        default=None,
        metadata={"help": "attention heads of encoder and decoder (null: the architecture's)"},
    )
    dropout: float = field(
        default=0.1, metadata={"help": "dropout on embeddings, attention and FFN outputs"}
    )
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(
        default=0.0,
        metadata={
            "help": (
                "dropout on the FFN's hidden activation (and the experts', unless "
                "model.moe.expert_dropout)"
            )
        },
    )
    share_all_embeddings: bool = field(
        default=True,
        metadata={
            "help": (
                "one embedding matrix for encoder, decoder and output projection (needs "
                "data.joined_dictionary)"
            )
        },
    )
    moe: MoEConfig = field(
        default_factory=MoEConfig,
        metadata={"help": "Mixture-of-Experts options (MoE architectures only)"},
    )
    expert_parallel_size: Optional[int] = field(
        default=None,
        metadata={
            "help": (
                "MoE architectures: spread each MoE layer's experts over this many ranks (divides "
                'train.distributed_world_size and model.moe.num_experts; README "Expert '
                'parallelism")'
            )
        },
    )
    args: Dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": (
                "any other option of the architecture by its fairseq name, "
                "{encoder_normalize_before: true}"
            )
        },
    )


@dataclass
class TrainConfig:
    """Optimisation, stopping, checkpointing and logging (fairseq's options of the same name)."""

    criterion: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "fairseq criterion (`moemt ls criteria`); null: the model family's own "
                "(dense: label_smoothed_cross_entropy, MoE families: their auxiliary losses')"
            )
        },
    )
    label_smoothing: float = field(
        default=0.1, metadata={"help": "label smoothing epsilon of the cross-entropy"}
    )
    optimizer: str = field(default="adam", metadata={"help": "fairseq optimizer"})
    adam_betas: List[float] = field(
        default_factory=lambda: [0.9, 0.98], metadata={"help": "Adam's (beta1, beta2)"}
    )
    adam_eps: float = field(default=1e-8, metadata={"help": "Adam's epsilon"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (reached after warmup)"})
    lr_scheduler: str = field(
        default="inverse_sqrt",
        metadata={
            "help": "fairseq lr scheduler: inverse_sqrt | fixed | cosine | polynomial_decay | ..."
        },
    )
    warmup_updates: int = field(
        default=4000, metadata={"help": "updates of linear warmup from warmup_init_lr to lr"}
    )
    warmup_init_lr: float = field(
        default=1e-7, metadata={"help": "learning rate at the first update"}
    )
    clip_norm: float = field(
        default=0.0, metadata={"help": "clip the gradient norm to this (0: no clipping)"}
    )
    max_tokens: Optional[int] = field(
        default=4096, metadata={"help": "tokens per batch and process"}
    )
    batch_size: Optional[int] = field(
        default=None, metadata={"help": "sentences per batch (with or instead of max_tokens)"}
    )
    update_freq: int = field(
        default=1, metadata={"help": "accumulate gradients over this many batches per update"}
    )
    max_update: int = field(
        default=0, metadata={"help": "stop after this many updates (0: no bound)"}
    )
    max_epoch: int = field(
        default=0, metadata={"help": "stop after this many epochs (0: no bound)"}
    )
    max_time_minutes: float = field(
        default=0,
        metadata={
            "help": "training wall-clock budget in minutes, cumulative over resumes (0: none)"
        },
    )
    patience: int = field(
        default=-1,
        metadata={"help": "stop after this many validations without improvement (-1: never)"},
    )
    seed: int = field(
        default=1, metadata={"help": "random seed of initialisation, batching and dropout"}
    )
    upcycle_from: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "sparse upcycling: a dense run directory or checkpoint whose weights start this "
                "MoE run (every expert a copy of the dense FFN, fresh routers; docs/upcycling.md)"
            )
        },
    )
    upcycle_noise: float = field(
        default=0.0,
        metadata={
            "help": "upcycling: each expert weight times 1 + noise * N(0, 1) (0: exact copies)"
        },
    )
    validate_interval: int = field(default=1, metadata={"help": "validate every N epochs"})
    validate_interval_updates: int = field(
        default=0, metadata={"help": "also validate every N updates (0: at epoch ends only)"}
    )
    save_interval_updates: int = field(
        default=0, metadata={"help": "also checkpoint every N updates (0: at epoch ends only)"}
    )
    keep_interval_updates: int = field(
        default=5, metadata={"help": "update checkpoints kept (-1: all)"}
    )
    keep_last_epochs: int = field(
        default=5,
        metadata={
            "help": "epoch checkpoints kept (-1: all); eval.checkpoint=average needs several"
        },
    )
    keep_best_checkpoints: int = field(
        default=-1, metadata={"help": "best checkpoints kept besides checkpoint_best.pt (-1: none)"}
    )
    best_checkpoint_metric: str = field(
        default="loss",
        metadata={"help": "what makes checkpoint_best.pt: loss | bleu (needs eval_bleu)"},
    )
    eval_bleu: bool = field(
        default=False, metadata={"help": "BLEU on valid at each validation (slow: beam search)"}
    )
    eval_bleu_beam: int = field(default=4, metadata={"help": "beam of that validation BLEU"})
    fp16: bool = field(default=False, metadata={"help": "mixed precision in float16 (CUDA only)"})
    bf16: bool = field(
        default=False, metadata={"help": "mixed precision in bfloat16 (CUDA or recent CPUs)"}
    )
    distributed_world_size: int = field(
        default=1, metadata={"help": "data-parallel processes; >1: spawn that many on this node"}
    )
    distributed_timeout_minutes: float = field(
        default=10,
        metadata={
            "help": (
                "a rank that waits longer than this on another (hung) rank fails instead of hanging"
            )
        },
    )
    num_workers: int = field(default=0, metadata={"help": "data loader worker processes"})
    log_interval: int = field(default=50, metadata={"help": "updates between log lines"})
    tensorboard_logdir: Optional[str] = field(
        default=None, metadata={"help": "write TensorBoard logs here (null: none)"}
    )
    sampling_temperature: float = field(
        default=5.0,
        metadata={"help": "multilingual: pair sampling p ~ (n_pair / n)^(1/T) (1: by size)"},
    )
    encoder_langtok: Optional[str] = field(
        default="src",
        metadata={
            "help": "multilingual: prefix the source with the src | tgt language token (null: none)"
        },
    )
    decoder_langtok: bool = field(
        default=True,
        metadata={"help": "multilingual: the target starts with the target language token"},
    )
    fairseq_args: List[str] = field(
        default_factory=list,
        metadata={
            "help": "any other fairseq-train option, verbatim, e.g. [--ddp-backend, legacy_ddp]"
        },
    )


@dataclass
class EvalConfig:
    """Checkpoint choice, beam search and scoring of ``moemt eval`` and ``moemt translate``."""

    checkpoint: str = field(
        default="last",
        metadata={"help": "last | best | average (of the last average_last) | a checkpoint path"},
    )
    average_last: int = field(
        default=5, metadata={"help": "checkpoint=average: how many of the last checkpoints"}
    )
    average_over: str = field(
        default="checkpoints",
        metadata={
            "help": (
                "checkpoint=average: checkpoints (epoch and update checkpoints, by update) | "
                "epochs (checkpoint<epoch>.pt only, as fairseq's --num-epoch-checkpoints)"
            )
        },
    )
    split: str = field(
        default="test",
        metadata={
            "help": "the prepared split to translate and score: valid | test (unless eval.source)"
        },
    )
    source: Optional[str] = field(
        default=None,
        metadata={"help": "a source file to translate instead of the split (with eval.reference)"},
    )
    reference: Optional[str] = field(
        default=None, metadata={"help": "the reference translation of eval.source"}
    )
    name: Optional[str] = field(
        default=None,
        metadata={"help": "directory under eval/ (null: the split's or the source file's name)"},
    )
    beam: int = field(default=5, metadata={"help": "beam size"})
    lenpen: float = field(
        default=1.0, metadata={"help": "length penalty (>1 favours longer hypotheses)"}
    )
    max_len_a: float = field(
        default=1.2,
        metadata={"help": "hypotheses are at most max_len_a * source length + max_len_b tokens"},
    )
    max_len_b: int = field(default=10, metadata={"help": "see max_len_a"})
    no_repeat_ngram_size: int = field(
        default=0,
        metadata={"help": "forbid repeating n-grams of this size in a hypothesis (0: allowed)"},
    )
    max_tokens: int = field(default=6000, metadata={"help": "source tokens per decoding batch"})
    batch_size: Optional[int] = field(
        default=None, metadata={"help": "sentences per decoding batch (null: by max_tokens only)"}
    )
    bootstrap_baseline: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "run directory of a baseline evaluated on the same split: paired bootstrap against "
                "it"
            )
        },
    )
    bootstrap_resamples: int = field(default=1000, metadata={"help": "paired bootstrap resamples"})
    seed: int = field(
        default=12345,
        metadata={
            "help": (
                "seed of bootstrap resampling and of THOR's random experts (same seed, same output)"
            )
        },
    )
    thor_inference: str = field(
        default="random",
        metadata={
            "help": (
                "THOR runs: random (an expert per sentence, seeded) | fixed (thor_expert) | mean "
                "(of all experts)"
            )
        },
    )
    thor_expert: int = field(
        default=0,
        metadata={"help": "THOR runs: the expert of thor_inference=fixed, in every expert layer"},
    )
    thor_draws: int = field(
        default=3,
        metadata={
            "help": "THOR runs: random draws (seeds seed, seed+1, ...) of eval's consistency report"
        },
    )
    engine: str = field(
        default="fairseq",
        metadata={
            "help": (
                "decoder: fairseq (the checkpoint) | ctranslate2 (its export, made on demand; "
                "moemt export)"
            )
        },
    )
    quantization: str = field(
        default="float32",
        metadata={
            "help": (
                "engine=ctranslate2 and moemt export: weight type of the CTranslate2 model: int8 "
                "| int8_float32 | int16 | float16 | bfloat16 | float32"
            )
        },
    )
    legacy_bleu: bool = field(
        default=False,
        metadata={
            "help": (
                "also report tokenised BLEU as WMT En-De papers do (report.json legacy_bleu), "
                "beside sacreBLEU"
            )
        },
    )
    tokenized_bleu: bool = field(
        default=False,
        metadata={
            "help": (
                "also report BLEU4 on the tokenised text with BPE removed, as fairseq's generate "
                "and multi-bleu.perl score it (report.json tokenized_bleu; data.subword bpe or "
                "none)"
            )
        },
    )
    legacy_bleu_compound_split: bool = field(
        default=True, metadata={"help": "legacy_bleu: split hyphenated compounds (##AT##-##AT##)"}
    )
    directions: List[str] = field(
        default_factory=list,
        metadata={
            "help": (
                "multilingual: the directions eval scores (empty: all with a test set); translate "
                "takes one (or --src/--tgt)"
            )
        },
    )


@dataclass
class DistillConfig:
    """``moemt distill``: a dense student (this recipe's ``model`` and ``train``) learns from the
    teacher run ``teacher`` on the teacher's data (Switch Transformer §5.3; Kim & Rush 2016)."""

    teacher: Optional[str] = field(
        default=None,
        metadata={"help": "run directory of the trained teacher (its prepared data is used)"},
    )
    teacher_checkpoint: str = field(
        default="last",
        metadata={
            "help": "the teacher's checkpoint: last | best | average | a path (as eval.checkpoint)"
        },
    )
    mode: str = field(
        default="word",
        metadata={
            "help": (
                "word (KL to the teacher's distributions) | sequence (train on the teacher's "
                "translations)"
            )
        },
    )
    teacher_weight: float = field(
        default=0.25,
        metadata={"help": "word: loss = w * KL(teacher || student) + (1 - w) * gold cross-entropy"},
    )
    teacher_inference: Optional[str] = field(
        default=None,
        metadata={"help": "THOR teachers: random | fixed | mean (null: eval.thor_inference)"},
    )
    init: str = field(
        default="mean",
        metadata={
            "help": (
                "student FFN from the teacher's MoE layer: mean (of experts) | expert (init_expert)"
                " | none"
            )
        },
    )
    init_expert: int = field(default=0, metadata={"help": "the expert of init=expert"})
    init_from_teacher: bool = field(
        default=True,
        metadata={"help": "copy the teacher's non-expert weights where the shapes agree"},
    )
    beam: int = field(
        default=5,
        metadata={"help": "sequence: beam of the teacher's translation of the training source"},
    )
    mix_original: bool = field(
        default=False,
        metadata={"help": "sequence: train on the teacher's outputs plus the original targets"},
    )
    chunk_lines: int = field(
        default=2000,
        metadata={
            "help": (
                "sequence: teacher translations written (atomically) per chunk, the unit of "
                "resuming"
            )
        },
    )
    max_sentences: int = field(
        default=0,
        metadata={"help": "sequence: translate only the first N training sentences (0: all)"},
    )
    baseline: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "run directory of a trained dense baseline, evaluated beside teacher and student "
                "for the report (gain kept)"
            )
        },
    )


@dataclass
class ExperimentConfig:
    """A recipe: the run's name and directory, then one section per stage."""

    name: str = field(
        default=MISSING,
        metadata={"help": "experiment name (mandatory); the default run directory is runs/<name>"},
    )
    run_dir: Optional[str] = field(
        default=None,
        metadata={"help": "experiment directory (null: runs/<name> under the working directory)"},
    )
    data: DataConfig = field(
        default_factory=DataConfig, metadata={"help": "corpora and preprocessing (moemt prep)"}
    )
    model: ModelConfig = field(
        default_factory=ModelConfig, metadata={"help": "architecture (moemt train)"}
    )
    train: TrainConfig = field(
        default_factory=TrainConfig, metadata={"help": "optimisation and checkpoints (moemt train)"}
    )
    eval: EvalConfig = field(
        default_factory=EvalConfig,
        metadata={"help": "decoding and scoring (moemt eval, moemt translate)"},
    )
    distill: DistillConfig = field(
        default_factory=DistillConfig,
        metadata={"help": "knowledge distillation (moemt distill only)"},
    )


#: The bounds of numeric keys, checked when a config is loaded (so `--dry-run` sees them too): a
#: negative size or a probability above 1 is one line naming the key and where it was set, not
#: a trainer's traceback after the model is built. A null value (where allowed) is not checked;
#: a key only some model families declare is checked where it is declared. Bounds between keys
#: (top_k <= num_experts) are the model layers' to check.
BOUNDS: Dict[str, Bound] = {
    "data.max_line_chars": AT_LEAST_1,
    "data.workers": AT_LEAST_1,
    "data.clean.min_words": AT_LEAST_0,
    "data.clean.max_words": AT_LEAST_1,
    "data.clean.max_length_ratio": Bound(1.0),
    "data.spm.vocab_size": AT_LEAST_1,
    "data.spm.character_coverage": Bound(0.0, 1.0, open_low=True),
    "data.spm.input_sentence_size": AT_LEAST_0,
    "data.spm.threads": AT_LEAST_1,
    "data.bpe.merges": AT_LEAST_1,
    "model.encoder_layers": AT_LEAST_1,
    "model.decoder_layers": AT_LEAST_1,
    "model.embed_dim": AT_LEAST_1,
    "model.ffn_embed_dim": AT_LEAST_1,
    "model.attention_heads": AT_LEAST_1,
    "model.dropout": PROBABILITY,
    "model.attention_dropout": PROBABILITY,
    "model.activation_dropout": PROBABILITY,
    "model.expert_parallel_size": AT_LEAST_1,
    "train.upcycle_noise": AT_LEAST_0,
    "train.label_smoothing": Bound(0.0, 1.0, open_high=True),
    "train.adam_eps": AT_LEAST_0,
    "train.weight_decay": AT_LEAST_0,
    "train.lr": POSITIVE,
    "train.warmup_updates": AT_LEAST_0,
    "train.warmup_init_lr": AT_LEAST_0,
    "train.clip_norm": AT_LEAST_0,
    "train.max_tokens": AT_LEAST_1,
    "train.batch_size": AT_LEAST_1,
    "train.update_freq": AT_LEAST_1,
    "train.max_update": AT_LEAST_0,
    "train.max_epoch": AT_LEAST_0,
    "train.max_time_minutes": AT_LEAST_0,
    "train.patience": ALL_OR_AT_LEAST_0,
    "train.validate_interval": AT_LEAST_1,
    "train.validate_interval_updates": AT_LEAST_0,
    "train.save_interval_updates": AT_LEAST_0,
    "train.keep_interval_updates": ALL_OR_AT_LEAST_0,
    "train.keep_last_epochs": ALL_OR_AT_LEAST_0,
    "train.keep_best_checkpoints": ALL_OR_AT_LEAST_0,
    "train.eval_bleu_beam": AT_LEAST_1,
    "train.distributed_world_size": AT_LEAST_1,
    "train.distributed_timeout_minutes": POSITIVE,
    "train.num_workers": AT_LEAST_0,
    "train.log_interval": AT_LEAST_1,
    "train.sampling_temperature": POSITIVE,
    "eval.average_last": AT_LEAST_1,
    "eval.beam": AT_LEAST_1,
    "eval.max_len_a": AT_LEAST_0,
    "eval.max_len_b": AT_LEAST_0,
    "eval.no_repeat_ngram_size": AT_LEAST_0,
    "eval.max_tokens": AT_LEAST_1,
    "eval.batch_size": AT_LEAST_1,
    "eval.bootstrap_resamples": AT_LEAST_1,
    "eval.thor_expert": AT_LEAST_0,
    "eval.thor_draws": AT_LEAST_1,
    "distill.teacher_weight": PROBABILITY,
    "distill.init_expert": AT_LEAST_0,
    "distill.beam": AT_LEAST_1,
    "distill.chunk_lines": AT_LEAST_1,
    "distill.max_sentences": AT_LEAST_0,
}


def _check_bounds(cfg: DictConfig, origins: Dict[str, str], default_origin: str) -> None:
    """Refuse the first value outside its :data:`BOUNDS`, or a ``model.moe`` value outside its
    option's bound or choices: ``ORIGIN: key=value: must be ...``."""

    def refuse(key: str, value, problem: str) -> None:
        origin = origins.get(key, default_origin)
        if origin == DEFAULT_ORIGIN:
            origin = default_origin
        raise MoeMtError(f"{origin}: {key}={value}: {problem}")

    for key, bound in BOUNDS.items():
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if bound.refuses(value):
            refuse(key, value, bound.describe())
    for name, declared in families.option_specs().items():
        value = cfg.model.moe.get(name)
        problem = declared[0][1].problem(value)  # a shared option's bound is the same everywhere
        if problem:
            refuse(f"model.moe.{name}", value, problem)


def schema() -> DictConfig:
    return OmegaConf.structured(ExperimentConfig)


def load_config(source: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load a recipe (or a run directory's ``config.yaml``), apply overrides, validate.

    Returns a fully resolved config with absolute paths and ``run_dir`` set.
    """
    return _load(source, overrides, origins=None)


#: The origin of a value no file or override set (:func:`load_config_with_origins`).
DEFAULT_ORIGIN = "default"
#: The origin of a value set on the command line.
OVERRIDE_ORIGIN = "override"
#: The origins of model.arch / family / size that the others named (:func:`resolve_architecture`).
NAMED_BY_ARCH = "named by model.arch"
NAMED_BY_FAMILY_AND_SIZE = "named by model.family and model.size"


def load_config_with_origins(
    source: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[DictConfig, Dict[str, str]]:
    """:func:`load_config`, plus where each leaf key's value came from: the file that set it
    last (the recipe, an included piece, a run directory's ``config.yaml``), ``override``, or
    ``default`` (the schema's); keys in :func:`schema_keys` order (``moemt config`` prints them).
    """
    origins: Dict[str, str] = {}
    cfg = _load(source, overrides, origins)
    leaves = [key for key, doc in schema_keys().items() if not doc.section]
    return cfg, {key: origins.get(key, DEFAULT_ORIGIN) for key in leaves}


class KeyDoc(NamedTuple):
    """A schema key's help text, and whether it is a section (``model.moe``) or a leaf."""

    help: str
    section: bool


def schema_keys() -> Dict[str, KeyDoc]:
    """Every key of the schema in declaration order, sections included, with its help text."""
    return dict(_documented_fields(ExperimentConfig, prefix=""))


def _documented_fields(cls, prefix: str):
    for item in fields(cls):
        key = f"{prefix}{item.name}"
        section = is_dataclass(item.type)
        yield key, KeyDoc(item.metadata.get("help", ""), section)
        if section:
            yield from _documented_fields(item.type, prefix=f"{key}.")


def _load(source: str | Path, overrides, origins: Optional[Dict[str, str]]) -> DictConfig:
    """The one loading path of :func:`load_config`; records each value's origin in ``origins``
    when given (a later file or the overrides replace an earlier one's)."""
    origins = {} if origins is None else origins  # bound errors name where a value was set
    families.load_plugins()  # $MOEMT_PLUGINS: families defined outside moemt, and their keys
    source = Path(source)
    from_run_dir = source.is_dir()
    path = source / RUN_CONFIG if from_run_dir else source
    if not path.is_file():
        if from_run_dir:
            raise MoeMtError(f"{source}: not a run directory (no {RUN_CONFIG})")
        raise MoeMtError(f"{path}: no such recipe file")

    loaded = _without_meta(_read_yaml(path))
    if from_run_dir:
        # The directory given is the run directory, wherever config.yaml says it was written
        # (a copied or moved run directory works on itself).
        loaded.run_dir = str(source.resolve())
    cfg = schema()
    sections = {key for key, doc in schema_keys().items() if doc.section}

    def apply(piece: DictConfig, origin: str) -> None:
        nonlocal cfg
        cfg = _merge(cfg, piece, origin=origin)
        derived = _latest_names_architecture(cfg.model, piece)
        origins.update(dict.fromkeys(_leaves_set(piece, sections), origin))
        for key in derived:  # no longer what that file said, but what the others imply
            origins.pop(f"model.{key}", None)

    for piece_path, piece in _with_includes(path, loaded, chain=()):
        _resolve_paths(piece, base=piece_path.parent)  # relative to the file that says it
        apply(piece, str(piece_path))

    pieces, dotlist = _split_arguments(overrides)
    for piece_path in pieces:  # recipe pieces named on the command line, in order
        for part_path, part in _with_includes(piece_path, _read_yaml(piece_path), chain=()):
            _resolve_paths(part, base=part_path.parent)
            apply(part, str(part_path))

    if dotlist:
        override_cfg = OmegaConf.from_dotlist(dotlist)
        _resolve_paths(override_cfg, base=Path.cwd())
        apply(override_cfg, OVERRIDE_ORIGIN)

    resolve_architecture(cfg.model, origin=str(path))
    fill_family_defaults(cfg, origins)
    # What no source set was named by the others (or is a default).
    if "model.arch" in origins:
        origins.setdefault("model.family", NAMED_BY_ARCH)
        origins.setdefault("model.size", NAMED_BY_ARCH)
    origins.setdefault("model.arch", NAMED_BY_FAMILY_AND_SIZE)
    if not OmegaConf.is_missing(cfg, "name"):
        cfg.name = cfg.name  # resolved: `europarl_en_ro_${model.family}` becomes the run's name
    _check_name(cfg, origins.get("name", str(path)))
    if cfg.run_dir is None:
        cfg.run_dir = _default_run_dir(cfg)
    _check_mandatory(cfg, origin=str(path))
    _check_bounds(cfg, origins, default_origin=str(path))
    return cfg


def architecture(family: str, size: str) -> str:
    """The architecture of ``family`` at ``size`` by moemt's naming rule:
    ``<family>_transformer_<size>``, the dense baseline's ``moemt_transformer_<size>``."""
    return f"{'moemt' if family == 'dense' else family}_transformer_{size}"


def _family_and_size(arch: str) -> tuple:
    """(family, size) that :func:`architecture` names ``arch`` by; (None, None) for another
    architecture (fairseq's own ``transformer_iwslt_de_en``)."""
    prefix, sep, size = arch.partition("_transformer_")
    if not sep or not prefix or not size:
        return None, None
    return ("dense" if prefix == "moemt" else prefix), size


def family_default_origin(family: str) -> str:
    """The origin ``moemt config`` names for a value the model family's declaration gave."""
    return f"default of family {family}"


def fill_family_defaults(cfg: DictConfig, origins: Dict[str, str]) -> None:
    """Write what the model's family (:class:`moe_mt.models.families.Family`) gives a key left
    null: its criterion (``train.criterion``) and its ``model.moe`` defaults, so that a run's
    config.yaml, its fingerprints and ``moemt config`` hold the values the model trains with.
    An architecture of no family (fairseq's own) trains with fairseq's label-smoothed CE."""
    family = families.family_of_arch(cfg.model.arch)
    if cfg.train.criterion is None:
        cfg.train.criterion = family.criterion if family else families.DENSE_CRITERION
        if family:
            origins.setdefault("train.criterion", family_default_origin(family.name))
    for option in family.all_options() if family else ():
        if option.recipe and option.default is not None and cfg.model.moe.get(option.name) is None:
            cfg.model.moe[option.name] = option.default
            origins[f"model.moe.{option.name}"] = family_default_origin(family.name)


def _latest_names_architecture(model: DictConfig, piece: DictConfig) -> tuple:
    """After ``piece`` is merged: whichever it sets, ``model.arch`` or ``model.family`` /
    ``model.size``, names the architecture from now on. A piece that sets the arch clears family
    and size (they are read from it at the end); one that sets the family or the size clears the
    arch, keeping what the arch said of the other (``model.arch=thor_transformer_iwslt`` then
    ``model.family=switch``: ``switch_transformer_iwslt``). Returns the keys it cleared or
    filled in (``("family", "size")``, ``("arch", "size")``, ...)."""
    given = piece.get("model") if isinstance(piece.get("model"), DictConfig) else {}
    names_arch = given.get("arch") is not None
    names_parts = "family" in given or "size" in given
    if names_arch and not names_parts:
        model.family = model.size = None
        return ("family", "size")
    if names_parts and not names_arch and model.arch is not None:
        family, size = _family_and_size(model.arch)
        model.family = model.family if "family" in given else family
        model.size = model.size if "size" in given else size
        model.arch = None
        return ("arch", *(key for key in ("family", "size") if key not in given))
    return ()


def resolve_architecture(model: DictConfig, origin: str) -> None:
    """Fill ``model.arch`` from ``model.family`` and ``model.size`` (dense and demo when unset),
    or, when the arch is given, check them against it and fill them in from it. A recipe of a
    data set sets the size, a family piece the family; the last source that names the
    architecture decides (:func:`_latest_names_architecture`)."""
    family, size = model.family, model.size
    if model.arch is None:
        model.arch = architecture(family or "dense", size or "demo")
        return _fill(model, model.arch)
    implied = dict(zip(("family", "size"), _family_and_size(model.arch), strict=True))
    for key, given in (("family", family), ("size", size)):
        if given is not None and given != implied[key]:
            raise MoeMtError(
                f"{origin}: model.{key}={given} contradicts model.arch={model.arch} (one source "
                "names both; give the arch, or the family and size)"
            )
    _fill(model, model.arch)


def _fill(model: DictConfig, arch: str) -> None:
    family, size = _family_and_size(arch)
    model.family = model.family or family
    model.size = model.size or size


def _leaves_set(node: DictConfig, sections: set, prefix: str = ""):
    """The schema leaves a piece sets (a dict-valued leaf such as ``model.args`` is one key)."""
    for key in node:
        full = f"{prefix}{key}"
        if full in sections and isinstance(node[key], DictConfig):
            yield from _leaves_set(node[key], sections, prefix=f"{full}.")
        else:
            yield full


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def section_equal(a: DictConfig, b: DictConfig, key: str) -> bool:
    return OmegaConf.to_container(a[key]) == OmegaConf.to_container(b[key])


def _read_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except yaml.MarkedYAMLError as exc:  # a syntax error: PyYAML knows where (0-based)
        raise MoeMtError(_yaml_syntax_error(path, exc)) from exc
    except (OSError, UnicodeDecodeError, ValueError, OmegaConfBaseException, yaml.YAMLError) as exc:
        raise MoeMtError(f"{path}: cannot read YAML: {_first_line(exc)}") from exc
    if not isinstance(loaded, DictConfig):
        raise MoeMtError(f"{path}: a recipe must be a mapping of keys to values")
    return loaded


def _yaml_syntax_error(path: Path, exc) -> str:
    """``file:line:column: YAML syntax error: problem (context)``, 1-based as editors count."""
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    what = exc.problem or "invalid YAML"
    if exc.context:
        what += f" ({exc.context})"
    return f"{where}: YAML syntax error: {what}"


def _with_includes(path: Path, loaded: DictConfig, chain: tuple) -> list:
    """``[(file, config)]`` in merge order: the pieces ``loaded`` includes (each expanded the
    same way, depth first), then ``loaded`` itself without its ``include`` key."""
    if INCLUDE_KEY not in loaded:
        return [(path, loaded)]
    entries = loaded[INCLUDE_KEY]
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, (list, ListConfig)) or not all(isinstance(e, str) for e in entries):
        raise MoeMtError(f"{path}: '{INCLUDE_KEY}' must be a list of YAML paths")
    chain = (*chain, path.resolve())
    pieces = []
    for entry in entries:
        target = (path.parent / Path(entry).expanduser()).resolve()
        if target in chain:
            cycle = " -> ".join(str(p) for p in (*chain[chain.index(target) :], target))
            raise MoeMtError(f"{path}: include cycle: {cycle}")
        if not target.is_file():
            raise MoeMtError(f"{path}: include '{entry}': no such file {target}")
        pieces += _with_includes(target, _read_yaml(target), chain)
    own = OmegaConf.masked_copy(loaded, [k for k in loaded if k != INCLUDE_KEY])
    return [*pieces, (path, own)]


def _check_name(cfg: DictConfig, origin: str) -> None:
    """A run's name is one directory name under ``runs/``: ``name=../../x`` wrote a run two
    levels above it."""
    if OmegaConf.is_missing(cfg, "name"):
        return
    name = str(cfg.name)
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise MoeMtError(
            f"{origin}: name={name!r}: a run's name is one directory name under runs/ (no '/', "
            "'..'); give run_dir=PATH for a run elsewhere"
        )


def _default_run_dir(cfg: DictConfig) -> str:
    if OmegaConf.is_missing(cfg, "name"):
        return ""  # reported as a missing 'name' by _check_mandatory
    return str((Path.cwd() / "runs" / cfg.name).resolve())


def _without_meta(loaded: DictConfig) -> DictConfig:
    # A run directory's config.yaml carries provenance (versions, git commit) under `meta`.
    if "meta" in loaded:
        loaded = OmegaConf.masked_copy(loaded, [k for k in loaded if k != "meta"])
    return loaded


def _split_arguments(arguments) -> tuple:
    """(recipe pieces, ``key=value`` overrides) of the command line's arguments after the
    recipe: an argument without ``=`` that ends in ``.yaml`` / ``.yml`` names a piece (relative
    to the working directory), merged after the recipe, before the overrides."""
    pieces, dotlist = [], []
    for item in arguments:
        key, sep, _ = item.partition("=")
        if not sep and item.endswith((".yaml", ".yml")):
            path = (Path.cwd() / Path(item).expanduser()).resolve()
            if not path.is_file():
                raise MoeMtError(f"{item}: no such recipe piece")
            pieces.append(path)
        elif not sep or not key.strip():
            raise MoeMtError(
                f"override '{item}' is not of the form key=value (nor a recipe piece, *.yaml)"
            )
        else:
            dotlist.append(item)
    return pieces, dotlist


def _merge(base: DictConfig, extra: DictConfig, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, extra)
    except ConfigKeyError as exc:
        key = str(_full_key(exc))
        if not re.fullmatch(r"[A-Za-z_][\w.\-]{0,99}", key):
            # Not a key a recipe could mean (another kind of file read as YAML): its text is not
            # quoted back, it may be anything (`include: [/etc/passwd]`).
            raise MoeMtError(f"{origin}: not a recipe (its entries are not recipe keys)") from exc
        raise MoeMtError(f"{origin}: unknown key '{key}'") from exc
    except ValidationError as exc:
        raise MoeMtError(f"{origin}: {_full_key(exc)}: {_first_line(exc)}") from exc
    except OmegaConfBaseException as exc:
        raise MoeMtError(f"{origin}: {_first_line(exc)}") from exc


def _resolve_paths(cfg: DictConfig, base: Path) -> None:
    for key in PATH_KEYS:
        parent_key, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(node, DictConfig) or leaf not in node:
            continue
        value = node[leaf]
        if isinstance(value, str) and value and value != MISSING:
            node[leaf] = str((base / Path(value).expanduser()).resolve())


def _check_mandatory(cfg: DictConfig, origin: str) -> None:
    missing = sorted(_missing_keys(cfg))
    if cfg.data.pairs:  # multilingual: the directions name the languages
        missing = [key for key in missing if key not in ("data.src", "data.tgt")]
    missing = sorted({*missing, *_missing_inputs(cfg, origin)})
    if missing:
        raise MoeMtError(f"{origin}: missing mandatory key(s): {', '.join(missing)}")


def _missing_inputs(cfg: DictConfig, origin: str) -> list[str]:
    """Local files need data.train and data.valid; a registry corpus brings its own splits."""
    if cfg.data.pairs and cfg.data.sources:
        return []  # which pairs need local files, prep checks (multilingual.check_inputs)
    local = [k for k in ("train", "valid", "test") if cfg.data[k] is not None]
    if cfg.data.source is None:
        return [f"data.{k}" for k in ("train", "valid") if k not in local]
    if local:
        raise MoeMtError(
            f"{origin}: data.source={cfg.data.source} and data.{local[0]} exclude each other "
            "(a registry corpus brings its own splits)"
        )
    return []


def _missing_keys(node: DictConfig, prefix: str = ""):
    for key in node:
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            yield full
        elif isinstance(node[key], DictConfig):
            yield from _missing_keys(node[key], prefix=f"{full}.")


def _full_key(exc: OmegaConfBaseException) -> str:
    return getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
