"""Read the sentences of one corpus file, whatever its format: plain text, SGML, IWSLT tags.

Each reader yields one sentence per line of the corpus, without its newline. Lines are split on
``\\n`` only; any other character that Python's ``str.splitlines`` would break a line at (``\\r``,
``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``, ``\\x85``, U+2028, U+2029) becomes a space, so that
every file written from these lines stays line-aligned for any reader downstream.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Iterator
from pathlib import Path

from moe_mt.data_prep.sources import Format, Part

__all__ = ["TextError", "iter_sgml", "iter_tags", "iter_text", "open_text", "read_part"]

_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_SEG = re.compile(r"<seg[^>]*>(.*)</seg>", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


class TextError(RuntimeError):
    """A corpus file cannot be read as the text its format promises."""


def open_text(path: Path) -> io.TextIOWrapper:
    """Open ``path`` (gunzipped if it ends in ``.gz``) as UTF-8 text split on ``\\n`` only."""
    raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding="utf-8", newline="\n")


def _lines(path: Path) -> Iterator[str]:
    """Lines of ``path`` without their newline, with stray line-break characters made spaces."""
    number = 0
    try:
        with open_text(path) as handle:
            for number, line in enumerate(handle, start=1):  # noqa: B007
                yield _LINE_BREAKS.sub(" ", line.rstrip("\n").rstrip("\r"))
    except UnicodeDecodeError as err:
        raise TextError(f"{path}: not UTF-8 after line {number}: {err.reason}") from None
    except (OSError, EOFError) as err:
        raise TextError(f"{path}: cannot read: {err}") from None


def iter_text(path: Path) -> Iterator[str]:
    """Plain text: every line is a sentence (kept as is, empty lines included)."""
    yield from _lines(path)


def iter_sgml(path: Path) -> Iterator[str]:
    """WMT fake-SGML and IWSLT XML: the text of each ``<seg ...>...</seg>`` line.

    Same rule as sacrebleu's own conversion of these files (sacrebleu 2.x FakeSGMLDataset): the
    text between the tags, stripped, internal whitespace runs collapsed to one space; entities
    are left as they are. fairseq's IWSLT14 rule (``grep '<seg id'``, strip the tags and the
    spaces next to them) gives the same text.
    """
    for line in _lines(path):
        if "<seg" not in line.lower():
            continue
        match = _SEG.search(line)
        if match is None:
            raise TextError(f"{path}: a <seg> line without its closing </seg>: {line[:80]!r}")
        yield _SPACES.sub(" ", match.group(1).strip())


def iter_tags(path: Path, drop_tags: tuple[str, ...], strip_tags: tuple[str, ...]) -> Iterator[str]:
    """IWSLT ``train.tags`` files: drop the lines holding a ``drop_tags`` tag (``<url>``, ...),
    remove the ``strip_tags`` tags (``<title>``, ``</title>``) and keep their text, strip."""
    drops = tuple(f"<{tag}" for tag in drop_tags)
    strips = [f"<{tag}>" for tag in strip_tags] + [f"</{tag}>" for tag in strip_tags]
    for line in _lines(path):
        if any(tag in line for tag in drops):
            continue
        for tag in strips:
            line = line.replace(tag, "")
        yield line.strip()


def read_part(part: Part, path: Path) -> Iterator[str]:
    """The sentences of one member file ``path`` of ``part``, in the part's format."""
    if part.format is Format.SGML:
        lines = iter_sgml(path)
    elif part.format is Format.TAGS:
        lines = iter_tags(path, part.drop_tags, part.strip_tags)
    else:
        lines = iter_text(path)
    if not part.replacements:
        return lines
    return (_replace(line, part.replacements) for line in lines)


def _replace(line: str, replacements: tuple[tuple[str, str], ...]) -> str:
    for old, new in replacements:
        line = line.replace(old, new)
    return line
