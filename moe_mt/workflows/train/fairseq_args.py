"""Turn a resolved moemt config into fairseq's own command-line arguments.

One function per section, each a plain mapping from our keys to fairseq's option names, so that
``moemt train --dry-run`` shows exactly what fairseq receives. Keys left at null are not passed
(fairseq's or the architecture's default applies).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import moe_mt
from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.rundir import RunDir


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _pairs(values: dict) -> list[str]:
    """``{name: value}`` to fairseq options: True -> flag, False/None -> omitted."""
    args: list[str] = []
    for name, value in values.items():
        if value is None or value is False:
            continue
        if value is True:
            args.append(option(name))
        else:
            args += [option(name), str(value)]
    return args


def model_args(model: DictConfig) -> list[str]:
    if model.share_all_embeddings is None:
        raise MoeMtError("model.share_all_embeddings must be true or false")
    sizes = {}
    for side in ("encoder", "decoder"):
        sizes[f"{side}_layers"] = model[f"{side}_layers"]
        sizes[f"{side}_embed_dim"] = model.embed_dim
        sizes[f"{side}_ffn_embed_dim"] = model.ffn_embed_dim
        sizes[f"{side}_attention_heads"] = model.attention_heads
    return [
        "--arch",
        model.arch,
        *_pairs(sizes),
        *_pairs(
            {
                "dropout": model.dropout,
                "attention_dropout": model.attention_dropout,
                "activation_dropout": model.activation_dropout,
                "share_all_embeddings": model.share_all_embeddings,
            }
        ),
        # MoE keys left at null are not passed: dense architectures know none of them.
        *_pairs({f"moe_{k}": v for k, v in OmegaConf.to_container(model.moe).items()}),
        *_pairs({"moe_expert_parallel_size": model.get("expert_parallel_size")}),
        *_pairs(OmegaConf.to_container(model.args)),
    ]


def optimization_args(train: DictConfig) -> list[str]:
    betas = f"({', '.join(str(b) for b in train.adam_betas)})"
    args = [
        *_pairs({"criterion": train.criterion}),
        *(
            _pairs({"label_smoothing": train.label_smoothing})
            if "label_smoothed" in train.criterion
            else []
        ),
        *_pairs({"optimizer": train.optimizer}),
        *(
            ["--adam-betas", betas, "--adam-eps", str(train.adam_eps)]
            if train.optimizer == "adam"
            else []
        ),
        *_pairs(
            {
                "weight_decay": train.weight_decay,
                "lr": train.lr,
                "lr_scheduler": train.lr_scheduler,
            }
        ),
    ]
    if train.lr_scheduler == "inverse_sqrt":
        args += _pairs(
            {"warmup_updates": train.warmup_updates, "warmup_init_lr": train.warmup_init_lr}
        )
    args += _pairs(
        {
            "clip_norm": train.clip_norm,
            "max_tokens": train.max_tokens,
            "batch_size": train.batch_size,
            "update_freq": train.update_freq,
            "max_update": train.max_update,
            "max_epoch": train.max_epoch,
            "stop_time_hours": train.max_time_minutes / 60 if train.max_time_minutes else None,
            "patience": train.patience,
            "seed": train.seed,
            "fp16": train.fp16,
            "bf16": train.bf16,
        }
    )
    return args


def checkpoint_args(train: DictConfig, run_dir: RunDir) -> list[str]:
    args = _pairs(
        {
            "save_dir": run_dir.checkpoints,
            "validate_interval": train.validate_interval,
            "validate_interval_updates": train.validate_interval_updates,
            "save_interval_updates": train.save_interval_updates,
            "keep_interval_updates": train.keep_interval_updates,
            "keep_last_epochs": train.keep_last_epochs,
            "keep_best_checkpoints": train.keep_best_checkpoints,
            "best_checkpoint_metric": train.best_checkpoint_metric,
        }
    )
    if train.best_checkpoint_metric == "bleu":
        args.append("--maximize-best-checkpoint-metric")
    if train.eval_bleu:
        args += [
            "--eval-bleu",
            "--eval-bleu-args",
            f'{{"beam": {train.eval_bleu_beam}}}',
            "--eval-bleu-remove-bpe",
            "sentencepiece",
        ]
    return args


def logging_args(train: DictConfig) -> list[str]:
    # No --log-file: moemt routes every logger to logs/train.log itself (train_view.py).
    if train.tensorboard_logdir:
        check_tensorboard_writer(train.tensorboard_logdir)
    return _pairs(
        {
            "log_format": "json",
            "log_interval": train.log_interval,
            "tensorboard_logdir": train.tensorboard_logdir,
            "num_workers": train.num_workers,
        }
    )


def check_tensorboard_writer(logdir: str) -> None:
    """fairseq writes ``--tensorboard-logdir`` with torch's ``SummaryWriter`` (else tensorboardX)
    and, when neither imports, logs a warning and writes nothing: refuse that instead."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise MoeMtError(
            f"train.tensorboard_logdir={logdir}: no TensorBoard writer can be imported ({exc}); "
            "install tensorboard (pip install tensorboard) or leave the key null"
        ) from None


