"""Which checkpoint to evaluate: the last, the best, an average of the last N, or a path.

Checkpoints are always read through fairseq's ``checkpoint_utils.load_checkpoint_to_cpu``, which
loads with torch's ``weights_only=True`` and the allow-list of :mod:`moe_mt.compat`: reading a
checkpoint never runs code from it.

Averaging (``eval.checkpoint=average``) takes the periodic checkpoints of a run, both
``checkpoint<epoch>.pt`` and ``checkpoint_<epoch>_<update>.pt``, orders them by the update count
recorded inside each (``optimizer_history[-1]["num_updates"]``; one file per count, since an
epoch end can be saved under both names), and averages the parameters of the last N
element-wise. ``checkpoint_best.pt`` is a copy of a periodic one and never a candidate;
``checkpoint_last.pt`` is one only when it holds a state no numbered checkpoint has (training
stopped by ``max_update`` or a time budget between two periodic saves), so that the final
updates are not left out of the average. The average is written atomically to
``checkpoints/average_last<N>.pt`` together with a record of its inputs (name, size, mtime,
update count), and reused as long as the candidates on disk are unchanged.

``eval.average_over=epochs`` averages the last N epoch checkpoints (``checkpoint<epoch>.pt``)
only, as fairseq's ``scripts/average_checkpoints.py --num-epoch-checkpoints N`` does: neither
update checkpoints nor a ``checkpoint_last.pt`` saved between two epoch ends (a run stopped by
``max_update`` mid-epoch) take part. It is written to ``average_last<N>_epochs.pt``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from moe_mt.errors import MoeMtError, writing
from moe_mt.workflows.common.rundir import temporary_file

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
AVERAGE_KEY = "moemt_average"  # top-level key of an averaged checkpoint: what it was made of
AVERAGE_FORMAT = 1

_EPOCH = re.compile(r"checkpoint(\d+)\.pt")
_UPDATE = re.compile(r"checkpoint_(\d+)_(\d+)\.pt")


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint file and the number of updates it was saved at."""

    path: Path
    num_updates: int


@dataclass
class ChosenCheckpoint:
    """The outcome of :func:`choose_checkpoint`."""

    path: Path
    num_updates: int
    choice: str  # last | best | average | path
    averaged: list[CheckpointInfo] = field(default_factory=list)  # inputs of an average
    reused: bool = False  # an existing average was still valid

    def as_dict(self) -> dict:
        info = {"choice": self.choice, "path": str(self.path), "num_updates": self.num_updates}
        if self.choice == "average":
            info["averaged"] = [
                {"path": str(c.path), "num_updates": c.num_updates} for c in self.averaged
            ]
            info["reused"] = self.reused
        return info


# -- reading ---------------------------------------------------------------------------------


#: A torch file that loads safely but holds no fairseq checkpoint (``torch.save(12345, path)``).
NOT_A_CHECKPOINT = "not a fairseq checkpoint (no model state in it)"


def load_state(path: str | Path, arg_overrides: dict | None = None) -> dict:
    """A checkpoint's state on CPU, through fairseq's safe loader; unreadable -> MoeMtError."""
    from fairseq import checkpoint_utils

    path = Path(path)
    if not path.is_file():
        raise MoeMtError(f"{path}: no such checkpoint")
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(str(path), arg_overrides)
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        raise MoeMtError(f"{path}: not a loadable checkpoint: {_why_unloadable(exc)}") from exc
    except (TypeError, AttributeError) as exc:  # fairseq reads keys of what torch gave back
        raise MoeMtError(f"{path}: {NOT_A_CHECKPOINT}") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise MoeMtError(f"{path}: {NOT_A_CHECKPOINT}")
    return state


