"""Validation of line-aligned parallel text, before any compute is spent on it.

Files are read as bytes and split on ``\\n`` only (``str.splitlines`` would also split on
U+2028/U+2029 and friends, silently shifting the alignment). Per line:

- fatal everywhere: invalid UTF-8 and a carriage return (CRLF line endings): both are
  properties of the whole file, to be fixed at the source;
- recoverable in ``train`` (the pair is dropped and counted), fatal in valid/test, where dropping
  would change the evaluation set: an empty line, a line over ``max_line_chars``, and a control
  character (C0/C1 except tab) or U+2028/U+2029, which break line-based tools downstream.
  Real training corpora carry a few such lines (IWSLT'14 De-En has a U+009A), so they are
  dropped there rather than stopping the run.

A pair of files whose line counts differ is fatal. Fatal problems raise :class:`MoeMtError`
with ``file:line: what`` on one line.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from moe_mt.errors import MoeMtError

#: Problems that drop a training pair (counted under these names) and are fatal elsewhere.
RECOVERABLE = ("empty", "control_char", "too_long")

_BAD_CHAR = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass
class PairCounts:
    """Line counts of one split: raw lines and pairs dropped by each recoverable problem."""

    raw: int = 0
    dropped: Counter = field(default_factory=Counter)

    @property
    def kept(self) -> int:
        return self.raw - sum(self.dropped.values())


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` of a UTF-8 file, newline removed; fatal problems raise."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, decode_line(path, number, raw)


def decode_line(path: Path, number: int, raw: bytes) -> str:
    """Line ``number`` of ``path`` as text, newline removed; fatal problems raise."""
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MoeMtError(
            f"{path}:{number}: invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
            f"{exc.start + 1})"
        ) from None
    if "\r" in text:
        raise MoeMtError(f"{path}:{number}: carriage return (\\r) in line (CRLF line endings?)")
    return text


def count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def count_pair_lines(src: Path, tgt: Path) -> int:
    """The number of lines of two aligned files; different counts are fatal."""
    n_src, n_tgt = count_lines(src), count_lines(tgt)
    if n_src != n_tgt:
        raise MoeMtError(
            f"{src}: {n_src} lines but {tgt}: {n_tgt} lines (line counts must be equal)"
        )
    return n_src


def iter_valid_pairs(
    src: Path, tgt: Path, max_line_chars: int, drop_recoverable: bool, counts: PairCounts
) -> Iterator[tuple[str, str]]:
    """Yield the pairs of two aligned files that pass validation.

    With ``drop_recoverable`` (train) empty and over-long pairs are skipped and counted in
    ``counts.dropped``; otherwise they are fatal. ``counts.raw`` is the number of lines read.
    """
    count_pair_lines(src, tgt)
    for (number, s), (_, t) in zip(iter_lines(src), iter_lines(tgt), strict=True):
        counts.raw += 1
        problem = recoverable_problem(s, t, max_line_chars)
        if problem is None:
            yield s, t
            continue
        if drop_recoverable:
            counts.dropped[problem[0]] += 1
            continue
        where = src if problem[1] == "src" else tgt
        raise MoeMtError(f"{where}:{number}: {problem[2]}")


def recoverable_problem(s: str, t: str, max_line_chars: int):
    """``(reason, side, message)`` of the first recoverable problem of a pair, else None."""
    for side, text in (("src", s), ("tgt", t)):
        if not text.strip():
            return "empty", side, "empty line"
        bad = _BAD_CHAR.search(text)
        if bad:
            return (
                "control_char",
                side,
                f"control character U+{ord(bad.group()):04X} at column {bad.start() + 1}",
            )
        if len(text) > max_line_chars:
            return (
                "too_long",
                side,
                f"line of {len(text)} characters exceeds max_line_chars={max_line_chars}",
            )
    return None
