"""``moemt translate``: lines in, translations out, with the checkpoint ``eval.checkpoint`` chooses
and the engine ``eval.engine`` names (:mod:`.engine`).

It lives beside the engine rather than in :mod:`moe_mt.workflows.translate`: the CTranslate2
engine decodes an export, and the export is made from the fairseq :class:`Translator`, so
choosing between the two sits above both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from omegaconf import DictConfig

from moe_mt.checkpoints import choose_checkpoint
from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.manifest import directions, parse_direction
from moe_mt.workflows.common.rundir import RunDir
from moe_mt.workflows.export.engine import open_translator
from moe_mt.workflows.translate.translator import DecodeOptions


@dataclass
class StreamSummary:
    checkpoint: object  # moe_mt.checkpoints.ChosenCheckpoint
    lines: int
    seconds: float
    generated_tokens: int
    truncated: int
    engine: dict  # the eval report's engine entry: name, quantization, threads, ...


def translate_stream(
    cfg: DictConfig,
    lines: Iterable[str],
    write: Callable[[list[str]], None],
    chunk_lines: int = 10_000,
) -> StreamSummary:
    """Translate ``lines`` with the checkpoint and options of ``cfg.eval``; ``write`` receives
    the translations of each chunk of ``chunk_lines`` input lines, in input order.

    The run directory is locked only while the checkpoint is chosen, and only when that may
    write (``eval.checkpoint=average``), so that a run in training can still be sampled.
    """
    run_dir = RunDir(cfg.run_dir)
    options = DecodeOptions.from_config(cfg.eval)
    choose = functools.partial(
        choose_checkpoint, run_dir.checkpoints, cfg.eval.checkpoint, cfg.eval.average_last
    )
    if cfg.eval.checkpoint == "average":
        with run_dir.locked():
            chosen = choose()
    else:
        chosen = choose()
    translator, engine = open_translator(cfg, chosen, options, stream_direction(cfg))
    summary = StreamSummary(chosen, 0, 0.0, 0, 0, engine)
    for chunk in _chunks(lines, chunk_lines):
        result = translator.translate(chunk)
        write(result.hypotheses)
        summary.lines += len(chunk)
        summary.seconds += result.seconds
        summary.generated_tokens += result.generated_tokens
        summary.truncated += result.truncated
    return summary


def stream_direction(cfg: DictConfig) -> tuple[str, str]:
    """The one direction ``translate`` takes: ``eval.directions`` (one), else the run's only
    trained direction (a single-pair run's)."""
    trained = directions(cfg.data)
    if not cfg.eval.directions and len(trained) == 1:
        return trained[0].src, trained[0].tgt
    if len(cfg.eval.directions) != 1:
        raise MoeMtError(
            "translate takes one direction: give --src and --tgt (or eval.directions=[src-tgt]); "
            f"trained: {', '.join(d.name for d in trained)}"
        )
    direction = parse_direction(cfg.eval.directions[0], "eval.directions")
    return direction.src, direction.tgt


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
