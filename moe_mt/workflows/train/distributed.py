"""How the processes of a data-parallel ``moemt train`` are started and how they meet.

A training runs on several processes in one of three ways, the ones fairseq knows
(``fairseq.distributed.utils.infer_init_method`` / ``call_main``):

- **spawned**: ``moemt train ... train.distributed_world_size=N`` on one node. ``moemt`` starts
  N processes itself with ``torch.multiprocessing.spawn``, as fairseq's ``call_main`` does, and
  they meet at ``tcp://127.0.0.1:<free port>``. (fairseq's own single-node path cannot be used on
  CPU: it asserts that there are N CUDA devices and spawns ``min(cuda devices, N)`` processes.)
- **torchrun**: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` (and ``LOCAL_RANK``)
  are set: this process is one rank, nothing is spawned, the ranks meet at ``env://``.
- **srun**: ``SLURM_PROCID``, ``SLURM_NTASKS`` and ``SLURM_LOCALID`` are set (one task per
  rank): this process is one rank; the ranks meet at ``MASTER_ADDR:MASTER_PORT`` when set, else
  at the first host of ``SLURM_JOB_NODELIST`` (``scontrol show hostnames``) on a port derived
  from the job id.

Every rank initialises ``torch.distributed`` itself (:func:`init_process_group`) with a timeout,
before fairseq's ``distributed_init`` (which then finds it initialised and keeps it): fairseq
passes no timeout, and torch's default (30 minutes) is how long the other ranks would hang on a
rank that stopped answering. A rank that *exits* closes its sockets and the others fail at their
next collective at once; the timeout bounds the case of a rank that hangs.

:func:`run_local_ranks` starts ``N`` copies of a command the way torchrun would (for tests).
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from moe_mt.errors import MoeMtError

LOCALHOST = "127.0.0.1"
TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
SLURM_KEYS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a multi-process training.

    ``spawn``: this process starts ``world_size`` ranks (0 .. world_size-1) and is none of them;
    otherwise it is rank ``rank`` (started by torchrun or srun).
    """

    world_size: int
    init_method: str
    spawn: bool
    rank: int = 0
    local_rank: int = 0
    launcher: str = "spawn"  # spawn | torchrun | srun

    @property
    def is_rank0(self) -> bool:
        return not self.spawn and self.rank == 0


def launch_plan(world_size: int, environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process is part of; ``None`` for a plain one-process training.

    ``world_size`` is ``train.distributed_world_size``. Under torchrun or srun the environment
    decides the world size; a ``world_size`` > 1 that disagrees with it is an error.
    """
    env = os.environ if environ is None else environ
    launch = None
    if all(key in env for key in TORCHRUN_KEYS):
        launch = Launch(
            world_size=_int_env(env, "WORLD_SIZE"),
            init_method="env://",
            spawn=False,
            rank=_int_env(env, "RANK"),
            local_rank=_int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            launcher="torchrun",
        )
    elif all(key in env for key in SLURM_KEYS) and _int_env(env, "SLURM_NTASKS") > 1:
        host, port = _slurm_master(env)
        launch = Launch(
            world_size=_int_env(env, "SLURM_NTASKS"),
            init_method=f"tcp://{host}:{port}",
            spawn=False,
            rank=_int_env(env, "SLURM_PROCID"),
            local_rank=_int_env(env, "SLURM_LOCALID"),
            launcher="srun",
        )
    if launch is not None:
        if world_size > 1 and world_size != launch.world_size:
            raise MoeMtError(
                f"train.distributed_world_size={world_size}, but {launch.launcher} started "
                f"{launch.world_size} processes; leave the key at 1 or make them agree"
            )
        return launch if launch.world_size > 1 else None
    if world_size > 1:
        return Launch(world_size, f"tcp://{LOCALHOST}:{free_port()}", spawn=True)
    return None


def _int_env(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise MoeMtError(f"environment variable {key}={env[key]!r} is not an integer") from None


def _slurm_master(env: Mapping[str, str]) -> tuple[str, int]:
    """``MASTER_ADDR``/``MASTER_PORT`` if set, else the job's first node and a job-id port."""
    host = env.get("MASTER_ADDR")
    if host is None:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not nodes:
            raise MoeMtError("srun: set MASTER_ADDR (no SLURM_JOB_NODELIST to take it from)")
        try:
            out = subprocess.run(
                ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True
            ).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise MoeMtError(f"srun: set MASTER_ADDR (scontrol failed: {exc})") from None
        host = out.split()[0]
    if "MASTER_PORT" in env:
        return host, _int_env(env, "MASTER_PORT")
    # All tasks of a job agree on the port without talking; jobs on one node rarely collide.
    return host, 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that was free a moment ago (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def backend() -> str:
    """NCCL where CUDA is, gloo otherwise (the only torch.distributed backend on CPU)."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(launch: Launch, rank: int, timeout_minutes: float) -> None:
    """Join the process group of ``launch`` as ``rank``; collectives fail after the timeout."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    dist.init_process_group(
        backend=backend(),
        init_method=launch.init_method,
        world_size=launch.world_size,
        rank=rank,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )


class Watchdog:
    """Ends this process (exit code 1, one ``error:`` line on stderr) when it makes no progress for
    ``seconds``: no module's forward runs (training, validation and beam search all call them).

    Needed because the process-group timeout does not bound every wait: measured here (torch
    2.13, gloo, CPU), a rank blocked in DDP's gradient all-reduce on a peer that stopped (SIGSTOP,
    sockets open) was still waiting 45 s past a 15 s timeout. A hard exit, since a thread blocked
    in C++ never returns to Python to see an exception or a signal; the launcher (or the other
    ranks, whose connections then close) reports it. A phase without any forward that lasts longer
    than ``seconds`` (batching a huge corpus, writing a huge checkpoint) would end the run too:
    keep the timeout well above those.
    """

    def __init__(self, seconds: float, message: str):
        import threading

        self.seconds = seconds
        self.message = message
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="moemt-watchdog")
        self._hook = None

    def beat(self, *_) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(self.seconds / 4, 5.0)):
            if time.monotonic() - self._last > self.seconds:
                os.write(2, f"error: {self.message}\n".encode())
                os._exit(1)

    def __enter__(self) -> Watchdog:
        from torch.nn.modules.module import register_module_forward_pre_hook

        self.beat()
        self._hook = register_module_forward_pre_hook(self.beat)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._hook is not None:
            self._hook.remove()


