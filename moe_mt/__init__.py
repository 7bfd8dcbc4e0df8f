"""moemt: Mixture-of-Experts Transformers for machine translation, on fairseq 0.12.2.

Importing ``moe_mt`` applies the fairseq compatibility patches (:mod:`moe_mt.compat`) before
fairseq is imported; it does not import fairseq itself, so ``moe_mt.moe`` stays usable without
it. :func:`register` imports the fairseq-facing modules (architectures, criterions), which
registers them with fairseq, and the family modules named by ``$MOEMT_PLUGINS``
(:mod:`moe_mt.models.families`); ``USER_DIR`` is the path to hand fairseq as ``--user-dir``.
"""

import os
import sys

from moe_mt import compat as _compat

__version__ = "0.1.0"

_compat.apply()

USER_DIR = os.path.dirname(os.path.abspath(__file__))


def register() -> None:
    """Register moemt's architectures, criterions and plugin families with fairseq (idempotent)."""
    import moe_mt.criterions  # noqa: F401
    from moe_mt.models import families, import_models

    import_models()
    families.load_plugins()


# fairseq's --user-dir imports this package after fairseq itself: register then too.
if "fairseq" in sys.modules:
    register()
