"""Whether the binarised splits of a prepared ``data/bin`` are whole, before fairseq opens them.

fairseq's ``mmap`` dataset is a pair: ``SPLIT.LANG.idx`` (a header, then one int32 size and one
int64 byte offset per sentence) and ``SPLIT.LANG.bin`` (the token ids, ``size * itemsize`` bytes
per sentence, back to back). A file cut short (a copy interrupted, a full disk) used to end in
numpy's ``ValueError`` from deep inside fairseq, and for the index also in an "Exception ignored
in ``__del__``" traceback. :func:`check_binarized` says it in one line, reading the header and the
last entry only (constant time, whatever the size of the corpus).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from moe_mt.errors import MoeMtError

#: fairseq's ``MMapIndexedDataset.Index`` header: magic, version (<Q), dtype code (<B), len (<Q).
MAGIC = b"MMIDIDX\x00\x00"
HEADER = len(MAGIC) + 8 + 1 + 8
#: fairseq's ``_code_to_dtype`` (indexed_dataset.py), as item sizes.
ITEM_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 8, 8: 2, 9: 4, 10: 8}
_REDO = "prepare the data again (`moemt prep`)"


def damaged(path: Path, why: str) -> MoeMtError:
    """``PATH is damaged (WHY): prepare the data again``."""
    return MoeMtError(f"{path} is damaged ({why}): {_REDO}")


def _index(idx: Path) -> tuple[int, int, int]:
    """(sentences, item size, bytes the ``.bin`` must hold) that ``idx`` records."""
    size = idx.stat().st_size
    with idx.open("rb") as stream:
        header = stream.read(HEADER)
        if len(header) < HEADER:
            raise damaged(idx, f"{size} bytes, shorter than the index header")
        if header[: len(MAGIC)] != MAGIC or struct.unpack_from("<Q", header, 9)[0] != 1:
            raise damaged(idx, "not a fairseq mmap index")
        code = header[17]
        count = struct.unpack_from("<Q", header, 18)[0]
        if code not in ITEM_SIZES:
            raise damaged(idx, f"unknown token type code {code}")
        expected = HEADER + 12 * count
        if size != expected:
            raise damaged(
                idx, f"{size} bytes; its header records {count} sentences, {expected} bytes"
            )
        if count == 0:
            return 0, ITEM_SIZES[code], 0
        stream.seek(HEADER + 4 * (count - 1))
        (last_size,) = np.frombuffer(stream.read(4), dtype=np.int32)
        stream.seek(HEADER + 4 * count + 8 * (count - 1))
        (last_pointer,) = np.frombuffer(stream.read(8), dtype=np.int64)
    return count, ITEM_SIZES[code], int(last_pointer) + int(last_size) * ITEM_SIZES[code]


def check_binarized(bin_dir: Path) -> None:
    """Refuse a prepared ``bin_dir`` whose ``.idx``/``.bin`` pairs are cut short or missing a
    half, naming the file and both sizes; nothing to check where there is no ``bin_dir``."""
    bin_dir = Path(bin_dir)
    if not bin_dir.is_dir():
        return
    for idx in sorted(bin_dir.glob("*.idx")):
        count, _, needed = _index(idx)
        data = idx.with_suffix(".bin")
        if not data.is_file():
            raise MoeMtError(f"{data}: missing from the prepared data (beside {idx.name}); {_REDO}")
        size = data.stat().st_size
        if size != needed:
            raise damaged(
                data, f"{size} bytes; {idx.name} records {count} sentences, {needed} bytes"
            )
    for data in sorted(bin_dir.glob("*.bin")):
        if not data.with_suffix(".idx").is_file():
            raise MoeMtError(
                f"{data.with_suffix('.idx')}: missing from the prepared data (beside "
                f"{data.name}); {_REDO}"
            )
