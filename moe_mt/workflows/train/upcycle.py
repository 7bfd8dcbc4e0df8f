"""Sparse upcycling (Komatsuzaki et al., ICLR 2023): an MoE model starts from a dense checkpoint.

``moemt train RECIPE train.upcycle_from=RUN_DIR_OR_CHECKPOINT`` (a run directory: its
``checkpoint_best.pt``, else its last), before the first update of a Switch, X-MoE or THOR run
(Soft MoE too: its experts have the dense FFN's shape, but its slots mix tokens, so it does not
start from the dense function):

- every expert of every MoE layer is a copy of that layer's dense FFN, transposed into the
  expert bank's layout (``w1[e] = fc1.weight.T``, ``b1[e] = fc1.bias``, ``w2[e] = fc2.weight.T``,
  ``b2[e] = fc2.bias``), optionally times ``1 + train.upcycle_noise * N(0, 1)`` element-wise
  (independently per expert, from ``train.seed``; 0: exact copies);
- CMR's shared FFN (``model.moe.cmr``) is the dense FFN too; routers and CMR's gate are fresh
  (the MoE run's own initialisation);
- every other tensor is copied by name.

Anything else is an error of one line naming both models: a tensor the dense model lacks or has
in another shape (another backbone size; another vocabulary, which the run directories'
dictionaries also show), a source that is itself an MoE model, a dense or MH-MoE target.
MH-MoE is refused: its experts take ``d / h``-wide sub-tokens behind multi-head and merge
projections the dense model does not have, so no expert can be a copy of the dense FFN (slicing
or re-projecting it would not compute the dense function).

The tensors are mapped by :func:`~moe_mt.workflows.common.model_init.init_state`, the code
``moemt distill`` initialises its student with; each tensor and its source is logged to
``logs/upcycle.log`` and ``upcycle/init.json``, and the initial checkpoint
``upcycle/init.pt`` (written atomically) is where fairseq starts (``--finetune-from-model``).
The source is read with the safe loader (``weights_only``, :func:`moe_mt.checkpoints.load_state`).

A note on top-1 routing: a Switch layer weights its expert's output by the router probability,
so right after upcycling (a fresh router near uniform, ``p ~ 1/E``) a top-1 model computes
``p * FFN(x)`` in its MoE layers, not the dense ``FFN(x)``; top-2 with renormalised weights and
THOR (weight 1) start from the dense function exactly.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from moe_mt.checkpoints import load_state
from moe_mt.errors import MoeMtError
from moe_mt.models import families
from moe_mt.workflows.common.model_init import (
    INTO_EXPERTS,
    InitReport,
    Source,
    build_model_state,
    init_state,
    same_name_rule,
    save_init_checkpoint,
)
from moe_mt.workflows.common.rundir import RunDir, atomic_write_json
from moe_mt.workflows.train.fairseq_args import train_args

INIT_DIR = "upcycle"
INIT_CHECKPOINT = "init.pt"
LOG = "upcycle.log"
#: <layer>.moe.[moe.]experts.<w> (the MoE block, or the one inside CMR) and CMR's shared FFN.
_EXPERTS = re.compile(
    r"^(?P<layer>.+?)\.moe\.(?:moe\.experts|experts|shared)\.(?P<w>w1|b1|w3|b3|w2|b2)$"
)
#: expert-bank tensor -> (dense tensors, the first the dense model has; transposed from
#: nn.Linear's [out, in]); a GLU FFN's fc1 holds the gate w1 and the up projection w3
_DENSE_SOURCES = {
    "w1": (("fc1.weight", "fc1.w1.weight"), True),
    "b1": (("fc1.bias", "fc1.w1.bias"), False),
    "w3": (("fc1.w3.weight",), True),
    "b3": (("fc1.w3.bias",), False),
    "w2": (("fc2.weight",), True),
    "b2": (("fc2.bias",), False),
}
#: Fresh by design: routers (top-k gate, cosine projection/embeddings/temperature) and CMR's gate.
_FRESH = re.compile(r"\.moe\.(?:moe\.)?router\.|\.moe\.gate\.")


def dense_rule(
    name: str, dense: Mapping[str, Tensor], noise: float = 0.0, generator=None
) -> Source:
    """The dense model's counterpart of the MoE model's tensor ``name`` (module docstring)."""
    if _FRESH.search(name):
        return Source(None, "fresh router (sparse upcycling)")  # CMR's gate too
    match = _EXPERTS.match(name)
    if match is None:
        return same_name_rule(name, dense)
    keys, transpose = _DENSE_SOURCES[match["w"]]
    found = [f"{match['layer']}.{k}" for k in keys if f"{match['layer']}.{k}" in dense]
    if not found:
        return Source(None, f"no dense tensor {match['layer']}.{keys[-1]}")
    key = found[0]
    return Source(_experts_from(dense[key], transpose, noise, generator), key, INTO_EXPERTS)


def _experts_from(value: Tensor, transpose: bool, noise: float, generator) -> _ExpertCopies:
    return _ExpertCopies(value.t() if transpose else value, noise, generator)


class _ExpertCopies:
    """``E`` copies of a dense tensor, materialised at the target's expert count.

    :func:`~moe_mt.workflows.common.model_init.init_state` compares ``shape`` first; the copies
    take the target's leading dimension, so only the rest must agree.
    """

    def __init__(self, value: Tensor, noise: float, generator) -> None:
        self.value, self.noise, self.generator = value, noise, generator
        self.num_experts: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.num_experts or 1, *self.value.shape)

    def detach(self) -> Tensor:
        copies = self.value.detach().unsqueeze(0).expand(self.shape).clone()
        if self.noise > 0:
            jitter = torch.randn(copies.shape, generator=self.generator, dtype=torch.float64)
            copies = (copies.double() * (1 + self.noise * jitter)).to(copies.dtype)
        return copies


def upcycled_state(
    target: Mapping[str, Tensor],
    dense: Mapping[str, Tensor],
    noise: float = 0.0,
    seed: int = 1,
    target_name: str = "the MoE model",
    source_name: str = "the dense model",
) -> tuple[dict[str, Tensor], InitReport]:
    """The MoE model's state with every tensor from the dense model (module docstring).

    Raises:
        MoeMtError: one line naming both models, when a tensor has no dense counterpart (other
            than the fresh routers), the shapes differ, or the source has MoE layers.
    """
    moe_in_source = next((k for k in dense if ".moe." in k), None)
    if moe_in_source is not None:
        raise MoeMtError(
            f"train.upcycle_from: {source_name} is not a dense model ({moe_in_source}); "
            f"upcycle {target_name} from a dense run"
        )
    generator = torch.Generator().manual_seed(seed)

    def rule(name: str, source: Mapping[str, Tensor]) -> Source:
        found = dense_rule(name, source, noise, generator)
        if isinstance(found.tensor, _ExpertCopies):
            found.tensor.num_experts = target[name].shape[0]
        return found

    state, report = init_state(target, dense, rule, source_name="dense")
    _check_complete(report, target, dense, target_name, source_name)
    return state, report


def _check_complete(report, target, dense, target_name: str, source_name: str) -> None:
    for name, why in report.kept.items():
        if why.startswith("fresh router"):
            continue
        if name in report.mismatched:
            what = (
                "vocabulary"
                if "embed_tokens" in name or "output_projection" in name
                else ("backbone size")
            )
            key = dense_rule(name, dense).description  # the dense tensor's name
            raise MoeMtError(
                f"train.upcycle_from: another {what}: {name} is {tuple(target[name].shape)} in "
                f"{target_name} but {key} is {tuple(dense[key].shape)} in {source_name}"
            )
        raise MoeMtError(
            f"train.upcycle_from: {name} of {target_name} has no counterpart in {source_name} "
            f"({why}): another architecture"
        )


def check_upcyclable(cfg: DictConfig) -> None:
    """Refuse a target family that cannot be upcycled (:attr:`Family.upcyclable
    <moe_mt.models.families.Family.upcyclable>`; one line, with the reason)."""
    family = families.family_of_arch(cfg.model.arch)
    if family is not None and family.upcyclable:
        _check_expert_width(cfg)
        return
    if family is not None and family.upcycle_refusal:
        raise MoeMtError(f"train.upcycle_from: {family.upcycle_refusal}")
    choices = ", ".join(f.name for f in families.families() if f.upcyclable)
    name = family.name if family is not None else cfg.model.family or "dense"
    raise MoeMtError(
        f"train.upcycle_from: model.arch={cfg.model.arch} ({name}) has no experts to "
        f"upcycle into; choose one of the families {choices} (a dense run "
        "continues with --finetune-from)"
    )


def _check_expert_width(cfg: DictConfig) -> None:
    """Experts copy the dense FFN, so they must have its width (no fine-grained experts)."""
    moe = cfg.model.get("moe") or {}
    segments, width = moe.get("expert_segments") or 1, moe.get("expert_ffn_dim")
    if segments > 1 or (width is not None and width != cfg.model.get("ffn_embed_dim", width)):
        raise MoeMtError(
            f"train.upcycle_from: experts of another width than the dense FFN "
            f"(model.moe.expert_ffn_dim={width}, expert_segments={segments}) cannot copy it; "
            "upcycle into experts of the FFN's width"
        )


def _dictionary_digests(run_root: Path) -> dict[str, str]:
    bin_dir = run_root / "data" / "bin"
    if not bin_dir.is_dir():
        return {}
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(bin_dir.glob("dict.*"))
    }


def _check_vocabulary(run_dir: RunDir, checkpoint: Path) -> None:
    """The two runs' fairseq dictionaries must be the same files (when the source's run
    directory is known: ``RUN/checkpoints/<file>.pt``)."""
    source_root = checkpoint.parent.parent
    theirs, ours = _dictionary_digests(source_root), _dictionary_digests(run_dir.root)
    if not theirs or not ours:
        return
    for name in sorted(set(theirs) | set(ours)):
        if theirs.get(name) != ours.get(name):
            raise MoeMtError(
                f"train.upcycle_from: another vocabulary: data/bin/{name} differs between "
                f"{run_dir.root} and {source_root}"
            )


def write_upcycled_checkpoint(cfg: DictConfig, run_dir: RunDir, checkpoint: Path) -> Path:
    """``RUN/upcycle/init.pt``: the run's model upcycled from ``checkpoint`` (logged)."""
    check_upcyclable(cfg)
    _check_vocabulary(run_dir, checkpoint)
    target = build_model_state(train_args(cfg, run_dir), cfg.train.seed)
    dense = load_state(checkpoint)["model"]
    state, report = upcycled_state(
        target, dense, float(cfg.train.upcycle_noise), int(cfg.train.seed),
        target_name=f"{run_dir.root} (model.arch={cfg.model.arch})", source_name=str(checkpoint),
    )  # fmt: skip
    run_dir.logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"sparse upcycling from {checkpoint}: {len(report.copied)} tensors copied, "
        f"{len(report.into_experts)} expert banks from dense FFNs "
        f"(noise {cfg.train.upcycle_noise:g}), {len(report.kept)} fresh routers",
        *("  " + line for line in report.lines()),
    ]
    with open(run_dir.logs / LOG, "a", encoding="utf-8") as out:
        out.writelines(f"{stamp} {line}\n" for line in lines)
    out_dir = run_dir.root / INIT_DIR
    atomic_write_json(out_dir / "init.json", {"source": str(checkpoint), **report.as_dict()})
    return save_init_checkpoint(state, out_dir / INIT_CHECKPOINT)


__all__ = [
    "check_upcyclable",
    "dense_rule",
    "upcycled_state",
    "write_upcycled_checkpoint",
]
