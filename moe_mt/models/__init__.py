"""fairseq architectures of moemt, one model file per family (or two: switch.py holds X-MoE).

:func:`import_models` imports the model file of every registered family
(:attr:`.families.Family.model_module`), which registers its models and architectures with
fairseq and its block counters with :mod:`.families` (:func:`moe_mt.register` calls it). The
package itself imports only the light registry, so that its light modules (:mod:`.families`,
the ``*_options`` modules, each holding a family's record) can be read without fairseq.
"""

import importlib

from moe_mt.models import families  # light: no fairseq, no torch


def import_models() -> None:
    """Import every family's model file (idempotent): fairseq then knows them."""
    for name in families.model_modules():
        importlib.import_module(name)
