"""fairseq architectures of moemt (importing this package registers them)."""

from moe_mt.models import transformer  # noqa: F401
