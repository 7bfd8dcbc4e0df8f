"""The recipe schema (OmegaConf structured config): every key, its default and its help text
(each field's ``metadata["help"]``, as fairseq's dataclasses hold theirs; ``moemt config`` prints
them). The ``model.moe`` section is built from the model families' option declarations
(:mod:`moe_mt.models.families`) and rebuilt when a family or router registers."""

# No `from __future__ import annotations` here: omegaconf 2.0 reads the dataclass field types.
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, NamedTuple, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from moe_mt.config.data_schema import DataConfig
from moe_mt.models import families


class MoEConfig:
    """Mixture-of-Experts options, passed to fairseq as ``--moe-<key>`` when set.

    Not written here: the fields are the ``model.moe.*`` options of every model family and
    router (:mod:`moe_mt.models.families`; the built-in ones in ``moe_mt/models/*_options.py``,
    a plugin's in its module, see ``docs/extending.md``), declared by :func:`_declare_moe_fields`
    and declared again, in place, when a family or router registers (``ModelConfig.moe`` keeps
    naming this class). Every key is optional with default null here; loading a recipe writes
    the model family's default into each key left null
    (:func:`moe_mt.config.names.fill_family_defaults`), and each key's help lists those
    defaults per family. Dense architectures take only ``expert_activation`` (their FFN's);
    THOR's inference mode is an eval key (``eval.thor_inference``).
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
        default=None,
        metadata={
            "help": "write TensorBoard logs here (fairseq's train/valid scalars, the moe_* "
            "statistics among them; null: none)"
        },
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
    merge_experts: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "engine=ctranslate2 and moemt export of a routed MoE: make each MoE layer one FFN, "
                "calibrated on the valid split: most_used | usage_average (null: refuse; "
                "docs/deploy.md). A different model: score it"
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


def schema() -> DictConfig:
    return OmegaConf.structured(ExperimentConfig)


#: The origin of a value no file or override set (:func:`load_config_with_origins`).
DEFAULT_ORIGIN = "default"


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
