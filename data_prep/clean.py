"""Cleaning filters for the training split: length, length ratio, exact duplicates.

Lengths are whitespace-separated words, as in Moses' ``clean-corpus-n.perl`` (which fairseq's
IWSLT and WMT preparation scripts use), measured before subword segmentation. Each filter counts
what it drops, in the order applied: length, then ratio, then duplicates (the first occurrence of
a pair is kept).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator

from moe_mt.config import CleanConfig

FILTERS = ("length", "ratio", "duplicate")


def clean_pairs(
    pairs: Iterable[tuple[str, str]], cfg: CleanConfig, dropped: Counter
) -> Iterator[tuple[str, str]]:
    """Yield the pairs that pass every filter; count the others in ``dropped`` by filter name."""
    # Read once: an OmegaConf attribute costs tens of microseconds, per pair it was half of prep.
    min_words, max_words = int(cfg.min_words), int(cfg.max_words)
    max_ratio, dedup = float(cfg.max_length_ratio), bool(cfg.dedup)
    seen: set[bytes] = set()
    for src, tgt in pairs:
        n_src, n_tgt = len(src.split()), len(tgt.split())
        if not (min_words <= n_src <= max_words and min_words <= n_tgt <= max_words):
            dropped["length"] += 1
            continue
        if max(n_src, n_tgt) > max_ratio * max(min(n_src, n_tgt), 1):
            dropped["ratio"] += 1
            continue
        if dedup:
            # A 16-byte digest per pair keeps the memory of dedup small on WMT-sized corpora.
            key = hashlib.blake2b(f"{src}\t{tgt}".encode(), digest_size=16).digest()
            if key in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(key)
        yield src, tgt
