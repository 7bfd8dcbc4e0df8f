"""The dense Transformer that a loaded checkpoint is at inference, or the reason it is not one.

CTranslate2 runs dense Transformers: every token goes through the same FFN in every layer. So:

- a dense ``moemt_transformer_*`` model (a baseline, or a ``moemt distill`` student) is exported
  as it is;
- THOR with ``eval.thor_inference=fixed`` sends every token through expert ``eval.thor_expert``
  in every expert layer and has no gate (Zuo et al. 2022): structurally the dense model whose
  FFN there is that expert. It is rebuilt as ``moemt_transformer`` with the expert's weights in
  ``fc1`` / ``fc2``, through the same copy that initialises a distillation student from one
  expert (:func:`moe_mt.workflows.common.student_init.student_state_from_teacher`);
- every routed model is refused with one line naming the way out: Switch, X-MoE, MH-MoE and
  Soft MoE choose experts per token (or mix tokens into slots), THOR ``random`` per sentence and
  ``mean`` runs every expert. No fixed dense network reproduces them; ``moemt distill`` makes
  one that approximates them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from moe_mt.errors import MoeMtError
from moe_mt.models.moe_layers import MoETransformerModel
from moe_mt.models.thor import ThorTransformerModel
from moe_mt.models.transformer import MoeMtTransformerModel
from moe_mt.workflows.common.student_init import student_state_from_teacher


@dataclass
class DenseModel:
    """A dense fairseq Transformer and where its weights came from."""

    model: torch.nn.Module  # a fairseq TransformerModel (moemt_transformer), in eval mode
    arch: str  # the checkpoint's architecture
    family: str  # dense | thor
    thor: dict | None  # THOR: {"inference": "fixed", "expert": k, "expert_layers": [...]}


def dense_model(model: torch.nn.Module, arch: str, task, checkpoint) -> DenseModel:
    """``model`` (loaded by :class:`moe_mt.workflows.translate.Translator`) as a dense model.

    Raises:
        MoeMtError: a routed MoE model (one line: why, and the way out).
    """
    if not isinstance(model, MoETransformerModel):
        _check_dense(model, arch, checkpoint)
        return DenseModel(model, arch, "dense", None)
    if isinstance(model, ThorTransformerModel):
        modes = {router.inference for router in model.routers()}
        if modes == {"fixed"}:
            return _thor_fixed_as_dense(model, arch, task, checkpoint)
        raise MoeMtError(
            f"{checkpoint}: THOR ({arch}) with eval.thor_inference={'/'.join(sorted(modes))} "
            "uses several experts per layer, which CTranslate2 cannot run; export it with "
            "eval.thor_inference=fixed (one expert per layer, eval.thor_expert) or distil it "
            "into a dense model with `moemt distill`"
        )
    raise MoeMtError(
        f"{checkpoint}: {arch} routes each token to experts, which CTranslate2 cannot run "
        "(dense Transformers only); distil it into a dense model with `moemt distill` and "
        "export the student"
    )


def _check_dense(model, arch: str, checkpoint) -> None:
    """Refuse a model that is neither an MoE model nor fairseq's dense Transformer."""
    from fairseq.models.transformer import TransformerModel

    if not isinstance(model, TransformerModel):
        raise MoeMtError(
            f"{checkpoint}: {arch} ({type(model).__name__}) is not a Transformer "
            "encoder-decoder; moemt exports dense Transformers only"
        )


def _thor_fixed_as_dense(model, arch: str, task, checkpoint) -> DenseModel:
    """The dense ``moemt_transformer`` whose FFN in each THOR expert layer is the fixed expert."""
    experts = {router.fixed_expert for router in model.routers()}
    (expert,) = experts  # set_inference / the fixed override give every layer the same one
    # The THOR architecture's args hold every size option already filled in; the dense model
    # class reads those and ignores the moe_* ones.
    args = copy.deepcopy(model.args)
    dense = MoeMtTransformerModel.build_model(args, task)
    state, report = student_state_from_teacher(
        dense.state_dict(), model.state_dict(), moe_init="expert", expert=expert
    )
    if report.kept:  # a tensor without a THOR counterpart: not the same network
        name, why = next(iter(report.kept.items()))
        raise MoeMtError(f"{checkpoint}: cannot make THOR ({arch}) dense: {name}: {why}")
    dense.load_state_dict(state, strict=True)
    dense.eval()
    layers = sorted({name.rsplit(".fc", 1)[0] for name in report.from_experts})
    return DenseModel(
        dense, arch, "thor", {"inference": "fixed", "expert": expert, "expert_layers": layers}
    )
