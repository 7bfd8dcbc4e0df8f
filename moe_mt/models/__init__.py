"""fairseq architectures of moemt (importing this package registers them)."""

from moe_mt.models import switch, transformer  # noqa: F401