def _why_unloadable(exc: BaseException) -> str:
    """Why torch refused a file, without torch's advice to load it with ``weights_only=False``
    (that runs whatever code the file holds: never the answer for a file one cannot read)."""
    if isinstance(exc, pickle.UnpicklingError):
        found = re.search(r"unsupported GLOBAL (\S+)", str(exc))
        if found:
            what = f"it holds the global {found.group(1)}, which a safe load refuses"
        else:
            what = "a safe load refuses its content (damaged, or objects other than tensors)"
        return f"{what} (nothing in the file was run)"
    lines = [line for line in str(exc).strip().splitlines() if "weights_only" not in line]
    first = lines[0].split(". ")[0] if lines else ""  # torch goes on with guesses and advice
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return f"truncated, damaged or not a torch file ({detail})"


def state_num_updates(state: dict) -> int:
    """Updates recorded in a loaded checkpoint state (0 when it has no optimizer history)."""
    history = state.get("optimizer_history") or [{}]
    return int(history[-1].get("num_updates", 0))


def read_num_updates(path: str | Path) -> int:
    return state_num_updates(load_state(path))


def periodic_checkpoint_files(checkpoint_dir: Path) -> list[Path]:
    """``checkpoint<epoch>.pt`` and ``checkpoint_<epoch>_<update>.pt`` files of a directory."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(
        p
        for p in checkpoint_dir.iterdir()
        if p.is_file() and (_EPOCH.fullmatch(p.name) or _UPDATE.fullmatch(p.name))
    )


def scan_checkpoints(
    checkpoint_dir: Path, known: dict[str, dict] | None = None
) -> list[CheckpointInfo]:
    """Every averaging candidate file with its update count: the periodic checkpoints, then
    ``checkpoint_last.pt``.

    ``known`` maps file names to ``{"size", "mtime_ns", "num_updates"}`` recorded earlier: a
    file whose size and mtime still match is not loaded again.
    """
    known = known or {}
    files = periodic_checkpoint_files(checkpoint_dir)
    if (checkpoint_dir / LAST).is_file():
        files.append(checkpoint_dir / LAST)
    scanned = []
    for path in files:
        record = known.get(path.name)
        if record is not None and _stat_record(path) == _stat_part(record):
            updates = int(record["num_updates"])
        else:
            updates = read_num_updates(path)
        scanned.append(CheckpointInfo(path, updates))
    return scanned


def periodic_checkpoints(
    checkpoint_dir: Path, known: dict[str, dict] | None = None, scanned=None
) -> list[CheckpointInfo]:
    """The averaging candidates ordered by update count, one file per count (see
    :func:`scan_checkpoints`; pass its result as ``scanned`` to avoid a second scan)."""
    if scanned is None:
        scanned = scan_checkpoints(checkpoint_dir, known)
    by_updates: dict[int, CheckpointInfo] = {}
    for info in scanned:
        previous = by_updates.get(info.num_updates)
        # An epoch end saved under both names: prefer the update-named file (stable choice);
        # checkpoint_last.pt comes last and never replaces a numbered file.
        if previous is None or _UPDATE.fullmatch(info.path.name):
            by_updates[info.num_updates] = info
    return [by_updates[u] for u in sorted(by_updates)]


def _stat_record(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _stat_part(record: dict) -> dict:
    return {"size": record.get("size"), "mtime_ns": record.get("mtime_ns")}


# -- averaging -------------------------------------------------------------------------------


def average_model_states(
    states: Sequence[dict[str, torch.Tensor]],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Element-wise mean of model state dicts (oldest first, newest last).

    Floating-point tensors: summed in float64 in the order given, divided by the count, cast
    back to their dtype. Other tensors (integer counters, boolean masks) cannot be averaged:
    they are taken from the newest state. Returns the average and the names of non-float
    tensors whose values differ between the inputs.
    """
    if not states:
        raise ValueError("nothing to average")
    names = list(states[-1])
    for state in states:
        if set(state) != set(names):
            diff = sorted(set(state) ^ set(names))
            raise MoeMtError(
                f"cannot average checkpoints of different models (parameters differ: "
                f"{', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''})"
            )
    averaged: dict[str, torch.Tensor] = {}
    differing: list[str] = []
    for name in names:
        tensors = [state[name] for state in states]
        newest = tensors[-1]
        for t in tensors:
            if t.shape != newest.shape:
                raise MoeMtError(
                    f"cannot average checkpoints of different models ({name}: shape "
                    f"{tuple(t.shape)} vs {tuple(newest.shape)})"
                )
        if newest.is_floating_point():
            total = torch.zeros(newest.shape, dtype=torch.float64)
            for t in tensors:
                total += t.to(torch.float64)
            averaged[name] = (total / len(tensors)).to(newest.dtype)
        else:
            averaged[name] = newest.clone()
            if any(not torch.equal(t, newest) for t in tensors[:-1]):
                differing.append(name)
    return averaged, differing


