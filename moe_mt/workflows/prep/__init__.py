"""``moemt prep``: corpora in, binarised fairseq data out, in ``RUN_DIR/data/``.

- :mod:`.pipeline`: :func:`prep` itself: inputs, fingerprint (a no-op when up to date),
  validation and cleaning, sentencepiece, encoding, dictionary, binarisation, the manifest.
- :mod:`.corpora`: the directions of a run and the corpora that serve them (local files with
  ``{pair}`` prefixes, registry sources per language pair, zero-shot test-only corpora).
- :mod:`.plan`: ``--dry-run``: what would be downloaded and written, without doing it.
"""

from moe_mt.workflows.prep.pipeline import PrepResult, prep

__all__ = ["PrepResult", "prep"]