def distributed_args(train: DictConfig) -> list[str]:
    """Data parallelism over ``train.distributed_world_size`` processes (none for one).

    The ddp backend is ``c10d``, torch's ``DistributedDataParallel`` (fairseq's default under its
    older name): it overlaps the gradient all-reduce with the backward pass, and expert
    parallelism needs it, since it can leave expert parameters out of that all-reduce
    (``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``), which fairseq's
    ``legacy_ddp`` cannot. On CPU it needs ``moe_mt.compat`` patch 6. The backend of
    torch.distributed is gloo on CPU, NCCL on GPUs.

    On resume every rank reads ``checkpoint_last.pt`` itself (``--load-checkpoint-on-all-dp-ranks``)
    instead of receiving rank 0's copy by ``broadcast_object``: that copy holds the checkpoint's
    config as an OmegaConf object, which the other ranks' ``torch.load(weights_only=True)``
    refuses. Reading is safe: rank 0 writes no checkpoint before every rank has loaded and trained.
    """
    if train.distributed_world_size <= 1:
        return []
    from moe_mt.workflows.train.distributed import backend

    return [
        "--distributed-world-size",
        str(train.distributed_world_size),
        "--distributed-backend",
        backend(),
        "--ddp-backend",
        "c10d",
        "--load-checkpoint-on-all-dp-ranks",
    ]


def task_args(data: DictConfig) -> list[str]:
    return ["--task", "translation", "--source-lang", data.src, "--target-lang", data.tgt]


def multilingual_task_args(cfg: DictConfig) -> list[str]:
    """fairseq's ``translation_multi_simple_epoch``: every direction of ``data.pairs``, language
    tokens, temperature sampling over the directions (p_ij ~ (n_ij / n)^(1/T), Arivazhagan et
    al. 2019)."""
    from moe_mt.workflows.common.manifest import directions, languages

    dirs = directions(cfg.data)
    train = cfg.train
    if train.encoder_langtok not in (None, "src", "tgt"):
        raise MoeMtError(
            f"train.encoder_langtok={train.encoder_langtok}: expected src, tgt or null"
        )
    if train.sampling_temperature <= 0:
        raise MoeMtError(
            f"train.sampling_temperature must be positive, not {train.sampling_temperature}"
        )
    return [
        "--task",
        "translation_multi_simple_epoch",
        "--lang-pairs",
        ",".join(d.name for d in dirs),
        "--langs",
        ",".join(languages(dirs)),
        "--sampling-method",
        "temperature",
        "--sampling-temperature",
        str(train.sampling_temperature),
        *_pairs(
            {"encoder_langtok": train.encoder_langtok, "decoder_langtok": train.decoder_langtok}
        ),
    ]


def train_args(cfg: DictConfig, run_dir: RunDir) -> list[str]:
    """The complete fairseq-train argument list for ``cfg``."""
    data = cfg.data
    if cfg.model.share_all_embeddings and not data.joined_dictionary:
        raise MoeMtError("model.share_all_embeddings=true needs data.joined_dictionary=true")
    return [
        str(Path(run_dir.data) / "bin"),
        "--user-dir",
        moe_mt.USER_DIR,
        *(multilingual_task_args(cfg) if data.pairs else task_args(data)),
        *model_args(cfg.model),
        *optimization_args(cfg.train),
        *checkpoint_args(cfg.train, run_dir),
        *logging_args(cfg.train),
        *distributed_args(cfg.train),
        *cfg.train.fairseq_args,
    ]
