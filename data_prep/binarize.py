"""Binarisation with fairseq's own dictionary and indexed-dataset writers.

The output is exactly what ``fairseq-preprocess`` writes (``dict.<lang>.txt``,
``<split>.<src>-<tgt>.<lang>.{bin,idx}`` in the mmap format), so fairseq's translation tasks read
it unchanged. Both steps run on ``workers`` processes as ``fairseq-preprocess --workers`` does:
the file is cut at line boundaries into one byte range per worker (fairseq's ``find_offsets``),
each counts or binarises its range, and the results are merged in file order (the dictionary's
counts summed; the parts' ``.bin``/``.idx`` appended one after the other). The output is the
same whatever the number of workers: the merged counts and the file order do not depend on it,
and fairseq's ``Dictionary.finalize`` orders equal counts alphabetically. Binarising, unlike
fairseq's ``FileBinarizer``, runs every range in the pool at once (fairseq's binarises the
first range only after the others, so two workers take as long as one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fairseq.data import Dictionary
from fairseq.tokenizer import tokenize_line

import moe_mt  # noqa: F401  (compat patches before fairseq is imported)
from moe_mt.data_prep.pool import WorkerPool

#: A file of fewer bytes than this per worker is binarised by one process.
MIN_BYTES_PER_WORKER = 1 << 20


@dataclass
class BinarizeStats:
    sentences: int = 0
    tokens: int = 0  # including the end-of-sentence token fairseq appends
    unknown: int = 0  # tokens replaced by <unk>


def build_dictionary(piece_files: Iterable[Path], workers: int = 1) -> Dictionary:
    """A fairseq dictionary of every piece seen in ``piece_files`` (no threshold)."""
    dictionary = Dictionary()
    for path in piece_files:
        _add_file_to_dictionary(path, dictionary, workers)
    dictionary.finalize(threshold=-1, nwords=-1, padding_factor=8)
    return dictionary


def _add_file_to_dictionary(path: Path, dictionary: Dictionary, workers: int) -> None:
    """fairseq's ``Dictionary.add_file_to_dictionary`` (the counts of one byte range per worker,
    added in file order), on :class:`WorkerPool` rather than its ``multiprocessing.Pool``."""
    from fairseq.file_chunker_utils import find_offsets

    offsets = find_offsets(str(path), workers)
    ranges = [
        (str(path), tokenize_line, dictionary.eos_word, start, end)
        for start, end in zip(offsets, offsets[1:], strict=False)
    ]
    count = Dictionary._add_file_to_dictionary_single_worker
    if workers == 1:
        counters = [count(*ranges[0])]
    else:
        with WorkerPool(workers) as pool:
            counters = list(pool.ordered(count, ranges, ahead=workers))
    for counter in counters:
        for word, n in sorted(counter.items()):
            dictionary.add_symbol(word, n)


def binarize_file(
    pieces: Path, dictionary: Dictionary, out_prefix: Path, workers: int = 1
) -> BinarizeStats:
    """Write ``<out_prefix>.bin/.idx`` from a file of space-separated pieces, on ``workers``
    processes, one byte range each; their parts are appended in file order."""
    from fairseq.data import indexed_dataset
    from fairseq.file_chunker_utils import find_offsets

    if pieces.stat().st_size < MIN_BYTES_PER_WORKER * workers:
        workers = 1  # starting a pool costs more than a small file (valid, test) takes
    offsets = find_offsets(str(pieces), workers)
    parts = [
        (dictionary, pieces, start, end, Path(f"{out_prefix}.part{i}"))
        for i, (start, end) in enumerate(zip(offsets, offsets[1:], strict=False))
    ]
    if workers == 1:
        results = [_binarize_range(*parts[0])]
    else:
        with WorkerPool(workers) as pool:
            results = list(pool.ordered(_binarize_range, parts, ahead=workers))
    builder = indexed_dataset.make_builder(
        f"{out_prefix}.bin", impl="mmap", vocab_size=len(dictionary)
    )
    for *_, part in parts:
        builder.merge_file_(str(part))
        for suffix in (".bin", ".idx"):
            Path(f"{part}{suffix}").unlink()
    builder.finalize(f"{out_prefix}.idx")
    stats = BinarizeStats()
    for result in results:
        stats.sentences += result.sentences
        stats.tokens += result.tokens
        stats.unknown += result.unknown
    return stats


def _binarize_range(
    dictionary: Dictionary, pieces: Path, start: int, end: int, part: Path
) -> BinarizeStats:
    """Binarise the lines of ``pieces`` in the byte range ``[start, end)`` into ``part``.

    A line's ids are those of ``Dictionary.encode_line`` with fairseq's ``tokenize_line`` (runs
    of white space split, as ``str.split`` does) and ``</s>`` appended, looked up directly:
    ``encode_line``'s per-token method calls were most of binarising a WMT-sized corpus.
    """
    import torch
    from fairseq.data import indexed_dataset
    from fairseq.file_chunker_utils import Chunker

    indices, unk, eos = dictionary.indices, dictionary.unk(), dictionary.eos()
    stats = BinarizeStats()
    builder = indexed_dataset.make_builder(f"{part}.bin", impl="mmap", vocab_size=len(dictionary))
    with Chunker(str(pieces), start, end) as lines:
        for line in lines:
            ids = [indices.get(piece, unk) for piece in line.split()]
            ids.append(eos)
            stats.sentences += 1
            stats.tokens += len(ids)
            stats.unknown += ids.count(unk)
            builder.add_item(torch.IntTensor(ids))
    builder.finalize(f"{part}.idx")
    return stats
