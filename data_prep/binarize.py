"""Binarisation with fairseq's own dictionary and indexed-dataset writers.

The output is exactly what ``fairseq-preprocess`` writes (``dict.<lang>.txt``,
``<split>.<src>-<tgt>.<lang>.{bin,idx}`` in the mmap format), so fairseq's translation tasks read
it unchanged. Both steps run on ``workers`` processes the way ``fairseq-preprocess --workers``
does: the file is cut at line boundaries into one byte range per worker, each counts or
binarises its range, and the results are merged in file order (the dictionary's counts summed,
the workers' ``.bin``/``.idx`` appended to the first's). The output is the same whatever the
number of workers: the merged counts and the file order do not depend on it, and fairseq's
``Dictionary.finalize`` orders equal counts alphabetically.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fairseq.data import Dictionary
from fairseq.tokenizer import tokenize_line

import moe_mt  # noqa: F401  (compat patches before fairseq is imported)


@dataclass
class BinarizeStats:
    sentences: int = 0
    tokens: int = 0  # including the end-of-sentence token fairseq appends
    unknown: int = 0  # tokens replaced by <unk>


def build_dictionary(piece_files: Iterable[Path], workers: int = 1) -> Dictionary:
    """A fairseq dictionary of every piece seen in ``piece_files`` (no threshold)."""
    dictionary = Dictionary()
    for path in piece_files:
        Dictionary.add_file_to_dictionary(str(path), dictionary, tokenize_line, workers)
    dictionary.finalize(threshold=-1, nwords=-1, padding_factor=8)
    return dictionary


def binarize_file(
    pieces: Path, dictionary: Dictionary, out_prefix: Path, workers: int = 1
) -> BinarizeStats:
    """Write ``<out_prefix>.bin/.idx`` from a file of space-separated pieces, on ``workers``
    processes (fairseq's ``FileBinarizer``, as ``fairseq-preprocess``)."""
    from fairseq.binarizer import FileBinarizer, VocabularyDatasetBinarizer

    binarizer = VocabularyDatasetBinarizer(dictionary, tokenize_line, append_eos=True)
    summary = FileBinarizer.multiprocess_dataset(
        str(pieces), "mmap", binarizer, str(out_prefix), len(dictionary), num_workers=workers
    )
    # fairseq counts a token as replaced when it maps to <unk> and is not the text "<unk>".
    unknown = sum(summary.replaced.values())
    return BinarizeStats(summary.num_seq, summary.num_tok, unknown)
