"""``moemt compare``: evaluated runs side by side.

- :mod:`.comparison`: :func:`compare`: reads each run's ``report.json``, checks that they were
  scored on the same references, paired bootstrap against the baseline, ``compare.md`` /
  ``compare.json`` and plots.
"""

from moe_mt.workflows.compare.comparison import compare

__all__ = ["compare"]
