"""The one place that adapts fairseq 0.12.2 to Python 3.11 and 3.12, torch 2.13 and numpy 2.

fairseq is never edited or vendored: :func:`apply` patches it at runtime, once per process,
before fairseq is imported (``import moe_mt`` calls it). Patches to fairseq's own modules are
installed by an import hook, so that they take effect whenever fairseq loads the module,
lazily or not. Each patch names the test that fails without it.

1. Dataclass defaults (Python 3.11). ``dataclasses`` rejects a field default whose class is
   unhashable; a dataclass with ``eq=True`` is unhashable, and fairseq (``CommonConfig()`` as
   the default of ``FairseqConfig.common``) and hydra-core 1.0.7 (``JobConf.JobConfig.
   OverrideDirname``) use such defaults. Python <= 3.10 only rejected list/dict/set. We give
   the default's class an identity hash at the moment the field is created, for classes of
   fairseq, hydra and omegaconf only; behaviour then equals 3.10's.
   Test: ``tests/test_compat.py::test_fairseq_imports``.
2. Safe checkpoint loading (torch >= 2.6 loads with ``weights_only=True``). Checkpoints written
   by fairseq 0.12.2 hold one non-tensor global, ``argparse.Namespace`` (the legacy ``args``
   field). We add exactly the classes in :data:`CHECKPOINT_SAFE_GLOBALS` to torch's allow-list;
   ``weights_only`` stays on, so loading a checkpoint never runs arbitrary code.
   Test: ``tests/test_compat.py::test_train_resume_generate``.
3. BetterTransformer fast path in generation. On checkpoint load fairseq's
   ``TransformerEncoderLayerBase`` switches itself to torch's fused encoder kernel, which fails
   ("Mask Type should be defined") with torch 2.13. The encoder and each layer read the layer's
   ``can_use_fastpath`` flag, so we switch it off after the layer is built (the speed is the same
   on CPU). Test: ``tests/test_compat.py::test_train_resume_generate``.
4. ``--no-repeat-ngram-size`` on CPU: fairseq's Python fallback of ``NGramRepeatBlock`` reads the
   n-gram tail of the whole padded token buffer instead of the tokens generated so far, so the
   blocking silently does nothing. We replace the fallback by one that reads ``tokens[:, :step+1]``.
   Test: ``tests/test_compat.py::test_no_repeat_ngram_blocks_repeats``.
5. Atomic checkpoint copies. ``save_checkpoint`` writes one file atomically (temp + rename) and
   then *copies* it to the other names (``checkpoint_last.pt``, ``checkpoint_best.pt``) with a
   plain ``shutil.copyfile``: a process killed during that copy leaves a truncated
   ``checkpoint_last.pt`` and the run cannot resume. (Not a Python 3.11 problem, but a runtime
   patch of fairseq all the same, so it lives here.) We give ``checkpoint_utils`` a
   ``PathManager`` whose ``copy`` of local files goes through a temporary file and a rename.
   Test: ``tests/test_compat.py::test_checkpoint_copies_are_atomic`` and
   ``tests/test_train.py::test_resume_after_kill``. A copy that fails (disk full) removes its
   temporary file and names the checkpoint it was writing.
6. torch DDP on CPU. fairseq's ``DistributedFairseqModel`` builds torch's
   ``DistributedDataParallel`` with ``device_ids=[device_id]`` for ``--ddp-backend c10d``
   (``pytorch_ddp``); torch rejects ``device_ids`` for a CPU module, so c10d training on gloo
   fails at the first step. We give that module a ``DistributedDataParallel`` subclass that drops
   ``device_ids``/``output_device`` when every parameter is on the CPU (what torch wants there).
   Test: ``tests/test_distributed_train.py::test_two_ranks_equal_one_process``.
7. Checkpoint writes on a full disk. ``torch_persistent_save`` writes ``<name>.tmp`` and retries
   ``torch.save`` three times, logging each traceback, and leaves the partial ``.tmp`` behind
   (a 36 MB ``checkpoint_best.pt.tmp`` on the full disk); torch reports the failed write as
   "unexpected pos". A local checkpoint is written by :func:`moe_mt.checkpoints.atomic_torch_save`
   instead: one try, the temporary file removed, one ``WriteError`` naming the checkpoint.
   Training also records its cumulative time and validations in each checkpoint's
   ``extra_state`` through :func:`checkpoint_extra_state` (what ``kill -9`` must not lose).
   Tests: ``tests/test_faults_train.py::test_disk_full_while_saving_a_checkpoint`` and
   ``::test_training_time_and_validations_survive_a_lost_summary``.
8. ``--bf16`` on GPUs. fairseq 0.12.2's argument parser sets ``--tpu`` whenever ``--bf16`` is
   given (bf16 was a TPU feature then), and its trainer then asks torch_xla for a TPU instead of
   using the GPU (fairseq issue 4696; ``'NoneType' object has no attribute 'xla_device'``).
   Everything else in fairseq's bf16 path is device-independent (the model and batches cast to
   bf16, ``FP16Optimizer`` with fp32 master weights and no loss scaling), so we undo the implied
   ``--tpu`` unless it was asked for. Test: ``tests/test_compat.py::test_bf16_does_not_imply_tpu``.
9. hydra's plugin scan (Python 3.12). fairseq builds its config through hydra-core 1.0.7, whose
   plugin scan (``hydra.core.plugins.Plugins._scan_all_plugins``) loads each module it finds
   with ``importer.find_module(name).load_module(name)`` on the importers ``pkgutil.
   walk_packages`` yields; Python 3.12 removed ``find_module`` from the standard importers, so
   every ``moemt train`` failed there (``'FileFinder' object has no attribute 'find_module'``).
   The scan's module gets a ``pkgutil`` whose ``walk_packages`` yields, in place of each
   importer, one that imports the module by name through ``importlib.import_module`` (the same
   module object that the old protocol returned; an already imported one is not run again).
   Test: ``tests/test_compat.py::test_hydra_plugin_scan_without_find_module``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.abc
import importlib.machinery
import os
import shutil
import sys
from collections.abc import Callable

_PATCHED_PACKAGES = ("fairseq", "fairseq_cli", "hydra", "omegaconf")

#: Every non-tensor global a fairseq 0.12.2 checkpoint may hold (the legacy ``args`` field).
CHECKPOINT_SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

_applied = False


def apply() -> None:
    """Install every patch (idempotent). Must run before fairseq is imported."""
    global _applied
    if _applied:
        return
    if "fairseq" in sys.modules and not _dataclass_patch_installed():
        raise RuntimeError(
            "fairseq was imported before moe_mt: import moe_mt first so that its "
            "Python 3.11 compatibility patches apply"
        )
    _patch_dataclass_defaults()
    _allow_checkpoint_globals()
    _after_import("fairseq.modules.transformer_layer", _disable_bettertransformer)
    _after_import("fairseq.ngram_repeat_block", _fix_ngram_repeat_block)
    _after_import("fairseq.checkpoint_utils", _atomic_checkpoint_copies)
    _after_import("fairseq.models.distributed_fairseq_model", _cpu_torch_ddp)
    _after_import("fairseq.checkpoint_utils", _checkpoint_writes)
    _after_import("fairseq.trainer", _checkpoint_extra_state)
    _after_import("fairseq.options", _bf16_without_tpu)
    _after_import("hydra.core.plugins", _hydra_plugin_scan)
    _applied = True


# -- 1. dataclass defaults -------------------------------------------------------------------


def _from_patched_package(cls: type) -> bool:
    return cls.__module__.split(".")[0] in _PATCHED_PACKAGES


def _patch_dataclass_defaults() -> None:
    original = dataclasses._get_field

    def get_field(cls, a_name, a_type, *args, **kwargs):
        default = getattr(cls, a_name, dataclasses.MISSING)
        if isinstance(default, dataclasses.Field):
            default = default.default
        default_cls = type(default)
        if (
            default_cls.__hash__ is None
            and dataclasses.is_dataclass(default_cls)
            and _from_patched_package(default_cls)
        ):
            default_cls.__hash__ = object.__hash__
        return original(cls, a_name, a_type, *args, **kwargs)

    get_field._moe_mt_original = original
    dataclasses._get_field = get_field


def _dataclass_patch_installed() -> bool:
    return hasattr(dataclasses._get_field, "_moe_mt_original")


# -- 2. checkpoint allow-list ----------------------------------------------------------------


def _allow_checkpoint_globals() -> None:
    import torch.serialization

    torch.serialization.add_safe_globals(list(CHECKPOINT_SAFE_GLOBALS))


# -- post-import hook --------------------------------------------------------------------------

_HOOKS: dict[str, list[Callable]] = {}


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader, patches):
        self._loader = loader
        self._patches = patches

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        for patch in self._patches:
            patch(module)


class _PatchingFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the modules in ``_HOOKS`` so that their patches run after import."""

    def find_spec(self, fullname, path, target=None):
        patches = _HOOKS.get(fullname)
        if not patches:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, patches)
        return spec


