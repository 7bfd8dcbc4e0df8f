"""Cleaning filters for the training split: length, length ratio, exact duplicates.

Lengths are whitespace-separated words, as in Moses' ``clean-corpus-n.perl`` (which fairseq's
IWSLT and WMT preparation scripts use), measured before subword segmentation. Each filter counts
what it drops, in the order applied: length, then ratio, then duplicates (the first occurrence of
a pair is kept).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from moe_mt.config import CleanConfig

FILTERS = ("length", "ratio", "duplicate")


@dataclass(frozen=True)
class Filters:
    """The filters' settings as plain values: an OmegaConf attribute costs tens of microseconds,
    and read per pair it was half of prep. Plain values also travel to worker processes."""

    min_words: int
    max_words: int
    max_ratio: float
    dedup: bool

    @classmethod
    def from_config(cls, cfg: CleanConfig) -> Filters:
        return cls(
            int(cfg.min_words), int(cfg.max_words), float(cfg.max_length_ratio), bool(cfg.dedup)
        )

    def problem(self, src: str, tgt: str) -> str | None:
        """``"length"`` or ``"ratio"`` if that filter drops the pair, else None (duplicates are
        found across the whole file, see :func:`pair_key`)."""
        n_src, n_tgt = len(src.split()), len(tgt.split())
        lo, hi = self.min_words, self.max_words
        if not (lo <= n_src <= hi and lo <= n_tgt <= hi):
            return "length"
        if max(n_src, n_tgt) > self.max_ratio * max(min(n_src, n_tgt), 1):
            return "ratio"
        return None


def pair_key(src: str, tgt: str) -> bytes:
    """The identity of a pair for deduplication: a 16-byte digest keeps the set of pairs seen
    small on WMT-sized corpora."""
    return hashlib.blake2b(f"{src}\t{tgt}".encode(), digest_size=16).digest()