def average_checkpoints(inputs: Sequence[CheckpointInfo], output: Path, record: dict) -> None:
    """Write the average of ``inputs`` (oldest first) to ``output`` atomically.

    The file is the newest input's state (config, update count, training position) with the
    averaged parameters, without the optimizer state, plus ``record`` under
    :data:`AVERAGE_KEY`.
    """
    from omegaconf import OmegaConf

    states = [load_state(info.path) for info in inputs]
    model, differing = average_model_states([s["model"] for s in states])
    state = states[-1]
    state["model"] = model
    state.pop("last_optimizer_state", None)
    if OmegaConf.is_config(state.get("cfg")):
        # fairseq stores plain containers; the loader turned it into a DictConfig.
        state["cfg"] = OmegaConf.to_container(state["cfg"], resolve=True, enum_to_str=True)
    state[AVERAGE_KEY] = {**record, "non_float_differing": differing}
    atomic_torch_save(state, output)


def atomic_torch_save(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then a rename: ``path`` is the old
    file or the whole new one, never a part. On any failure the temporary file is removed; a
    write that fails for a reason outside the program (disk full, read-only) is a
    :class:`~moe_mt.errors.WriteError` naming ``path``, once (fairseq's own save retries three
    times and logs each traceback). fairseq's checkpoints are written here too
    (:mod:`moe_mt.compat`)."""
    path = Path(path)
    with writing(path):
        # Named with the pid: a dead process's is removed by the next save in the directory.
        fd, tmp = temporary_file(path)
        try:
            with os.fdopen(fd, "wb") as out:
                writer = _FirstWriteError(out)
                try:
                    torch.save(obj, writer)
                except RuntimeError:
                    # torch's C++ writer reports a failed write() as "unexpected pos"; the
                    # OSError the file raised is the cause worth reporting.
                    if writer.error is not None:
                        raise writer.error from None
                    raise
                out.flush()
                os.fsync(out.fileno())
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


class _FirstWriteError:
    """A binary file for ``torch.save`` that remembers the first OSError its ``write`` raised."""

    def __init__(self, out):
        self._out, self.error = out, None

    def write(self, data) -> int:
        try:
            return self._out.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self._out.flush()


AVERAGE_OVER = ("checkpoints", "epochs")


def average_path(checkpoint_dir: Path, last: int, over: str = "checkpoints") -> Path:
    suffix = "_epochs" if over == "epochs" else ""
    return checkpoint_dir / f"average_last{last}{suffix}.pt"


def averaged_checkpoint(
    checkpoint_dir: Path, last: int, over: str = "checkpoints"
) -> ChosenCheckpoint:
    """The average of the last ``last`` periodic checkpoints (``over="epochs"``: epoch
    checkpoints only), reused when still valid.

    The caller holds the run directory's lock (this may write ``average_last<N>.pt``).
    """
    if last < 1:
        raise MoeMtError(f"eval.average_last must be at least 1, not {last}")
    if over not in AVERAGE_OVER:
        raise MoeMtError(f"eval.average_over: '{over}' is not one of {', '.join(AVERAGE_OVER)}")
    output = average_path(checkpoint_dir, last, over)
    previous = _existing_average(output)
    known = previous.get("candidates", {}) if previous else {}
    scanned = scan_checkpoints(checkpoint_dir, known)
    if over == "epochs":
        scanned = [c for c in scanned if _EPOCH.fullmatch(c.path.name)]
    candidates = periodic_checkpoints(checkpoint_dir, scanned=scanned)
    if len(candidates) < last:
        found = ", ".join(c.path.name for c in candidates) or "none"
        kinds = (
            "epoch checkpoints (checkpoint<epoch>.pt)"
            if over == "epochs"
            else "periodic checkpoints (checkpoint<epoch>.pt, checkpoint_<epoch>_<update>.pt)"
        )
        raise MoeMtError(
            f"{checkpoint_dir}: averaging the last {last} checkpoints needs {last} {kinds}; "
            f"found {len(candidates)} ({found}); lower eval.average_last"
        )
    chosen = candidates[-last:]
    record = {
        "format": AVERAGE_FORMAT,
        "inputs": [_input_record(c) for c in chosen],
        "candidates": {c.path.name: _input_record(c) for c in scanned},
    }
    reused = previous is not None and previous.get("inputs") == record["inputs"]
    if not reused:
        average_checkpoints(chosen, output, record)
    return ChosenCheckpoint(
        path=output,
        num_updates=chosen[-1].num_updates,
        choice="average",
        averaged=list(chosen),
        reused=reused,
    )


def _input_record(info: CheckpointInfo) -> dict:
    return {"name": info.path.name, **_stat_record(info.path), "num_updates": info.num_updates}


def _existing_average(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        record = load_state(path).get(AVERAGE_KEY)
    except MoeMtError:
        return None  # unreadable (e.g. truncated by a crash elsewhere): rebuild it
    if not isinstance(record, dict) or record.get("format") != AVERAGE_FORMAT:
        return None
    return record


# -- choosing --------------------------------------------------------------------------------


def _checkpoint_path(checkpoint_dir: Path, choice: str) -> Path:
    """``eval.checkpoint`` given as a path: a bare file name in the run's ``checkpoints/``, a
    relative path against the run directory (``checkpoints/checkpoint8.pt``) and then the
    working directory, an absolute path as it is. Not found: one line naming every place tried."""
    given = Path(choice).expanduser()
    if given.is_absolute():
        tried = [given]
    elif given.name == choice:
        tried = [checkpoint_dir / choice, given]
    else:
        tried = [checkpoint_dir.parent / given, given]
    for path in tried:
        if path.is_file():
            return path
    places = " nor ".join(str(p) for p in dict.fromkeys(tried))
    raise MoeMtError(
        f"eval.checkpoint={choice}: no such file ({places}); use last, best, average or a "
        "checkpoint path"
    )


def choose_checkpoint(
    checkpoint_dir: str | Path, choice: str, average_last: int = 5, average_over="checkpoints"
) -> ChosenCheckpoint:
    """Resolve ``eval.checkpoint``: ``last`` | ``best`` | ``average`` | a checkpoint path.

    A bare file name (``checkpoint_1_20.pt``) is looked up in ``checkpoint_dir`` first, a
    relative path in the run directory (``checkpoint_dir``'s parent) first, then in the working
    directory (:func:`_checkpoint_path`). For ``average`` the caller must hold the run
    directory's lock.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if choice == "average":
        return averaged_checkpoint(checkpoint_dir, average_last, average_over)
    if choice in ("last", "best"):
        path = checkpoint_dir / (LAST if choice == "last" else BEST)
        if not path.is_file():
            raise MoeMtError(
                f"{path}: no such checkpoint (eval.checkpoint={choice}); train this run first"
            )
    else:
        path = _checkpoint_path(checkpoint_dir, choice)
        path, choice = path.resolve(), "path"
    return ChosenCheckpoint(path=path, num_updates=read_num_updates(path), choice=choice)
