"""Binarisation with fairseq's own dictionary and indexed-dataset writers.

The output is exactly what ``fairseq-preprocess`` writes (``dict.<lang>.txt``,
``<split>.<src>-<tgt>.<lang>.{bin,idx}`` in the mmap format), so fairseq's translation tasks read
it unchanged; we drive the writers ourselves to report progress line by line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from fairseq.data import Dictionary, indexed_dataset
from fairseq.tokenizer import tokenize_line

import moe_mt  # noqa: F401  (compat patches before fairseq is imported)


@dataclass
class BinarizeStats:
    sentences: int = 0
    tokens: int = 0  # including the end-of-sentence token fairseq appends
    unknown: int = 0  # tokens replaced by <unk>


def build_dictionary(piece_files: Iterable[Path]) -> Dictionary:
    """A fairseq dictionary of every piece seen in ``piece_files`` (no threshold)."""
    dictionary = Dictionary()
    for path in piece_files:
        Dictionary.add_file_to_dictionary(str(path), dictionary, tokenize_line, 1)
    dictionary.finalize(threshold=-1, nwords=-1, padding_factor=8)
    return dictionary


def binarize_file(
    pieces: Path,
    dictionary: Dictionary,
    out_prefix: Path,
    on_line: Callable[[int], None] | None = None,
) -> BinarizeStats:
    """Write ``<out_prefix>.bin/.idx`` from a file of space-separated pieces."""
    stats = BinarizeStats()
    unk = dictionary.unk()
    builder = indexed_dataset.make_builder(
        str(out_prefix) + ".bin", impl="mmap", vocab_size=len(dictionary)
    )
    with open(pieces, encoding="utf-8") as handle:
        for line in handle:
            ids = dictionary.encode_line(line, add_if_not_exist=False, append_eos=True)
            stats.sentences += 1
            stats.tokens += len(ids)
            stats.unknown += int((ids == unk).sum())
            builder.add_item(ids)
            if on_line is not None:
                on_line(1)
    builder.finalize(str(out_prefix) + ".idx")
    return stats
