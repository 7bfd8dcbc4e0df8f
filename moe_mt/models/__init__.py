"""fairseq architectures of moemt (importing this package registers them)."""

from moe_mt.models import mhmoe, soft_moe, switch, thor, transformer  # noqa: F401
