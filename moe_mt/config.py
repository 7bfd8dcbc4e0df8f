"""The recipe schema (OmegaConf structured config) and recipe loading: one source of truth for
every key, its default and its help text (the comment beside it).

A recipe is a YAML file; the CLI takes a recipe path (or a run directory holding the
``config.yaml`` an earlier command wrote) and ``key=value`` overrides. A misspelt or unknown key,
a value of the wrong type or a missing mandatory key is a :class:`MoeMtError` naming the key and
the file (or override) it came from.

Relative paths in a recipe are relative to the recipe file, so that a recipe works from any
working directory; relative paths given as overrides are relative to the working directory.

A recipe may compose shared pieces: ``include: [pieces/data/x.yaml, pieces/schedule/y.yaml]``
(paths relative to the including file) merges each piece in order (a piece may include others,
expanded first), later pieces over earlier ones, then the including file itself, then the
command-line overrides. An include cycle or a missing piece is an error naming the file.
"""

# No `from __future__ import annotations` here: omegaconf 2.0 reads the dataclass field types.
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from moe_mt.errors import MoeMtError
from moe_mt.models import families

# Keys whose values are filesystem paths (resolved to absolute paths on load).
PATH_KEYS = (
    "run_dir",
    "data.train",
    "data.valid",
    "data.test",
    "data.cache_dir",
    "train.tensorboard_logdir",
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

    min_words: int = 1  # drop pairs with fewer whitespace-separated words on either side
    max_words: int = 250  # drop pairs with more words on either side
    max_length_ratio: float = 3.0  # drop pairs whose word counts differ by more than this factor
    dedup: bool = True  # drop exact duplicate (source, target) pairs, keeping the first


@dataclass
class SpmConfig:
    """sentencepiece model(s), trained on the cleaned training split only."""

    vocab_size: int = 8000
    model_type: str = "unigram"  # unigram | bpe | char | word
    character_coverage: float = 1.0  # 0.9995 is usual for large CJK vocabularies
    joint: bool = True  # one model for both languages (else one per language)
    input_sentence_size: int = 2_000_000  # sentences sampled to train spm (0: all)
    seed: int = 1  # seed of that sample


@dataclass
class DataConfig:
    """Parallel text: ``<prefix>.<src>`` and ``<prefix>.<tgt>`` per split, line-aligned.

    Multilingual (``pairs`` set, ``src``/``tgt`` unused): every direction ``a-b`` reads
    ``<prefix>.a`` and ``<prefix>.b`` with ``{pair}`` in a prefix replaced by ``a-b``, or by
    ``b-a`` where only those files exist (one corpus serves both directions), or the registry
    corpus that ``sources`` names for its language pair; one joint sentencepiece model and
    dictionary (``moe_mt/workflows/prep/corpora.py``).
    """

    src: str = MISSING  # source language code, the file suffix (e.g. en)
    tgt: str = MISSING  # target language code (e.g. de)
    pairs: List[str] = field(default_factory=list)  # multilingual directions: [en-de, de-en, ...]
    # multilingual: directions tested but never trained (their test set only), e.g. [de-it]
    zero_shot: List[str] = field(default_factory=list)
    # Local files (train and valid mandatory), or a corpus of the download registry:
    train: Optional[str] = None  # path prefix of the training files
    valid: Optional[str] = None  # path prefix of the validation files
    test: Optional[str] = None  # path prefix of the test files
    source: Optional[str] = None  # registry corpus (data_prep/sources.py) that prep downloads
    # Multilingual: a registry corpus per language pair, {en-de: iwslt17_multi_en_de, ...}
    sources: Dict[str, str] = field(default_factory=dict)
    cache_dir: Optional[str] = None  # its downloads (default: $MOEMT_CACHE_DIR or ~/.cache/moemt)
    lowercase: bool = False  # lowercase every split, both sides, as fairseq's IWSLT14 preparation
    max_line_chars: int = 2000  # longer lines: dropped in train, fatal in valid/test
    joined_dictionary: bool = True  # one fairseq dictionary for both sides
    clean: CleanConfig = field(default_factory=CleanConfig)
    spm: SpmConfig = field(default_factory=SpmConfig)


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
families.load_plugins()  # $MOEMT_PLUGINS: families defined outside moemt


@dataclass
class ModelConfig:
    """The fairseq architecture and the options that shape it.

    ``arch`` names a registered fairseq architecture (moemt's are listed by ``moemt archs``);
    the size keys left at null take the architecture's defaults. ``args`` passes any other
    model option of that architecture by its fairseq name (``{encoder_normalize_before: true}``).
    """

    arch: str = "moemt_transformer_demo"
    encoder_layers: Optional[int] = None
    decoder_layers: Optional[int] = None
    embed_dim: Optional[int] = None  # encoder and decoder width
    ffn_embed_dim: Optional[int] = None  # encoder and decoder FFN width
    attention_heads: Optional[int] = None
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    share_all_embeddings: bool = True  # needs data.joined_dictionary
    moe: MoEConfig = field(default_factory=MoEConfig)  # MoE architectures only
    # MoE architectures: each MoE layer's experts spread over this many ranks (divides
    # train.distributed_world_size and model.moe.num_experts); see README "Expert parallelism"
    expert_parallel_size: Optional[int] = None
    args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation, stopping, checkpointing and logging (fairseq's options of the same name)."""

    criterion: str = "label_smoothed_cross_entropy"
    label_smoothing: float = 0.1
    optimizer: str = "adam"
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    lr: float = 1e-3
    lr_scheduler: str = "inverse_sqrt"  # inverse_sqrt | fixed | cosine | polynomial_decay | ...
    warmup_updates: int = 4000
    warmup_init_lr: float = 1e-7
    clip_norm: float = 0.0  # 0: no clipping
    max_tokens: Optional[int] = 4096  # per batch and device
    batch_size: Optional[int] = None  # sentences per batch (with or instead of max_tokens)
    update_freq: int = 1  # accumulate gradients over this many batches
    max_update: int = 0  # 0: no bound
    max_epoch: int = 0  # 0: no bound
    max_time_minutes: float = 0  # training wall-clock budget, cumulative over resumes; 0: none
    patience: int = -1  # stop after this many validations without improvement; -1: never
    seed: int = 1
    validate_interval: int = 1  # validate every N epochs
    validate_interval_updates: int = 0  # and/or every N updates
    save_interval_updates: int = 0  # also checkpoint every N updates (0: at epoch ends only)
    keep_interval_updates: int = 5  # update checkpoints kept (-1: all)
    keep_last_epochs: int = 5  # epoch checkpoints kept (-1: all); averaging needs several
    keep_best_checkpoints: int = -1
    best_checkpoint_metric: str = "loss"  # loss | bleu (with eval_bleu)
    eval_bleu: bool = False  # BLEU on valid at each validation (slow: beam search)
    eval_bleu_beam: int = 4
    fp16: bool = False  # CUDA only
    bf16: bool = False  # CUDA or recent CPUs
    distributed_world_size: int = 1  # >1: spawn that many data-parallel processes (one node)
    # A rank that waits longer than this on another (hung) rank fails instead of hanging.
    distributed_timeout_minutes: float = 10
    num_workers: int = 0  # data loader workers
    log_interval: int = 50  # updates between log lines
    tensorboard_logdir: Optional[str] = None
    # Multilingual runs (data.pairs; fairseq's translation_multi_simple_epoch task):
    sampling_temperature: float = 5.0  # pair sampling p ~ (n_pair / n)^(1/T); 1: by size
    encoder_langtok: Optional[str] = "src"  # source prefixed with the src | tgt language token
    decoder_langtok: bool = True  # target starts with the target language token
    fairseq_args: List[str] = field(default_factory=list)  # any other fairseq option, verbatim


@dataclass
class EvalConfig:
    """Checkpoint choice, beam search and scoring of ``moemt eval`` and ``moemt translate``."""

    checkpoint: str = "last"  # last | best | average (of the last ``average_last``) | a path
    average_last: int = 5
    split: str = "test"  # a prepared split (valid | test) ...
    source: Optional[str] = None  # ... or any source file with its reference:
    reference: Optional[str] = None
    name: Optional[str] = None  # directory under eval/ (default: the split or the source's name)
    beam: int = 5
    lenpen: float = 1.0
    max_len_a: float = 1.2  # hypotheses are at most max_len_a * source length + max_len_b
    max_len_b: int = 10
    no_repeat_ngram_size: int = 0
    max_tokens: int = 6000  # per decoding batch
    batch_size: Optional[int] = None
    bootstrap_baseline: Optional[str] = None  # run dir of a baseline for paired bootstrap
    bootstrap_resamples: int = 1000
    seed: int = 12345  # bootstrap resampling, and THOR's random experts (same seed, same output)
    # THOR runs only (thor_transformer_*):
    thor_inference: str = "random"  # random (per sentence, seeded) | fixed | mean (all experts)
    thor_expert: int = 0  # the expert of thor_inference=fixed, in every expert layer
    thor_draws: int = 3  # eval: random draws (seeds seed, seed+1, ...) for the consistency report
    # Tokenised BLEU as WMT En-De papers report it, beside (never instead of) sacreBLEU:
    legacy_bleu: bool = (
        False  # report.json `legacy_bleu` (moe_mt/workflows/evaluate/legacy_bleu.py)
    )
    legacy_bleu_compound_split: bool = True  # split hyphenated compounds (##AT##-##AT##)
    # Multilingual runs (data.pairs): eval scores these directions (empty: every one with a
    # test set); translate takes exactly one (or --src/--tgt).
    directions: List[str] = field(default_factory=list)


@dataclass
class DistillConfig:
    """``moemt distill``: a dense student (this recipe's ``model`` and ``train``) learns from the
    teacher run ``teacher`` on the teacher's data (Switch Transformer §5.3; Kim & Rush 2016)."""

    teacher: Optional[str] = None  # run directory of the trained teacher (prepared data)
    teacher_checkpoint: str = "last"  # last | best | average | a path (as eval.checkpoint)
    mode: str = "word"  # word (KL to the teacher's distributions) | sequence (teacher outputs)
    teacher_weight: float = 0.25  # word: w of KL(teacher || student); 1 - w on gold CE
    teacher_inference: Optional[str] = None  # THOR teachers: random | fixed | mean (null: eval's)
    init: str = "mean"  # student FFN from an MoE layer: mean (of experts) | expert | none
    init_expert: int = 0  # the expert of init=expert
    init_from_teacher: bool = True  # copy the teacher's non-expert weights where shapes agree
    beam: int = 5  # sequence: beam of the teacher's translation of the training source
    mix_original: bool = False  # sequence: train on teacher outputs plus the original targets
    chunk_lines: int = 2000  # sequence: teacher translations written (atomically) per chunk
    max_sentences: int = 0  # sequence: translate only the first N training sentences (0: all)
    baseline: Optional[str] = None  # run directory of a dense baseline, for the report


@dataclass
class ExperimentConfig:
    name: str = MISSING  # experiment name
    run_dir: Optional[str] = None  # experiment directory (default: runs/<name>)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)  # moemt distill only


def schema() -> DictConfig:
    return OmegaConf.structured(ExperimentConfig)


def load_config(source: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load a recipe (or a run directory's ``config.yaml``), apply overrides, validate.

    Returns a fully resolved config with absolute paths and ``run_dir`` set.
    """
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
    for piece_path, piece in _with_includes(path, loaded, chain=()):
        _resolve_paths(piece, base=piece_path.parent)  # relative to the file that says it
        cfg = _merge(cfg, piece, origin=str(piece_path))

    dotlist = _parse_overrides(overrides)
    if dotlist:
        override_cfg = OmegaConf.from_dotlist(dotlist)
        _resolve_paths(override_cfg, base=Path.cwd())
        cfg = _merge(cfg, override_cfg, origin="override")

    if cfg.run_dir is None:
        cfg.run_dir = _default_run_dir(cfg)
    _check_mandatory(cfg, origin=str(path))
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def section_equal(a: DictConfig, b: DictConfig, key: str) -> bool:
    return OmegaConf.to_container(a[key]) == OmegaConf.to_container(b[key])


def _read_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError, ValueError, OmegaConfBaseException) as exc:
        raise MoeMtError(f"{path}: cannot read YAML: {_first_line(exc)}") from exc
    if not isinstance(loaded, DictConfig):
        raise MoeMtError(f"{path}: a recipe must be a mapping of keys to values")
    return loaded


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


def _default_run_dir(cfg: DictConfig) -> str:
    if OmegaConf.is_missing(cfg, "name"):
        return ""  # reported as a missing 'name' by _check_mandatory
    return str((Path.cwd() / "runs" / cfg.name).resolve())


def _without_meta(loaded: DictConfig) -> DictConfig:
    # A run directory's config.yaml carries provenance (versions, git commit) under `meta`.
    if "meta" in loaded:
        loaded = OmegaConf.masked_copy(loaded, [k for k in loaded if k != "meta"])
    return loaded


def _parse_overrides(overrides) -> list[str]:
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise MoeMtError(f"override '{item}' is not of the form key=value")
    return list(overrides)


def _merge(base: DictConfig, extra: DictConfig, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, extra)
    except ConfigKeyError as exc:
        raise MoeMtError(f"{origin}: unknown key '{_full_key(exc)}'") from exc
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
