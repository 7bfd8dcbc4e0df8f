"""The dense Transformer that a loaded checkpoint is at inference, or the reason it is not one.

CTranslate2 runs dense Transformers: every token goes through the same FFN in every layer. So:

- a dense ``moemt_transformer_*`` model (a baseline, or a ``moemt distill`` student) is exported
  as it is;
- an MoE model whose every token goes through one expert in every MoE layer, with no gate (its
  :meth:`~moe_mt.models.moe_layers.MoETransformerModel.single_expert`: THOR with
  ``eval.thor_inference=fixed``), is structurally the dense model whose FFN there is that
  expert. It is rebuilt as ``moemt_transformer`` with the expert's weights in ``fc1`` / ``fc2``,
  through the same copy that initialises a distillation student from one expert
  (:func:`moe_mt.workflows.common.student_init.student_state_from_teacher`);
- a routed MoE model with ``eval.merge_experts`` (:mod:`.merge`) becomes the dense model whose
  FFN in each MoE layer is its experts pruned to the most used or merged by usage, measured on
  its valid split: a different model, which must be scored;
- every other MoE model is refused with the one line its class gives
  (:meth:`~moe_mt.models.moe_layers.MoETransformerModel.not_dense_because`): routed models
  choose experts per token (or mix tokens into slots); no fixed dense network reproduces them,
  and ``moemt distill`` or ``eval.merge_experts`` make one that approximates them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from moe_mt.errors import MoeMtError
from moe_mt.models import families
from moe_mt.models.moe_layers import MoETransformerModel
from moe_mt.models.transformer import MoeMtTransformerModel
from moe_mt.workflows.common.student_init import student_state_from_teacher
from moe_mt.workflows.export.merge import calibrate, merge_refusal, merged_bank_tensors


@dataclass
class DenseModel:
    """A dense fairseq Transformer and where its weights came from."""

    model: torch.nn.Module  # a fairseq TransformerModel (moemt_transformer), in eval mode
    arch: str  # the checkpoint's architecture
    family: str  # the checkpoint's model family (dense for a fairseq Transformer)
    single_expert: dict | None  # an MoE model's: {"expert": k, "expert_layers": [...]}
    merge: dict | None = None  # a merged MoE model's: method, calibration, per-layer usage


def dense_model(
    model: torch.nn.Module, arch: str, task, checkpoint, merge: str | None = None, data_dir=None
) -> DenseModel:
    """``model`` (loaded by :class:`moe_mt.workflows.translate.Translator`) as a dense model;
    with ``merge`` (``eval.merge_experts``), a routed model's experts merged per layer,
    calibrated on the valid split in ``data_dir``.

    Raises:
        MoeMtError: an MoE model that routes (one line: why, and the way out).
    """
    if not isinstance(model, MoETransformerModel):
        if merge:
            raise MoeMtError(f"eval.merge_experts={merge}: {arch} is dense, it has no experts")
        _check_dense(model, arch, checkpoint)
        return DenseModel(model, arch, "dense", None)
    if merge:
        return _merged_as_dense(model, arch, task, checkpoint, merge, data_dir)
    expert = model.single_expert()
    if expert is None:
        raise MoeMtError(f"{checkpoint}: {arch} {model.not_dense_because()}")
    return _single_expert_as_dense(model, expert, arch, task, checkpoint)


def _check_dense(model, arch: str, checkpoint) -> None:
    """Refuse a model that is neither an MoE model nor fairseq's dense Transformer."""
    from fairseq.models.transformer import TransformerModel

    if not isinstance(model, TransformerModel):
        raise MoeMtError(
            f"{checkpoint}: {arch} ({type(model).__name__}) is not a Transformer "
            "encoder-decoder; moemt exports dense Transformers only"
        )


def _single_expert_as_dense(model, expert: int, arch: str, task, checkpoint) -> DenseModel:
    """The dense ``moemt_transformer`` whose FFN in each MoE layer is expert ``expert``."""
    dense, layers = _dense_from_experts(model, model.state_dict(), expert, arch, task, checkpoint)
    family = families.family_of_arch(arch)
    return DenseModel(
        dense, arch, family.name if family else arch, {"expert": expert, "expert_layers": layers}
    )


def _merged_as_dense(model, arch: str, task, checkpoint, method: str, data_dir) -> DenseModel:
    """The dense ``moemt_transformer`` whose FFN in each MoE layer is its experts merged by
    ``method`` (:mod:`.merge`), calibrated on the valid split."""
    blocks = dict(model.moe_layers())
    for name, block in blocks.items():
        why = merge_refusal(block)
        if why:
            raise MoeMtError(f"{checkpoint}: eval.merge_experts={method}: {arch} {name}: {why}")
    calibration = calibrate(model, task, data_dir)
    state = dict(model.state_dict())
    for name, block in blocks.items():
        usage = calibration.layers.get(name)
        if usage is None:
            raise MoeMtError(f"{checkpoint}: the calibration pass never ran MoE layer {name}")
        for tensor, value in merged_bank_tensors(block, usage, method).items():
            state[f"{name}.moe.experts.{tensor}"] = value
    dense, _ = _dense_from_experts(model, state, 0, arch, task, checkpoint)
    family = families.family_of_arch(arch)
    merge = {
        "method": method,
        "calibration": {
            "split": "valid",
            "sentences": calibration.sentences,
            "sha256": calibration.files_sha256,
        },
        "layers": {name: usage.as_dict() for name, usage in calibration.layers.items()},
    }
    return DenseModel(dense, arch, family.name if family else arch, None, merge)


def _dense_from_experts(model, state, expert: int, arch: str, task, checkpoint):
    """The dense ``moemt_transformer`` of ``model``'s sizes whose FFN in each MoE layer is
    expert ``expert`` of the banks in ``state``; and those layers' names."""
    # The MoE architecture's args hold every size option already filled in; the dense model
    # class reads those and ignores the moe_* ones (but the FFN's activation, a GLU too).
    args = copy.deepcopy(model.args)
    dense = MoeMtTransformerModel.build_model(args, task)
    state, report = student_state_from_teacher(
        dense.state_dict(), state, moe_init="expert", expert=expert
    )
    if report.kept:  # a tensor without an MoE counterpart: not the same network
        name, why = next(iter(report.kept.items()))
        raise MoeMtError(f"{checkpoint}: cannot make {arch} dense: {name}: {why}")
    dense.load_state_dict(state, strict=True)
    dense.eval()
    return dense, sorted({name.rsplit(".fc", 1)[0] for name in report.from_experts})
