"""``moemt train``: the resolved config becomes fairseq's config; fairseq's trainer runs in-process.

Run directory contract:

- ``config.yaml``: the resolved config of the latest command, with ``meta`` (package versions,
  git commit); ``checkpoints/config.yaml``: the config the checkpoints were trained with.
- Rerunning resumes from ``checkpoints/checkpoint_last.pt`` (fairseq restores model, optimizer,
  lr schedule, data position and cumulative training time). A config that differs from the
  checkpoints' one in anything but the keys of :data:`RESUMABLE_KEYS` (budgets, intervals,
  logging) is refused with the keys that differ, Sockeye-style, unless ``overwrite`` (start over)
  or ``finetune_from`` (start from another model's weights; the old checkpoints are kept aside).
- ``logs/train.log``: every log line; ``logs/train_summary.json``: updates, epochs, wall-clock and
  CPU seconds (cumulative over resumes), last validation.
- Ctrl-C stops training; the last checkpoint stays, and the same command resumes from it.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from moe_mt.checkpoints import read_num_updates
from moe_mt.config import RUN_CONFIG, load_config, to_yaml
from moe_mt.errors import MoeMtError
from moe_mt.provenance import provenance
from moe_mt.workflows.fairseq_args import train_args
from moe_mt.workflows.rundir import RunDir, atomic_write_json, atomic_write_text
from moe_mt.workflows.train_view import training_logs

#: Keys that may change between a run and its resumption: they bound or observe the training,
#: they do not change the model, the data or the optimisation.
RESUMABLE_KEYS = (
    "name",
    "run_dir",
    "eval",
    "train.max_update",
    "train.max_epoch",
    "train.max_time_minutes",
    "train.patience",
    "train.validate_interval",
    "train.validate_interval_updates",
    "train.save_interval_updates",
    "train.keep_interval_updates",
    "train.keep_last_epochs",
    "train.keep_best_checkpoints",
    "train.eval_bleu",
    "train.eval_bleu_beam",
    "train.num_workers",
    "train.log_interval",
    "train.tensorboard_logdir",
    "model.moe.eval_capacity_factor",  # used at evaluation only
)

LAST_CHECKPOINT = "checkpoint_last.pt"


@dataclass
class TrainResult:
    run_dir: Path
    fairseq_args: list[str]
    dry_run: bool = False
    resumed_from_update: int = 0
    summary: dict = field(default_factory=dict)


def config_differences(old: DictConfig, new: DictConfig) -> list[str]:
    """``key: old -> new`` for every key outside :data:`RESUMABLE_KEYS` whose value differs."""
    flat_old, flat_new = (
        _flatten(OmegaConf.to_container(old)),
        _flatten(OmegaConf.to_container(new)),
    )
    differences = []
    for key in sorted(set(flat_old) | set(flat_new)):
        if any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS):
            continue
        a, b = flat_old.get(key, "<unset>"), flat_new.get(key, "<unset>")
        if a != b:
            differences.append(f"{key}: {a!r} -> {b!r}")
    return differences


def _flatten(node, prefix: str = "") -> dict:
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    flat = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def checkpoint_update(path: Path) -> int:
    """Number of updates a fairseq checkpoint was saved at (safe load, allow-listed)."""
    return read_num_updates(path)


def train(
    cfg: DictConfig,
    *,
    overwrite: bool = False,
    finetune_from: str | Path | None = None,
    dry_run: bool = False,
    console: Console | None = None,
) -> TrainResult:
    console = console or Console(stderr=True)
    run_dir = RunDir(cfg.run_dir)
    args = train_args(cfg, run_dir)
    start_from = _finetune_checkpoint(finetune_from) if finetune_from is not None else None
    if start_from is not None:
        args += ["--finetune-from-model", str(start_from)]
    # Every error fairseq or an architecture finds in the arguments (an unknown option, Soft MoE
    # in a decoder) surfaces here, before anything is written.
    fairseq_cfg = parse_fairseq_args(args)
    if dry_run:
        return TrainResult(run_dir.root, args, dry_run=True)

    with run_dir.locked():
        _check_data(cfg, run_dir)
        last = run_dir.checkpoints / LAST_CHECKPOINT
        if last.exists():
            if overwrite:
                _remove_training(run_dir)
            elif start_from is not None:
                aside = _set_aside_checkpoints(run_dir)
                if start_from.is_relative_to(run_dir.checkpoints.resolve()):
                    start_from = aside / start_from.relative_to(run_dir.checkpoints.resolve())
                    args[-1] = str(start_from)
                    fairseq_cfg = parse_fairseq_args(args)
            else:
                _guard(cfg, run_dir)
        elif overwrite:
            _remove_training(run_dir)
        resumed_from = checkpoint_update(last) if last.exists() else 0

        meta = {**provenance(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        text = to_yaml(cfg) + to_yaml(OmegaConf.create({"meta": meta}))
        atomic_write_text(run_dir.config, text)
        run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
        if not (run_dir.checkpoints / RUN_CONFIG).exists() or resumed_from == 0:
            atomic_write_text(run_dir.checkpoints / RUN_CONFIG, text)

        summary = _run_fairseq(cfg, run_dir, args, fairseq_cfg, console, resumed_from)
        return TrainResult(run_dir.root, args, resumed_from_update=resumed_from, summary=summary)


def parse_fairseq_args(args: list[str]):
    """fairseq's config for a fairseq-train argument list; a rejected argument is one line."""
    import contextlib
    import io

    import moe_mt

    moe_mt.register()
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, args))
    except SystemExit:  # argparse's way of rejecting an argument
        lines = [line for line in errors.getvalue().splitlines() if line.strip()]
        message = lines[-1] if lines else "invalid arguments"
        message = message.split(" (choose from ")[0]  # not fairseq's list of every choice
        raise MoeMtError(f"fairseq rejected the training arguments: {message}") from None


