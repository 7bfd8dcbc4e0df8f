"""fairseq criterions of moemt (importing this package registers them)."""

from moe_mt.criterions import distill_criterion, moe_criterion, thor_criterion  # noqa: F401