def destroy_process_group() -> None:
    """Leave the process group, after freeing what still holds gloo work (the DDP reducer of a
    finished trainer, often kept alive by reference cycles). A rank must, before it exits:
    freeing gloo work objects during interpreter teardown aborts the process ("terminate called
    without an active exception", SIGABRT; pytorch/pytorch PR 179291 describes it), which the
    launcher then reports as a failed rank."""
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_from_rank0(obj):
    """Rank 0's ``obj`` on every rank (other ranks pass anything, e.g. None)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(value: float) -> float:
    import torch
    import torch.distributed as dist

    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total.item())


def is_distributed_error(exc: BaseException) -> bool:
    """Whether ``exc`` is torch.distributed reporting a lost or silent peer."""
    import torch.distributed as dist

    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError)
        and any(s in str(exc) for s in ("Connection closed by peer", "Timed out", "timed out"))
    )


def torchrun_environ(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables torchrun sets for ``rank`` of a one-node job meeting at 127.0.0.1:port."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": LOCALHOST,
        "MASTER_PORT": str(port),
    }


def run_local_ranks(
    command: Sequence[str],
    world_size: int = 2,
    *,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    rank_env: Mapping[int, Mapping[str, str]] | None = None,
) -> list[subprocess.CompletedProcess]:
    """Run ``world_size`` copies of ``command`` as the ranks of one job, torchrun-style.

    Each copy gets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1`` and a free
    ``MASTER_PORT`` in its environment (plus ``env``, and ``rank_env[rank]`` for that rank only),
    exactly what ``torchrun --nproc_per_node N`` gives its workers, so ``command`` (for instance
    ``[sys.executable, "-m", "moe_mt.cli.main", "train", recipe, *overrides]``) reads them and does
    not spawn. It waits for all copies and returns their completed processes in rank order
    (stdout and stderr captured as text). Unlike torchrun it does not stop the other ranks when one
    fails, so tests can check that the survivors exit by themselves; only when ``timeout``
    seconds pass does it kill every copy still running and raise ``TimeoutError``. Meant for tests
    (e.g. end-to-end checkpoint tests on 2 ranks); real jobs use torchrun or srun.
    """
    port = free_port()
    procs, outputs = [], []
    for rank in range(world_size):
        rank_environ = {
            **os.environ,
            **(env or {}),
            **torchrun_environ(rank, world_size, port),
            **((rank_env or {}).get(rank, {})),
        }
        # Files, not pipes: a rank blocked on a full pipe would stall the others' collectives.
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        outputs.append((out, err))
        procs.append(
            subprocess.Popen(list(command), env=rank_environ, cwd=cwd, stdout=out, stderr=err)
        )
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        raise TimeoutError(f"{world_size} ranks of {list(command)} ran past {timeout} s") from None
    finally:
        texts = []
        for out, err in outputs:
            out.seek(0), err.seek(0)
            texts.append((out.read(), err.read()))
            out.close(), err.close()
    return [
        subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        for proc, (stdout, stderr) in zip(procs, texts, strict=True)
    ]
