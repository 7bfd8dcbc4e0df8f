"""A model's initial weights from another trained model, tensor by tensor, with a report.

One implementation for the two directions moemt initialises in:

- ``moemt distill`` (:mod:`moe_mt.workflows.common.student_init`): a dense student from a
  (dense or MoE) teacher, its FFNs from the teacher's experts;
- sparse upcycling, ``moemt train ... train.upcycle_from=...``
  (:mod:`moe_mt.workflows.train.upcycle`): an MoE model from a dense one, every expert a copy of
  the dense FFN.

A *rule* names, for each tensor of the target model, its source (a tensor of the source state,
or one derived from it) and the kind of copy; :func:`init_state` applies it and records every
target tensor once in an :class:`InitReport`: copied (same name), from experts, into experts, or
kept (the target's own initialisation, with the reason). A source tensor whose shape differs from
the target's is never copied. The report is logged line by line and written as JSON beside the
initial checkpoint (:func:`save_init_checkpoint`), which training then starts from
(fairseq's ``--finetune-from-model``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

import moe_mt
from moe_mt.checkpoints import atomic_torch_save

#: How a rule sourced a target tensor: a key of :class:`InitReport` (except ``kept``).
COPIED, FROM_EXPERTS, INTO_EXPERTS = "copied", "from_experts", "into_experts"


@dataclass(frozen=True)
class Source:
    """A rule's answer for one target tensor: the tensor to copy (None: keep the target's own),
    a description of where it comes from (or why nothing does), and the kind of copy."""

    tensor: Tensor | None
    description: str
    kind: str = COPIED


#: ``rule(target_name, source_state) -> Source``.
Rule = Callable[[str, Mapping[str, Tensor]], Source]


@dataclass
class InitReport:
    """What :func:`init_state` did, tensor by tensor (name -> source description / reason)."""

    copied: dict[str, str] = field(default_factory=dict)
    from_experts: dict[str, str] = field(default_factory=dict)
    into_experts: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    #: Target names kept because of a shape mismatch (subset of ``kept``).
    mismatched: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        kinds = (COPIED, FROM_EXPERTS, INTO_EXPERTS, "kept")
        return {
            **{kind: len(getattr(self, kind)) for kind in kinds},
            "tensors": {kind: getattr(self, kind) for kind in kinds},
        }

    def lines(self) -> list[str]:
        """One log line per target tensor."""
        out = [f"copied {name} <- {src}" for name, src in self.copied.items()]
        out += [f"from experts {name} <- {src}" for name, src in self.from_experts.items()]
        out += [f"into experts {name} <- {src}" for name, src in self.into_experts.items()]
        out += [f"kept own init {name}: {why}" for name, why in self.kept.items()]
        return out


def init_state(
    target: Mapping[str, Tensor],
    source: Mapping[str, Tensor],
    rule: Rule,
    source_name: str = "source",
) -> tuple[dict[str, Tensor], InitReport]:
    """The target's state dict with ``rule``'s source tensors copied in where the shapes agree
    (``source_name`` names the source model in the report: "teacher").

    Returns:
        ``(state, report)``: a new dict (tensors not copied are the target's own).
    """
    state, report = dict(target), InitReport()
    for name, own in target.items():
        found = rule(name, source)
        if found.tensor is None:
            report.kept[name] = found.description
            continue
        if tuple(found.tensor.shape) != tuple(own.shape):
            shape = tuple(found.tensor.shape)
            why = f"shape {tuple(own.shape)} vs {source_name} {found.description} {shape}"
            report.kept[name] = report.mismatched[name] = why
            continue
        state[name] = found.tensor.detach().to(own.dtype).clone()
        getattr(report, found.kind)[name] = found.description
    return state, report


def same_name_rule(name: str, source: Mapping[str, Tensor]) -> Source:
    """The source tensor of the same name, if any."""
    if name in source:
        return Source(source[name], name)
    return Source(None, "no source tensor of that name")


def build_model_state(fairseq_args: list[str], seed: int) -> dict[str, Tensor]:
    """A freshly initialised model's state dict, built as ``moemt train`` builds it from the same
    arguments (``train_args``; the run's prepared data gives the dictionaries), seeded with
    ``seed`` (``train.seed``)."""
    moe_mt.register()
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), fairseq_args)
    fairseq_cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(seed)
    task = tasks.setup_task(fairseq_cfg.task)
    return task.build_model(fairseq_cfg.model).state_dict()


def save_init_checkpoint(state: Mapping[str, Tensor], path: Path) -> Path:
    """Write ``state`` atomically as a checkpoint fairseq's ``--finetune-from-model`` reads
    (no optimizer state, update 0)."""
    atomic_torch_save(
        {
            "args": None,
            "cfg": None,
            "model": dict(state),
            "optimizer_history": [
                {
                    "criterion_name": "",
                    "optimizer_name": "",
                    "lr_scheduler_state": {},
                    "num_updates": 0,
                }
            ],  # fmt: skip
            "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        },
        path,
    )
    return path
