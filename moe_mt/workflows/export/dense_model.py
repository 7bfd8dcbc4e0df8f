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
- every other MoE model is refused with the one line its class gives
  (:meth:`~moe_mt.models.moe_layers.MoETransformerModel.not_dense_because`): routed models
  choose experts per token (or mix tokens into slots); no fixed dense network reproduces them,
  and ``moemt distill`` makes one that approximates them.
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


@dataclass
class DenseModel:
    """A dense fairseq Transformer and where its weights came from."""

    model: torch.nn.Module  # a fairseq TransformerModel (moemt_transformer), in eval mode
    arch: str  # the checkpoint's architecture
    family: str  # the checkpoint's model family (dense for a fairseq Transformer)
    single_expert: dict | None  # an MoE model's: {"expert": k, "expert_layers": [...]}


def dense_model(model: torch.nn.Module, arch: str, task, checkpoint) -> DenseModel:
    """``model`` (loaded by :class:`moe_mt.workflows.translate.Translator`) as a dense model.

    Raises:
        MoeMtError: an MoE model that routes (one line: why, and the way out).
    """
    if not isinstance(model, MoETransformerModel):
        _check_dense(model, arch, checkpoint)
        return DenseModel(model, arch, "dense", None)
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
    # The MoE architecture's args hold every size option already filled in; the dense model
    # class reads those and ignores the moe_* ones.
    args = copy.deepcopy(model.args)
    dense = MoeMtTransformerModel.build_model(args, task)
    state, report = student_state_from_teacher(
        dense.state_dict(), model.state_dict(), moe_init="expert", expert=expert
    )
    if report.kept:  # a tensor without an MoE counterpart: not the same network
        name, why = next(iter(report.kept.items()))
        raise MoeMtError(f"{checkpoint}: cannot make {arch} dense: {name}: {why}")
    dense.load_state_dict(state, strict=True)
    dense.eval()
    layers = sorted({name.rsplit(".fc", 1)[0] for name in report.from_experts})
    family = families.family_of_arch(arch)
    return DenseModel(
        dense, arch, family.name if family else arch, {"expert": expert, "expert_layers": layers}
    )
