"""Validate and clean a training pair of files on several processes, chunk by chunk.

The parent reads both files in chunks of :data:`CHUNK_LINES` aligned lines; a worker decodes and
validates each line (:mod:`validate`: fatal problems raise ``file:line``, recoverable ones drop
the pair) and applies the per-pair filters (:class:`clean.Filters`: length, ratio), and returns
the kept pairs with their deduplication keys. The parent takes the chunks back in file order and
removes duplicates itself, in that order, so the kept pairs, their order, the counts and the first
fatal error are those of one pass over the file, whatever the number of workers. At most two
chunks per worker are in flight, so memory does not grow with the corpus.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from moe_mt.data_prep import clean, validate
from moe_mt.data_prep.pool import WorkerPool

#: Lines per chunk: large enough that a chunk's transfer costs little against its work.
CHUNK_LINES = 20_000


def clean_files(
    inputs: tuple[Path, Path],
    dests: tuple[Path, Path],
    max_line_chars: int,
    filters: clean.Filters,
    workers: int = 1,
    on_lines: Callable[[int, int], None] = lambda read, total: None,
) -> tuple[validate.PairCounts, Counter, int]:
    """Write the pairs of ``inputs`` (source, target) that pass validation and cleaning to
    ``dests``; return the validation counts, the cleaning drops by filter and the pairs kept.
    ``on_lines(read, total)`` is called after each chunk with its lines and the file's."""
    lines = validate.count_pair_lines(*inputs)
    counts, dropped, kept, seen = validate.PairCounts(), Counter(), 0, set()
    with (
        open(dests[0], "w", encoding="utf-8") as out_src,
        open(dests[1], "w", encoding="utf-8") as out_tgt,
    ):
        jobs = _chunks(inputs, max_line_chars, filters)
        for read, chunk_counts, pairs in _run(jobs, workers if lines > CHUNK_LINES else 1):
            counts.raw += read
            for reason, n in chunk_counts.items():
                (dropped if reason in clean.FILTERS else counts.dropped)[reason] += n
            for src, tgt, key in pairs:
                if filters.dedup:
                    if key in seen:
                        dropped["duplicate"] += 1
                        continue
                    seen.add(key)
                out_src.write(src + "\n")
                out_tgt.write(tgt + "\n")
                kept += 1
            on_lines(read, lines)
    return counts, dropped, kept


def _chunks(inputs, max_line_chars, filters):
    """The workers' jobs: aligned chunks of raw lines, with the number of their first line."""
    with open(inputs[0], "rb") as src, open(inputs[1], "rb") as tgt:
        first = 1
        while True:
            src_lines = list(itertools.islice(src, CHUNK_LINES))
            if not src_lines:
                return
            tgt_lines = list(itertools.islice(tgt, len(src_lines)))
            yield inputs, first, src_lines, tgt_lines, max_line_chars, filters
            first += len(src_lines)


def _run(jobs, workers: int):
    """The results of ``jobs`` in order, on ``workers`` processes, two chunks each in flight."""
    if workers == 1:
        yield from (_screen(*job) for job in jobs)
        return
    with WorkerPool(workers) as pool:
        yield from pool.ordered(_screen, jobs, ahead=2 * workers)


def _screen(inputs, first: int, src_lines, tgt_lines, max_line_chars: int, filters):
    """Validate and filter one chunk: ``(lines, drops by reason, [(src, tgt, dedup key)])``.
    Lines are decoded in the order of one pass (source line n, then target line n), so the first
    fatal problem raised is the first in the files."""
    dropped: Counter = Counter()
    kept = []
    for number, (raw_src, raw_tgt) in enumerate(zip(src_lines, tgt_lines, strict=True), first):
        src = validate.decode_line(inputs[0], number, raw_src)
        tgt = validate.decode_line(inputs[1], number, raw_tgt)
        problem = validate.recoverable_problem(src, tgt, max_line_chars)
        reason = problem[0] if problem else filters.problem(src, tgt)
        if reason:
            dropped[reason] += 1
            continue
        kept.append((src, tgt, clean.pair_key(src, tgt) if filters.dedup else None))
    return len(src_lines), dropped, kept
