"""``moemt train``: the resolved config becomes fairseq's config; fairseq's trainer runs in-process.

Run directory contract:

- ``config.yaml``: the resolved config of the latest command, with ``meta`` (package versions,
  git commit, the interpolations as written); ``checkpoints/config.yaml``: the config the
  checkpoints were trained with.
- Rerunning resumes from ``checkpoints/checkpoint_last.pt`` (fairseq restores model, optimizer,
  lr schedule, data position and cumulative training time). A config that differs from the
  checkpoints' one in anything but the keys of :data:`RESUMABLE_KEYS` (budgets, intervals,
  logging) is refused with the keys that differ, Sockeye-style, unless ``overwrite`` (start over)
  or ``finetune_from`` (start from another model's weights; the old checkpoints are kept aside).
- ``logs/train.log``: every log line; ``logs/train_summary.json``: updates, epochs, wall-clock and
  CPU seconds (cumulative over resumes), last validation.
- Ctrl-C stops training; the last checkpoint stays, and the same command resumes from it.
- ``train.upcycle_from`` (sparse upcycling, :mod:`.upcycle`): before the first update the MoE
  model is built from a dense run's weights into ``upcycle/init.pt`` and training starts from it
  (as ``finetune_from``); a resumed run continues from its own checkpoints.

Data parallel (``train.distributed_world_size=N``, or started by torchrun / srun, see
:mod:`moe_mt.workflows.train.distributed`): one process owns the run directory. Spawned, it is the
launching process (it holds the lock, checks and writes the config, then starts the ranks);
under torchrun/srun it is rank 0, which does the same after the ranks have met and tells the
others whether to start. Rank 0 alone writes ``logs/`` and the live view, fairseq writes
checkpoints on rank 0 only; the other ranks write no file. The world size is recorded in the
config, and the guard compares the global batch (``distributed_world_size x update_freq``), so a
run may resume on another number of processes with the same global batch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import resource
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from moe_mt.checkpoints import read_num_updates
from moe_mt.config import RUN_CONFIG, load_config, run_config_text
from moe_mt.errors import MoeMtError, WriteError
from moe_mt.models import families
from moe_mt.provenance import provenance
from moe_mt.workflows.common.differences import differences as dict_differences
from moe_mt.workflows.common.manifest import prepared_data_config, recorded_data_config
from moe_mt.workflows.common.rundir import (
    RunDir,
    atomic_write_json,
    atomic_write_text,
    check_writable,
)
from moe_mt.workflows.train import distributed
from moe_mt.workflows.train.distributed import Launch
from moe_mt.workflows.train.fairseq_args import train_args
from moe_mt.workflows.train.view import rank_logs, training_logs

#: Keys that may change between a run and its resumption: they bound or observe the training,
#: they do not change the model, the data or the optimisation.
RESUMABLE_KEYS = (
    "name",
    "run_dir",
    "eval",
    "data.workers",  # how prep ran, not what it wrote
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
    "train.distributed_timeout_minutes",
    "model.moe.eval_capacity_factor",  # used at evaluation only
    "model.moe.eval_capacity_token_fraction",  # the same, fairseq's capacity formula
    "model.expert_parallel_size",  # checkpoints hold all experts whatever it is
    # Checked as their product, the global batch (see GLOBAL_BATCH_KEYS).
    "train.distributed_world_size",
    "train.update_freq",
)

#: Their product is the number of batches per update: the one thing about them the model sees.
GLOBAL_BATCH_KEYS = ("distributed_world_size", "update_freq")

LAST_CHECKPOINT = "checkpoint_last.pt"


@dataclass
class TrainResult:
    run_dir: Path
    fairseq_args: list[str]
    dry_run: bool = False
    resumed_from_update: int = 0
    summary: dict = field(default_factory=dict)
    rank: int = 0  # of this process in a torchrun/srun job; only rank 0 reports


def config_differences(old: DictConfig, new: DictConfig) -> list[str]:
    """``key: old -> new`` for every key outside :data:`RESUMABLE_KEYS` whose value differs,
    values resolved (``train.warmup_updates: ${train.max_update}`` is the number it names)."""
    differences = dict_differences(
        OmegaConf.to_container(old, resolve=True),
        OmegaConf.to_container(new, resolve=True),
        skip=lambda key: any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS),
    )
    before, after = (_batches_per_update(c) for c in (old, new))
    if before[0] != after[0]:
        keys = " x ".join(f"train.{k}" for k in GLOBAL_BATCH_KEYS)
        differences.append(f"{keys}: {before[1]} -> {after[1]}")
    return differences


def _batches_per_update(cfg: DictConfig) -> tuple[int, str]:
    values = [int(OmegaConf.select(cfg, f"train.{k}") or 1) for k in GLOBAL_BATCH_KEYS]
    return values[0] * values[1], " x ".join(map(str, values))


def checkpoint_update(path: Path) -> int:
    """Number of updates a fairseq checkpoint was saved at (safe load, allow-listed)."""
    return read_num_updates(path)


@dataclass
class RankJob:
    """What every rank of a data-parallel training needs (picklable: spawn sends it)."""

    launch: Launch
    run_dir: str
    args: list[str]
    resumed_from: int
    max_update: int
    max_seconds: float
    timeout_minutes: float


def train(
    cfg: DictConfig,
    *,
    overwrite: bool = False,
    finetune_from: str | Path | None = None,
    dry_run: bool = False,
    console: Console | None = None,
) -> TrainResult:
    """Train or resume ``cfg``'s model in its run directory (module docstring: the contract).

    With ``train.distributed_world_size`` > 1 the ranks are spawned processes, which import the
    caller's main module again: a script that calls this must do so under
    ``if __name__ == "__main__":``, as with any ``torch.multiprocessing`` code.
    """
    console = console or Console(stderr=True)
    launch = distributed.launch_plan(cfg.train.distributed_world_size)
    if launch is not None and launch.world_size != cfg.train.distributed_world_size:
        # torchrun/srun chose the world size: the config records the one that trained.
        cfg = copy.deepcopy(cfg)  # not the caller's
        cfg.train.distributed_world_size = launch.world_size
    run_dir = RunDir(cfg.run_dir)
    args = train_args(cfg, run_dir)
    start_from = _finetune_checkpoint(finetune_from) if finetune_from is not None else None
    if start_from is not None:
        if cfg.train.upcycle_from is not None:
            raise MoeMtError("train.upcycle_from and --finetune-from both name a start: use one")
        args += ["--finetune-from-model", str(start_from)]
    upcycle_source = _upcycle_source(cfg)
    # Every error fairseq or an architecture finds in the arguments (an unknown option, Soft MoE
    # in a decoder) or the model's layers find in their options (top_k > num_experts, MH-MoE
    # heads not dividing the width) surfaces here, before anything is written.
    fairseq_cfg = parse_fairseq_args(args)
    check_model(cfg)
    dropped = dropped_aux_losses(cfg)
    if dropped:
        console.print(f"warning: {dropped}", highlight=False, soft_wrap=True)
    if dry_run:
        return TrainResult(run_dir.root, args, dry_run=True)
    if launch is not None and not launch.spawn:
        return _train_as_rank(
            cfg, launch, run_dir, args, start_from, overwrite, console, upcycle_source
        )

    with run_dir.locked():
        prepared, resumed_from = _prepare(cfg, run_dir, args, start_from, overwrite, upcycle_source)
        if launch is None:
            if prepared != args:
                fairseq_cfg = parse_fairseq_args(prepared)

            def run() -> None:
                # Imported inside the log context: fairseq_cli.train's basicConfig is then a no-op.
                from fairseq import checkpoint_utils
                from fairseq.distributed import utils as distributed_utils
                from fairseq_cli import train as fairseq_train

                # fairseq keeps the best validation score on a function attribute, one training
                # per process in its CLI; in-process, a run would inherit another run's best and
                # never write checkpoint_best.pt. A resumed run gets its own back from its
                # checkpoint (checkpoint_utils.load_checkpoint).
                vars(checkpoint_utils.save_checkpoint).pop("best", None)
                distributed_utils.call_main(fairseq_cfg, fairseq_train.main)

            summary = _run_logged(run_dir, prepared, console, resumed_from, cfg.train, run)
        else:
            summary = _spawn(_job(cfg, launch, run_dir, prepared, resumed_from))
        return TrainResult(
            run_dir.root, prepared, resumed_from_update=resumed_from, summary=summary
        )


def _prepare(
    cfg: DictConfig,
    run_dir: RunDir,
    args: list[str],
    start_from: Path | None,
    overwrite: bool,
    upcycle_source: Path | None = None,
) -> tuple[list[str], int]:
    """Check the data, apply --overwrite / --finetune-from / the resume guard, write the config;
    upcycle (``upcycle_source``) when training starts from scratch.

    Runs in the one process that holds the run directory's lock. Returns fairseq's arguments
    (the fine-tuning checkpoint may have moved aside, the upcycled one added) and the update
    training resumes from.
    """
    _check_data(cfg, run_dir)
    _check_a_pair_fits(cfg.train.max_tokens, run_dir)
    last = run_dir.checkpoints / LAST_CHECKPOINT
    if last.exists():
        if overwrite:
            _remove_training(run_dir)
        elif start_from is not None:
            aside = _set_aside_checkpoints(run_dir)
            if start_from.is_relative_to(run_dir.checkpoints.resolve()):
                start_from = aside / start_from.relative_to(run_dir.checkpoints.resolve())
                args = [*args[:-1], str(start_from)]
        else:
            _guard(cfg, run_dir)
    elif overwrite:
        _remove_training(run_dir)
    resumed_from = checkpoint_update(last) if last.exists() else 0
    if upcycle_source is not None and not last.exists():
        from moe_mt.workflows.train.upcycle import write_upcycled_checkpoint

        init = write_upcycled_checkpoint(cfg, run_dir, upcycle_source)
        args = [*args, "--finetune-from-model", str(init)]

    meta = {**provenance(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    text = run_config_text(cfg, meta)  # resolved; interpolations as written in meta.unresolved
    for directory in (run_dir.checkpoints, run_dir.logs):  # fairseq and the log write there
        check_writable(directory)
    atomic_write_text(run_dir.config, text)
    if not (run_dir.checkpoints / RUN_CONFIG).exists() or resumed_from == 0:
        atomic_write_text(run_dir.checkpoints / RUN_CONFIG, text)
    return args, resumed_from


def _job(cfg, launch: Launch, run_dir: RunDir, args: list[str], resumed_from: int) -> RankJob:
    return RankJob(
        launch=launch,
        run_dir=str(run_dir.root),
        args=args,
        resumed_from=resumed_from,
        max_update=cfg.train.max_update,
        max_seconds=cfg.train.max_time_minutes * 60,
        timeout_minutes=cfg.train.distributed_timeout_minutes,
    )


def _train_as_rank(
    cfg,
    launch: Launch,
    run_dir: RunDir,
    args,
    start_from,
    overwrite,
    console,
    upcycle_source: Path | None = None,
) -> TrainResult:
    """One rank started by torchrun/srun: rank 0 prepares the run directory, then all train.

    The ranks meet first, so that rank 0 can tell the others whether the run directory is theirs
    (a refused resume or a held lock stops every rank at once instead of leaving them waiting).
    """
    distributed.init_process_group(launch, launch.rank, cfg.train.distributed_timeout_minutes)
    try:
        if launch.rank != 0:
            started = distributed.broadcast_from_rank0(None)
            if "error" in started:
                raise MoeMtError(f"rank {launch.rank}: rank 0 did not start: {started['error']}")
            job = started["job"]
            _run_rank(job, launch.rank, console)
            return TrainResult(
                run_dir.root, job.args, resumed_from_update=job.resumed_from, rank=launch.rank
            )
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(run_dir.locked())
                prepared, resumed_from = _prepare(
                    cfg, run_dir, args, start_from, overwrite, upcycle_source
                )
            except BaseException as exc:
                distributed.broadcast_from_rank0({"error": str(exc) or type(exc).__name__})
                raise
            job = _job(cfg, launch, run_dir, prepared, resumed_from)
            distributed.broadcast_from_rank0({"job": job})
            summary = _run_rank(job, 0, console)
        return TrainResult(
            run_dir.root, prepared, resumed_from_update=resumed_from, summary=summary
        )
    finally:
        distributed.destroy_process_group()


def _spawn(job: RankJob) -> dict:
    """Start the ranks of ``job`` in this node (as fairseq's ``call_main`` does); rank 0's summary.

    When a rank fails, torch's ``join`` stops the others (SIGTERM) and names the first failure,
    which becomes the one-line error.
    """
    import torch.multiprocessing as mp

    context = mp.spawn(_spawned_rank, args=(job,), nprocs=job.launch.world_size, join=False)
    previous = _forward_sigterm(context.processes)
    try:
        while not context.join():
            pass
    except mp.ProcessRaisedException as exc:
        raise MoeMtError(f"rank {exc.error_index}: {_last_line(exc.msg)}") from None
    except mp.ProcessExitedException as exc:
        how = f"signal {exc.signal_name}" if exc.signal_name else f"exit code {exc.exit_code}"
        raise MoeMtError(f"rank {exc.error_index} stopped ({how})") from None
    except KeyboardInterrupt:
        # The ranks got the same Ctrl-C (or the forwarded SIGTERM): let rank 0 write its
        # summary, then make sure.
        for process in context.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return _read_json(RunDir(job.run_dir).logs / "train_summary.json")


def _forward_sigterm(processes):
    """While the ranks run, a SIGTERM to this process (which a terminal's Ctrl-C reaches with
    the ranks, but ``kill`` or a scheduler's stop reaches alone) is sent on to every live rank
    as SIGINT, so that they stop as on Ctrl-C (rank 0 writes its summary); then this process's
    own SIGTERM handling runs (the CLI's: an interrupt, ``terminated``, exit 143). Returns the
    handler it replaced, None off the main thread (where no handler can be set)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:  # a handler not set from Python: restore the default afterwards
        previous = signal.SIG_DFL

    def forward(signum, frame):
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGINT)
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, forward)
    return previous


def _spawned_rank(index: int, job: RankJob) -> None:
    """Entry point of a spawned rank (a fresh interpreter: ``import moe_mt`` ran on unpickling)."""
    distributed.init_process_group(job.launch, index, job.timeout_minutes)
    try:
        _run_rank(job, index, Console(stderr=True))
    finally:
        distributed.destroy_process_group()
    # Done: skip the interpreter's teardown, where gloo leftovers can still abort a finished rank
    # (see distributed.destroy_process_group); its files are closed, its streams flushed here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run_rank(job: RankJob, rank: int, console: Console) -> dict:
    """Train as ``rank`` of ``job`` (its process group joined); rank 0 logs and summarises."""
    from fairseq.distributed import utils as distributed_utils

    fairseq_cfg = parse_fairseq_args(job.args)
    setup = fairseq_cfg.distributed_training
    setup.distributed_init_method = job.launch.init_method
    setup.distributed_rank = rank
    setup.distributed_no_spawn = True
    local_rank = job.launch.local_rank if not job.launch.spawn else rank

    def run() -> float:
        from fairseq_cli import train as fairseq_train

        started = _cpu_seconds()
        silent = f"rank {rank}: no progress for {job.timeout_minutes:g} minutes: another rank "
        silent += "stopped or stopped answering"
        try:
            # fairseq's distributed_init finds the process group joined and keeps it.
            with _quiet_reinit_warning(), distributed.Watchdog(job.timeout_minutes * 60, silent):
                distributed_utils.distributed_main(local_rank, fairseq_train.main, fairseq_cfg, {})
                return distributed.sum_over_ranks(_cpu_seconds() - started)
        except Exception as exc:
            if distributed.is_distributed_error(exc):
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise MoeMtError(
                    f"rank {rank}: another rank stopped or stopped answering ({first})"
                ) from exc
            raise

    if rank == 0:
        bounds = {"max_update": job.max_update, "max_time_minutes": job.max_seconds / 60}
        return _run_logged(
            RunDir(job.run_dir), job.args, console, job.resumed_from, bounds, run, job.launch
        )
    with rank_logs(rank, console):
        run()
    return {}


@contextlib.contextmanager
def _quiet_reinit_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Distributed is already initialized")
        yield


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else "failed"
    return re.sub(rf"^{re.escape(MoeMtError.__module__)}\.\w+: ", "", line)


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


def check_model(cfg: DictConfig) -> None:
    """Build ``cfg``'s model on the meta device (shapes, no memory, milliseconds): an option its
    layers refuse is one ``model: ...`` line (:func:`.model_summary.build_model`), as in
    ``moemt train --dry-run``'s summary, instead of a traceback from inside fairseq's trainer
    after the run directory was written."""
    import torch

    from moe_mt.workflows.train.model_summary import build_model

    with torch.device("meta"):
        build_model(cfg)


def _run_logged(
    run_dir: RunDir,
    args: list[str],
    console: Console,
    resumed_from: int,
    bounds,
    run: Callable[[], float | None],
    launch: Launch | None = None,
) -> dict:
    """Run ``run`` (fairseq's training) with logs/train.log and the live view; write the summary.

    ``bounds`` holds ``max_update`` and ``max_time_minutes``. ``run`` returns the CPU seconds of
    all ranks, or None for this process's own.
    """
    previous = _recorded_progress(run_dir) if resumed_from else {}
    started_wall, started_cpu = time.time(), _cpu_seconds()
    max_seconds = bounds["max_time_minutes"] * 60
    interrupted, cpu_seconds = False, None
    with training_logs(
        run_dir.logs / "train.log", console, bounds["max_update"], max_seconds
    ) as monitor:
        import logging

        from moe_mt.compat import checkpoint_extra_state

        def progress() -> dict:
            """What a checkpoint records of the training that led to it (see
            :func:`_recorded_progress`): cumulative over the processes that trained it."""
            return {
                PROGRESS_KEY: {
                    "wall_seconds": round(
                        previous.get("wall_seconds", 0) + time.time() - started_wall, 1
                    ),
                    "cpu_seconds": round(
                        previous.get("cpu_seconds", 0) + _cpu_seconds() - started_cpu, 1
                    ),
                    "valid_history": _valid_history(previous, monitor.valid_history),
                }
            }

        log = logging.getLogger("moe_mt.train")
        log.info("moemt train %s: fairseq-train %s", run_dir.root, " ".join(args))
        if launch is not None:
            log.info("data parallel: %d ranks (%s)", launch.world_size, launch.launcher)
        if resumed_from:
            log.info("resuming from %s at update %d", LAST_CHECKPOINT, resumed_from)
        try:
            with checkpoint_extra_state(progress):
                cpu_seconds = run()
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: rerun the same command to resume from %s", LAST_CHECKPOINT)
        except WriteError as exc:  # a checkpoint on a full disk: say what is left to resume
            raise WriteError(f"{exc}; {_resume_point(run_dir)}", exc.path, exc.errno) from exc
        if cpu_seconds is None:
            cpu_seconds = _cpu_seconds() - started_cpu
        summary = {
            "num_updates": _number(monitor.train.get("num_updates")),
            "epoch": _number(monitor.train.get("epoch")),
            "train_loss": _number(monitor.epoch_end.get("loss", monitor.train.get("loss"))),
            "last_valid": _numbers(monitor.valid),
            # Each validation with its cumulative training wall-clock time (over resumes).
            "valid_history": _valid_history(previous, monitor.valid_history),
            "wall_seconds": round(previous.get("wall_seconds", 0) + time.time() - started_wall, 1),
            # Of every rank of the latest run, cumulative over resumes.
            "cpu_seconds": round(previous.get("cpu_seconds", 0) + cpu_seconds, 1),
            "world_size": launch.world_size if launch is not None else 1,
            "interrupted": interrupted,
        }
        last = run_dir.checkpoints / LAST_CHECKPOINT
        if last.exists():
            summary["num_updates"] = checkpoint_update(last)
        atomic_write_json(run_dir.logs / "train_summary.json", summary)
    if interrupted:
        raise KeyboardInterrupt
    return summary


#: The key of a checkpoint's ``extra_state`` that holds moemt's record of the training so far.
PROGRESS_KEY = "moemt_progress"


def _valid_history(previous: dict, validations: list[dict]) -> list[dict]:
    """The validations before this process (``previous``'s) and this process's, each with its
    cumulative training wall-clock time; values as numbers (fairseq logs them as strings)."""
    offset = previous.get("wall_seconds", 0)
    return [_numbers(v) for v in previous.get("valid_history", [])] + [
        _numbers({**v, "wall_seconds": round(offset + v["elapsed_seconds"], 1)})
        for v in validations
    ]


def _number(value):
    """fairseq's JSON logs hold numbers as strings ("4.87"): the number; anything else as it
    is."""
    if not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _numbers(stats: dict | None) -> dict | None:
    return None if stats is None else {k: _number(v) for k, v in stats.items()}


def _recorded_progress(run_dir: RunDir) -> dict:
    """Wall-clock and CPU seconds and validations of the training up to the last checkpoint.

    The summary of the process that saved that checkpoint, when there is one (it also counts
    the CPU of every rank); else what the checkpoint records (``extra_state``,
    :data:`PROGRESS_KEY`): a process killed after it (kill -9: no summary written) loses
    nothing of its time and validations, and validations after it are not counted (the resumed
    run repeats them). Checkpoints written before this record: the last summary as it is.
    """
    from moe_mt.checkpoints import load_state, state_num_updates

    state = load_state(run_dir.checkpoints / LAST_CHECKPOINT)
    recorded = (state.get("extra_state") or {}).get(PROGRESS_KEY)
    summary = _read_json(run_dir.logs / "train_summary.json")
    if isinstance(recorded, dict) and summary.get("num_updates") != state_num_updates(state):
        return recorded
    return summary


def _resume_point(run_dir: RunDir) -> str:
    last = run_dir.checkpoints / LAST_CHECKPOINT
    try:
        updates = checkpoint_update(last)
    except MoeMtError:
        return "no checkpoint was saved before; free space and rerun the same command"
    return f"{last} (update {updates}) is intact: free space and rerun the same command to resume"


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
    if recorded_data_config(manifest) != prepared_data_config(cfg.data):
        raise MoeMtError(
            f"{run_dir.manifest}: data was prepared with another data config; "
            "run `moemt prep` with this config first"
        )


def _check_a_pair_fits(max_tokens: int | None, run_dir: RunDir) -> None:
    """fairseq drops the training pairs with a side longer than ``train.max_tokens`` (its
    ``max_positions``): refuse a budget below every pair, which fairseq reports as an empty
    dataset after the run directory was written."""
    shortest = _shortest_training_pair(run_dir)
    if max_tokens is not None and shortest is not None and max_tokens < shortest:
        raise MoeMtError(
            f"train.max_tokens={max_tokens}: no training pair fits: the shortest is {shortest} "
            "tokens (its longer side, end of sentence included)"
        )


def _shortest_training_pair(run_dir: RunDir) -> int | None:
    """The fewest tokens of a training pair's longer side over the binarised training splits
    (``data/bin/train.A-B.{A,B}``; without language tokens, a lower bound); None if none."""
    import numpy
    from fairseq.data import indexed_dataset

    shortest = None
    for src_idx in sorted((run_dir.data / "bin").glob("train.*-*.*.idx")):
        pair, lang = src_idx.name.removesuffix(".idx").rsplit(".", 1)
        a, _, b = pair.removeprefix("train.").partition("-")
        if lang != a or not src_idx.with_name(f"{pair}.{b}.idx").is_file():
            continue
        sides = []
        for side in (a, b):
            prefix = str(src_idx.with_name(f"{pair}.{side}"))
            impl = indexed_dataset.infer_dataset_impl(prefix)
            dataset = indexed_dataset.make_dataset(prefix, impl=impl)
            sides.append(numpy.array(dataset.sizes))  # a copy: the view dies with the mmap
            del dataset
        if len(sides[0]) and len(sides[0]) == len(sides[1]):
            fewest = int(numpy.maximum(sides[0], sides[1]).min())
            shortest = fewest if shortest is None else min(shortest, fewest)
    return shortest


def dropped_aux_losses(cfg: DictConfig) -> str | None:
    """One line when ``train.criterion`` is the dense baseline's while the model's family trains
    with its own (an MoE family's auxiliary losses: Switch's balance loss); None otherwise."""
    family = families.family_of_arch(cfg.model.arch)
    if family is None or family.criterion == families.DENSE_CRITERION:
        return None
    if cfg.train.criterion != families.DENSE_CRITERION:
        return None
    return (
        f"train.criterion={cfg.train.criterion} drops the {family.name} family's auxiliary "
        f"losses (its criterion: {family.criterion}); they are neither optimised nor logged"
    )


def _guard(cfg: DictConfig, run_dir: RunDir) -> None:
    trained_with = run_dir.checkpoints / RUN_CONFIG
    if not trained_with.exists():
        raise MoeMtError(
            f"{run_dir.checkpoints}: checkpoints without {RUN_CONFIG}; "
            "use --overwrite to start over"
        )
    previous = load_config(trained_with)
    differences = config_differences(previous, cfg)
    ranks = (previous.train.distributed_world_size, cfg.train.distributed_world_size)
    if not differences and ranks[0] != ranks[1]:
        # fairseq stores how many batches each rank has taken in the current epoch and skips
        # that many of its own batches on resume: with another number of ranks that lands
        # elsewhere in the epoch (some batches are seen twice or not at all until it ends).
        warnings.warn(
            f"{trained_with}: resuming on {ranks[1]} ranks a run trained on {ranks[0]}; if the "
            "last checkpoint is mid-epoch, the rest of that epoch is not the batches an "
            "uninterrupted run would see (from the next epoch on it is)",
            stacklevel=2,
        )
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


def _upcycle_source(cfg: DictConfig) -> Path | None:
    """``train.upcycle_from``'s checkpoint (checked before anything is written), or None."""
    if cfg.train.upcycle_from is None:
        return None
    from moe_mt.workflows.train.upcycle import check_upcyclable

    check_upcyclable(cfg)
    try:
        return _finetune_checkpoint(cfg.train.upcycle_from)
    except MoeMtError as exc:
        raise MoeMtError(f"train.upcycle_from: {exc}") from None


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