def _after_import(module_name: str, patch: Callable) -> None:
    if module_name in sys.modules:
        patch(sys.modules[module_name])
        return
    _HOOKS.setdefault(module_name, []).append(patch)
    if not any(isinstance(f, _PatchingFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchingFinder())


# -- 3. BetterTransformer fast path --------------------------------------------------------------


def _disable_bettertransformer(module) -> None:
    layer_cls = module.TransformerEncoderLayerBase
    original_init = layer_cls.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        # The encoder reads this flag as well as the layer, so both skip the fused kernel.
        self.can_use_fastpath = False

    layer_cls.__init__ = __init__


# -- 4. n-gram blocking on CPU -----------------------------------------------------------------


def _fix_ngram_repeat_block(module) -> None:
    import torch

    block_cls = module.NGramRepeatBlock

    def _no_repeat_ngram(self, tokens, lprobs, bsz: int, beam_size: int, step: int):
        """Ban each token that would complete an n-gram seen in ``tokens[:, : step + 1]``."""
        n = self.no_repeat_ngram_size
        if step + 2 - n < 0:
            return lprobs
        generated = tokens[:, : step + 1].tolist()
        banned: list[list[int]] = []
        for hyp in generated:
            prefix = tuple(hyp[len(hyp) - n + 1 :]) if n > 1 else ()
            banned.append(
                [
                    hyp[i + n - 1]
                    for i in range(len(hyp) - n + 1)
                    if tuple(hyp[i : i + n - 1]) == prefix
                ]
            )
        for row, tokens_to_ban in enumerate(banned):
            if tokens_to_ban:
                lprobs[row, torch.tensor(tokens_to_ban, dtype=torch.long)] = -float("inf")
        return lprobs

    block_cls._no_repeat_ngram = _no_repeat_ngram


# -- 5. atomic checkpoint copies -----------------------------------------------------------------


class _AtomicCopyPathManager:
    """fairseq's PathManager, except that a local ``copy`` is a temp file plus a rename."""

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def __getattr__(self, name):
        return getattr(self._path_manager, name)

    def copy(self, src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if self._path_manager.path_requires_pathmanager(dst_path):
            return self._path_manager.copy(src_path, dst_path, overwrite=overwrite)
        if os.path.exists(dst_path) and not overwrite:
            return False
        from moe_mt.errors import writing

        tmp = f"{dst_path}.tmp-copy"
        with writing(dst_path):
            try:
                shutil.copyfile(src_path, tmp)
                os.replace(tmp, dst_path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return True


def _atomic_checkpoint_copies(module) -> None:
    module.PathManager = _AtomicCopyPathManager(module.PathManager)


# -- 6. torch DDP on CPU ---------------------------------------------------------------------


def _cpu_torch_ddp(module) -> None:
    ddp_cls = module.DistributedDataParallel

    class CpuAwareDistributedDataParallel(ddp_cls):
        """torch's DDP, without the device arguments that torch refuses for a CPU module."""

        def __init__(self, module, device_ids=None, output_device=None, **kwargs):
            if all(p.device.type == "cpu" for p in module.parameters()):
                device_ids = output_device = None
            super().__init__(module, device_ids=device_ids, output_device=output_device, **kwargs)

    module.DistributedDataParallel = CpuAwareDistributedDataParallel


# -- 7. checkpoint writes on a full disk; what training adds to a checkpoint ---------------------


def _checkpoint_writes(module) -> None:
    original = module.torch_persistent_save

    def torch_persistent_save(obj, filename, async_write: bool = False):
        if async_write or module.PathManager.path_requires_pathmanager(filename):
            return original(obj, filename, async_write)
        from moe_mt.checkpoints import atomic_torch_save

        atomic_torch_save(obj, filename)

    module.torch_persistent_save = torch_persistent_save


#: Functions whose dicts are merged into the ``extra_state`` of every checkpoint this process
#: saves (see :func:`checkpoint_extra_state`).
_EXTRA_STATE: list[Callable[[], dict]] = []


@contextlib.contextmanager
def checkpoint_extra_state(provider: Callable[[], dict]):
    """While in the block, every checkpoint fairseq's trainer saves holds ``provider()``'s
    entries in its ``extra_state``: saved with the checkpoint, in the same file, so that they
    are exactly as old as the model beside them."""
    _EXTRA_STATE.append(provider)
    try:
        yield
    finally:
        _EXTRA_STATE.remove(provider)


def _checkpoint_extra_state(module) -> None:
    trainer_cls = module.Trainer
    original = trainer_cls.save_checkpoint

    def save_checkpoint(self, filename, extra_state):
        for provider in _EXTRA_STATE:
            extra_state = {**extra_state, **provider()}
        return original(self, filename, extra_state)

    trainer_cls.save_checkpoint = save_checkpoint


# -- 8. --bf16 without --tpu -------------------------------------------------------------------


def _bf16_without_tpu(module) -> None:
    parse_args_and_arch = module.parse_args_and_arch

    def parse(parser, input_args=None, *args, **kwargs):
        parsed = parse_args_and_arch(parser, input_args, *args, **kwargs)
        given = sys.argv[1:] if input_args is None else input_args
        namespaces = parsed if isinstance(parsed, tuple) else (parsed,)  # parse_known=True
        for namespace in namespaces:
            if getattr(namespace, "bf16", False) and "--tpu" not in given:
                namespace.tpu = False
        return parsed

    module.parse_args_and_arch = parse


# -- 9. hydra's plugin scan without find_module ------------------------------------------------


class _ImportByName:
    """The importer protocol hydra 1.0.7's plugin scan uses, ``find_module(name)`` and then
    ``load_module(name)``, served by ``importlib.import_module`` (Python 3.12 has no
    ``find_module`` on its importers)."""

    def find_module(self, fullname: str, path=None):
        return self

    def load_module(self, fullname: str):
        return importlib.import_module(fullname)


class _PkgutilImportingByName:
    """``pkgutil`` for hydra's plugin scan: ``walk_packages`` pairs each module it finds with
    an :class:`_ImportByName` instead of the importer that found it; the rest is pkgutil's."""

    def __init__(self, pkgutil_module) -> None:
        self._pkgutil = pkgutil_module

    def __getattr__(self, name: str):
        return getattr(self._pkgutil, name)

    def walk_packages(self, *args, **kwargs):
        for _importer, name, ispkg in self._pkgutil.walk_packages(*args, **kwargs):
            yield _ImportByName(), name, ispkg


def _hydra_plugin_scan(module) -> None:
    module.pkgutil = _PkgutilImportingByName(module.pkgutil)
