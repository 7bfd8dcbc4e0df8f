"""Seconds per update: ``moemt train`` on recipes/multi30k/wu2021_tiny.yaml against fairseq's own
trainer and Transformer with the same arguments, alternating in one run.

Each round trains both from scratch for ``--updates`` updates on the same prepared data (a
prepared copy of the recipe's ``data/``): moemt through ``moemt train`` (its architecture
``moemt_transformer_tiny``), fairseq through ``fairseq_cli.train`` with fairseq's ``transformer``
architecture at the same sizes and every other argument moemt passes, with moemt's compatibility
patches applied (fairseq 0.12.2 does not run on Python 3.11 / torch 2.13 / numpy 2 without them;
they change no computation). The time of an update is read from fairseq's own JSON log lines
(``wall`` at update ``--skip`` and at the last one), so start-up, data loading and the first
updates are not counted. Prints each round's seconds per update and the ratio moemt / fairseq.
Holds ``--lock`` (the machine's CPU lock) for each training, not across rounds.

    .venv/bin/python benchmarks/wu2021_speed.py --rounds 3 --updates 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from moe_mt.locking import exclusive

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "multi30k" / "wu2021_tiny.yaml"
FAIRSEQ_SIZES = {
    "encoder_layers": 4, "decoder_layers": 4, "encoder_embed_dim": 128,
    "decoder_embed_dim": 128, "encoder_ffn_embed_dim": 256, "decoder_ffn_embed_dim": 256,
    "encoder_attention_heads": 4, "decoder_attention_heads": 4,
}  # fmt: skip


@contextlib.contextmanager
def cpu_lock(path: str | None):
    if not path:
        yield
        return
    with open(path, "a") as handle, exclusive(handle, RuntimeError, wait=True):
        yield


def seconds_per_update(log_lines: list[str], skip: int) -> tuple[float, int]:
    """(seconds per update, updates timed) from fairseq's ``train_inner`` JSON lines."""
    walls = {}
    for line in log_lines:
        start = line.find("{")
        if "| train_inner |" not in line or start < 0:
            continue
        record = json.loads(line[start:])
        walls[int(record["num_updates"])] = float(record["wall"])
    first = min((u for u in walls if u >= skip), default=None)
    last = max(walls, default=None)
    if first is None or last is None or last <= first:
        raise SystemExit(f"too few train_inner lines to time (updates logged: {sorted(walls)})")
    return (walls[last] - walls[first]) / (last - first), last - first


def fairseq_arguments(moemt_args: list[str], save_dir: Path) -> list[str]:
    """moemt's fairseq arguments for fairseq's own model: no --user-dir, the ``transformer``
    architecture with the tiny sizes, another save directory."""
    out, skip_next = [], False
    for i, arg in enumerate(moemt_args):
        if skip_next:
            skip_next = False
            continue
        if arg in ("--user-dir", "--save-dir"):
            skip_next = True
            continue
        if i > 0 and moemt_args[i - 1] == "--arch":
            arg = "transformer"
        out.append(arg)
    for name, value in FAIRSEQ_SIZES.items():
        out += ["--" + name.replace("_", "-"), str(value)]
    return [*out, "--save-dir", str(save_dir)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--skip", type=int, default=20, help="updates not timed at the start")
    parser.add_argument("--lock", default="/tmp/moemt-cpu.lock")
    parser.add_argument("--data", type=Path, default=ROOT / "runs" / "wu2021_tiny" / "data")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    python, moemt = sys.executable, str(Path(sys.executable).parent / "moemt")
    if not (args.data / "manifest.json").is_file():
        raise SystemExit(f"{args.data}: not prepared; run `moemt prep {RECIPE}` first")
    budget = [f"train.max_update={args.updates}", "train.log_interval=10", "train.patience=-1"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="wu2021_speed.") as tmp:
        for round_ in range(1, args.rounds + 1):
            run_dir = Path(tmp) / f"moemt{round_}"
            run_dir.mkdir()
            shutil.copytree(args.data, run_dir / "data")
            overrides = [f"run_dir={run_dir}", *budget]
            subprocess.run(  # the data are the recipe's: prep is a no-op that writes config.yaml
                [moemt, "prep", str(RECIPE), *overrides], check=True, capture_output=True
            )
            with cpu_lock(args.lock):
                subprocess.run(
                    [moemt, "train", str(RECIPE), *overrides], check=True, capture_output=True
                )
            log = (run_dir / "logs" / "train.log").read_text(encoding="utf-8").splitlines()
            moemt_spu, timed = seconds_per_update(log, args.skip)

            code = (
                "import sys, moe_mt\n"
                "from moe_mt.config import load_config\n"
                "from moe_mt.workflows.common.rundir import RunDir\n"
                "from moe_mt.workflows.train.fairseq_args import train_args\n"
                "cfg = load_config(sys.argv[1], sys.argv[2:])\n"
                "print('\\0'.join(train_args(cfg, RunDir(cfg.run_dir))))\n"
            )
            listed = subprocess.run(
                [python, "-c", code, str(RECIPE), *overrides],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            moemt_args = listed.strip("\n").split("\0")
            fairseq_args = fairseq_arguments(moemt_args, Path(tmp) / f"fairseq{round_}")
            runner = (
                "import sys, moe_mt\n"  # moemt's compatibility patches only
                "from fairseq_cli.train import cli_main\n"
                "sys.argv = ['fairseq-train', *sys.argv[1:]]\n"
                "cli_main()\n"
            )
            with cpu_lock(args.lock):
                done = subprocess.run(
                    [python, "-c", runner, *fairseq_args],
                    check=True, capture_output=True, text=True, env={**os.environ},
                )  # fmt: skip
            fairseq_spu, _ = seconds_per_update((done.stdout + done.stderr).splitlines(), args.skip)
            rows.append({"round": round_, "moemt": moemt_spu, "fairseq": fairseq_spu})
            print(
                f"round {round_}: moemt {moemt_spu:.3f} s/update, fairseq {fairseq_spu:.3f} "
                f"s/update ({timed} updates each), ratio {moemt_spu / fairseq_spu:.3f}",
                flush=True,
            )
    ratios = [r["moemt"] / r["fairseq"] for r in rows]
    print(
        f"moemt / fairseq seconds per update: mean {statistics.mean(ratios):.3f}, "
        f"rounds {', '.join(f'{x:.3f}' for x in ratios)}"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