def _run_fairseq(
    cfg, run_dir: RunDir, args: list[str], fairseq_cfg, console: Console, resumed_from: int
):
    from fairseq.distributed import utils as distributed_utils

    previous = _read_json(run_dir.logs / "train_summary.json") if resumed_from else {}
    started_wall, started_cpu = time.time(), _cpu_seconds()
    max_seconds = cfg.train.max_time_minutes * 60
    interrupted = False
    with training_logs(
        run_dir.logs / "train.log", console, cfg.train.max_update, max_seconds
    ) as monitor:
        import logging

        log = logging.getLogger("moe_mt.train")
        log.info("moemt train %s: fairseq-train %s", run_dir.root, " ".join(args))
        if resumed_from:
            log.info("resuming from %s at update %d", LAST_CHECKPOINT, resumed_from)
        from fairseq_cli import train as fairseq_train

        try:
            distributed_utils.call_main(fairseq_cfg, fairseq_train.main)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: rerun the same command to resume from %s", LAST_CHECKPOINT)
        summary = {
            "num_updates": monitor.train.get("num_updates"),
            "epoch": monitor.train.get("epoch"),
            "train_loss": monitor.epoch_end.get("loss", monitor.train.get("loss")),
            "last_valid": monitor.valid,
            # Each validation with its cumulative training wall-clock time (over resumes).
            "valid_history": previous.get("valid_history", [])
            + [
                {**v, "wall_seconds": previous.get("wall_seconds", 0) + v["elapsed_seconds"]}
                for v in monitor.valid_history
            ],
            "wall_seconds": previous.get("wall_seconds", 0) + round(time.time() - started_wall, 1),
            "cpu_seconds": previous.get("cpu_seconds", 0) + round(_cpu_seconds() - started_cpu, 1),
            "interrupted": interrupted,
        }
        last = run_dir.checkpoints / LAST_CHECKPOINT
        if last.exists():
            summary["num_updates"] = checkpoint_update(last)
        atomic_write_json(run_dir.logs / "train_summary.json", summary)
    if interrupted:
        raise KeyboardInterrupt
    return summary


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _check_data(cfg: DictConfig, run_dir: RunDir) -> None:
    manifest = _read_json(run_dir.manifest)
    if not manifest:
        raise MoeMtError(f"{run_dir.data}: no prepared data; run `moemt prep` on this config first")
    if manifest.get("config") != OmegaConf.to_container(cfg.data):
        raise MoeMtError(
            f"{run_dir.manifest}: data was prepared with another data config; "
            "run `moemt prep` with this config first"
        )


def _guard(cfg: DictConfig, run_dir: RunDir) -> None:
    trained_with = run_dir.checkpoints / RUN_CONFIG
    if not trained_with.exists():
        raise MoeMtError(
            f"{run_dir.checkpoints}: checkpoints without {RUN_CONFIG}; "
            "use --overwrite to start over"
        )
    differences = config_differences(load_config(trained_with), cfg)
    if differences:
        raise MoeMtError(
            f"{trained_with}: the checkpoints were trained with another config "
            f"({'; '.join(differences)}); use --overwrite to start over, "
            "--finetune-from to start from a model, or another run_dir"
        )


def _remove_training(run_dir: RunDir) -> None:
    for path in (run_dir.checkpoints, run_dir.logs, run_dir.eval):
        shutil.rmtree(path, ignore_errors=True)


def _set_aside_checkpoints(run_dir: RunDir) -> Path:
    """Move checkpoints/ and logs/ to ``*.before-finetune.N``; return the checkpoints' new path."""
    n = 1
    while (aside := run_dir.root / f"checkpoints.before-finetune.{n}").exists():
        n += 1
    run_dir.checkpoints.rename(aside)
    if run_dir.logs.exists():
        run_dir.logs.rename(run_dir.root / f"logs.before-finetune.{n}")
    return aside.resolve()


def _finetune_checkpoint(source: str | Path) -> Path:
    """A checkpoint file, or a run directory (its ``checkpoint_best.pt``, else the last)."""
    path = Path(source).resolve()
    if path.is_dir():
        for name in ("checkpoint_best.pt", LAST_CHECKPOINT):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise MoeMtError(f"{path}: no checkpoints/checkpoint_best.pt or {LAST_CHECKPOINT}")
    if not path.is_file():
        raise MoeMtError(f"{path}: no such checkpoint")
    return path
