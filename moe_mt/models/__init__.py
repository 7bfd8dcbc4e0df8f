"""fairseq architectures of moemt, one model file per family (or two: switch.py holds X-MoE).

:func:`import_models` imports the model files of :data:`MODEL_MODULES`, which registers their
models and architectures with fairseq and their families with :mod:`.families`
(:func:`moe_mt.register` calls it). The package itself imports nothing, so that its light
modules (:mod:`.families`, the ``*_options`` modules) can be read without fairseq.
"""

import importlib

#: The model files, in registration order (dense first: the others build on it).
MODEL_MODULES = ("transformer", "switch", "thor", "mhmoe", "soft_moe")


def import_models() -> None:
    """Import every model file (idempotent): fairseq and the family registry then know them."""
    for name in MODEL_MODULES:
        importlib.import_module(f"{__name__}.{name}")
