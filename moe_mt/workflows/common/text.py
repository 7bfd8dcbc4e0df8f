"""Line-aligned text files as prep wrote them and eval and distill read them."""

from __future__ import annotations

from pathlib import Path

from moe_mt.errors import MoeMtError


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 file, split on ``\\n`` only (as ``wc -l`` and prep count them)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MoeMtError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise MoeMtError(f"{path}:{line}: invalid UTF-8") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def check_same_length(a: list, a_path: Path | str, b: list, b_path: Path | str, what: str):
    if len(a) != len(b):
        raise MoeMtError(
            f"{a_path}: {len(a)} lines but {b_path}: {len(b)} lines ({what} must be line-aligned)"
        )
