"""Validation and cleaning of a training pair by chunks on several processes: the same kept
pairs, order, counts and first fatal error as one pass, whatever the workers and chunk size."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from moe_mt.data_prep import clean, clean_files
from moe_mt.errors import MoeMtError

FILTERS = clean.Filters(min_words=1, max_words=6, max_ratio=2.0, dedup=True)

# (source, target, what one pass over the file does with the pair)
PAIRS = [
    ("a b", "x y", "kept"),
    ("a b c d e f g", "x", "length"),  # 7 words > max_words
    ("a b c d e", "x y", "ratio"),  # 5 > 2 * 2
    ("", "x", "empty"),
    ("a \x07 b", "x", "control_char"),
    ("c d", "z", "kept"),
    ("a b", "x y", "duplicate"),  # of line 1, in another chunk when chunks are short
    ("e", "w" * 50, "too_long"),
    ("c d", "z", "duplicate"),
    ("f g h", "u v w", "kept"),
    ("a b", "x y z", "kept"),  # same source, other target: not a duplicate
]


def _write(tmp_path: Path, pairs) -> tuple[Path, Path]:
    src, tgt = tmp_path / "train.en", tmp_path / "train.de"
    src.write_bytes(b"".join(s.encode() + b"\n" for s, _, *_ in pairs))
    tgt.write_bytes(b"".join(t.encode() + b"\n" for _, t, *_ in pairs))
    return src, tgt


def _clean(tmp_path: Path, inputs, workers: int, filters=FILTERS):
    out = tmp_path / f"out{workers}"
    out.mkdir(exist_ok=True)
    dests = (out / "train.en", out / "train.de")
    seen = []
    counts, dropped, kept = clean_files.clean_files(
        inputs, dests, 40, filters, workers, lambda read, total: seen.append((read, total))
    )
    assert len({total for _, total in seen}) <= 1  # the file's lines, every time
    return counts, dropped, kept, [d.read_bytes() for d in dests], sum(read for read, _ in seen)


@pytest.mark.parametrize("chunk_lines", [1, 3, 4, 100])
@pytest.mark.parametrize("workers", [1, 3])
def test_one_pass_result_whatever_the_chunks_and_workers(
    tmp_path, monkeypatch, chunk_lines, workers
):
    monkeypatch.setattr(clean_files, "CHUNK_LINES", chunk_lines)
    inputs = _write(tmp_path, PAIRS)
    counts, dropped, kept, (src, tgt), reported = _clean(tmp_path, inputs, workers)

    expected = Counter(what for *_, what in PAIRS)
    kept_pairs = [(s, t) for s, t, what in PAIRS if what == "kept"]
    assert src.decode().splitlines() == [s for s, _ in kept_pairs]
    assert tgt.decode().splitlines() == [t for _, t in kept_pairs]
    assert kept == expected["kept"] == 4
    assert counts.raw == reported == len(PAIRS)
    assert counts.dropped == {k: expected[k] for k in ("empty", "control_char", "too_long")}
    assert dropped == {k: expected[k] for k in clean.FILTERS}


def test_duplicates_are_kept_without_dedup(tmp_path):
    inputs = _write(tmp_path, PAIRS)
    no_dedup = clean.Filters(min_words=1, max_words=6, max_ratio=2.0, dedup=False)
    _, dropped, kept, *_ = _clean(tmp_path, inputs, 1, no_dedup)
    assert "duplicate" not in dropped and kept == 6


@pytest.mark.parametrize("workers", [1, 3])
def test_the_first_fatal_problem_in_the_files_is_reported(tmp_path, monkeypatch, workers):
    """Line 7's CR in the target comes before line 9's invalid UTF-8 in the source, and a
    source problem before a target problem on the same line; chunks of 2 lines put them in
    different workers."""
    monkeypatch.setattr(clean_files, "CHUNK_LINES", 2)
    src, tgt = _write(tmp_path, [(f"s{i}", f"t{i}") for i in range(12)])
    lines_src, lines_tgt = src.read_bytes().split(b"\n"), tgt.read_bytes().split(b"\n")
    lines_tgt[6] = b"t6\r"
    lines_src[8] = b"s\xff8"
    lines_tgt[8] = b"t8\r"
    src.write_bytes(b"\n".join(lines_src))
    tgt.write_bytes(b"\n".join(lines_tgt))
    with pytest.raises(MoeMtError, match=rf"^{tgt}:7: carriage return"):
        _clean(tmp_path, (src, tgt), workers)
    lines_tgt[6] = b"t6"
    tgt.write_bytes(b"\n".join(lines_tgt))
    with pytest.raises(MoeMtError, match=rf"^{src}:9: invalid UTF-8 \(byte 0xff at column 2\)"):
        _clean(tmp_path, (src, tgt), workers)


def test_different_line_counts_are_fatal(tmp_path):
    src, tgt = _write(tmp_path, PAIRS)
    tgt.write_bytes(tgt.read_bytes() + b"extra\n")
    with pytest.raises(MoeMtError, match="11 lines but .* 12 lines"):
        _clean(tmp_path, (src, tgt), 3)
