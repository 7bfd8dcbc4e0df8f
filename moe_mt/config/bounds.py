"""The ranges of the recipe's numeric keys (:data:`BOUNDS`) and of the ``model.moe`` options
(their declarations'), checked when a config is loaded."""

from typing import Dict

from omegaconf import DictConfig, OmegaConf

from moe_mt.bounds import ALL_OR_AT_LEAST_0, AT_LEAST_0, AT_LEAST_1, POSITIVE, PROBABILITY, Bound
from moe_mt.config.schema import DEFAULT_ORIGIN
from moe_mt.errors import MoeMtError
from moe_mt.models import families

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


def check_bounds(cfg: DictConfig, origins: Dict[str, str], default_origin: str) -> None:
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
