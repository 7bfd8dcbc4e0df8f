"""A routed MoE model made dense for serving: each MoE layer's experts pruned or merged into one
FFN, measured on a calibration set (``eval.merge_experts``; docs/deploy.md).

The result is a *different model*: no dense network reproduces token-level routing. It must be
scored (``moemt eval RUN eval.engine=ctranslate2 eval.merge_experts=METHOD``), and its
``export.json`` says how it was made.

Calibration: the routed model itself, in eval mode, teacher-forced over the run's prepared
*valid* split (never test), counts in every MoE layer each expert's assignments ``n_e`` (the
router's kept choices, pads excluded) and their combine-weight mass ``A_e`` (the sum of the
gate values those tokens gave the expert). Then, per layer:

- ``most_used``: keep the expert with the most assignments, ``e* = argmax n_e`` (expert
  pruning to one expert, as the "keep the most-used expert" baseline of the expert-pruning
  literature);
- ``usage_average``: the usage-weighted average of the experts' weights,
  ``W = sum_e u_e W_e`` with ``u_e = A_e / sum A`` for every tensor (w1, b1, w3, b3, w2, b2);
  M-SMoE's frequency-weighted merge (Li et al. 2023, MC-SMoE, arXiv 2310.01334, eq. 4) with one
  group per layer and without its permutation alignment of the experts' hidden units (so
  ``usage_average`` averages hidden units that may not correspond: it is the simplest merge,
  a baseline, and it is named for what it does).

A token-choice layer computes ``sum_k g_k E_k(x)``, the chosen experts' outputs scaled by their
gates (Switch top-1: ``p(x) E(x)``, with ``p`` well below 1). The merged FFN has no gate, so the
gates' mean mass is folded into its output projection: ``w2`` and ``b2`` are scaled by
``A_{e*} / n_{e*}`` (``most_used``: the mean gate of the expert's tokens) or by
``sum A / T`` (``usage_average``: the mean total gate per token, ``T`` the non-pad tokens).

Not here: blocks with a shared FFN (shared experts, CMR), MH-MoE's sub-token experts, Soft MoE
(its slots mix a sentence's tokens: no per-token FFN exists) and THOR (it has a fixed-expert
export already, ``eval.thor_inference=fixed``); each is refused with the reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from moe_mt.errors import MoeMtError
from moe_mt.moe import MoEFeedForward
from moe_mt.moe.experts import BANK_TENSORS

MERGE_METHODS = ("most_used", "usage_average")
CALIBRATION_SPLIT = "valid"
#: Tokens per calibration batch (teacher forcing, no beams).
CALIBRATION_MAX_TOKENS = 4096


@dataclass
class LayerUsage:
    """One MoE layer's calibration counts."""

    assignments: torch.Tensor  # [e] float64, kept assignments n_e
    gate_mass: torch.Tensor  # [e] float64, sum of their combine weights A_e
    tokens: int = 0  # non-pad tokens T

    def as_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "assignments": [int(v) for v in self.assignments.tolist()],
            "gate_mass": [round(float(v), 4) for v in self.gate_mass.tolist()],
        }


@dataclass
class Calibration:
    """What the calibration pass saw: per-layer usage, and the data it ran on."""

    layers: dict[str, LayerUsage] = field(default_factory=dict)
    sentences: int = 0
    files_sha256: str = ""


def merge_refusal(block) -> str | None:
    """Why ``block`` cannot be merged into one FFN here, or None."""
    if isinstance(block, MoEFeedForward):
        return None
    name = type(block).__name__
    reasons = {
        "SoftMoEFeedForward": "Soft MoE's slots mix the tokens of a sentence, so no per-token "
        "FFN reproduces it; distil it with `moemt distill`",
        "SharedExpertMoE": "merging a block with shared experts is not implemented",
        "ConditionalMoE": "merging a CMR block (a gated shared FFN) is not implemented",
        "MultiHeadMoE": "merging MH-MoE's sub-token experts is not implemented",
    }
    return reasons.get(name, f"merging a {name} block is not implemented")


def calibration_sha256(data_dir: Path, split: str = CALIBRATION_SPLIT) -> str:
    """sha256 over the binarised ``split`` files of the run (names and bytes, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(data_dir).glob(f"{split}.*") if p.is_file())
    if not files:
        raise MoeMtError(f"{data_dir}: no binarised {split} split to calibrate the merge on")
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@torch.no_grad()
def calibrate(model, task, data_dir: Path) -> Calibration:
    """Teacher-forced pass of ``model`` (eval mode) over the valid split: per-layer usage."""
    from moe_mt.models.moe_layers import collect_moe_outputs

    model.eval()
    task.load_dataset(CALIBRATION_SPLIT)
    dataset = task.dataset(CALIBRATION_SPLIT)
    batches = task.get_batch_iterator(
        dataset=dataset, max_tokens=CALIBRATION_MAX_TOKENS, ignore_invalid_inputs=True
    ).next_epoch_itr(shuffle=False)
    result = Calibration(files_sha256=calibration_sha256(data_dir))
    for sample in batches:
        with collect_moe_outputs() as outputs:
            model(**sample["net_input"])
        result.sentences += int(sample["nsentences"])
        for name, out in outputs:
            routing, kept = out.routing, out.plan.kept
            e = out.plan.counts.numel()
            usage = result.layers.setdefault(
                name,
                LayerUsage(
                    torch.zeros(e, dtype=torch.float64), torch.zeros(e, dtype=torch.float64)
                ),
            )
            index = routing.expert_index[kept]
            usage.assignments.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
            weight = routing.combine_weight.detach().to(torch.float64)[kept]
            usage.gate_mass.index_add_(0, index, weight)
            # every non-pad token has a kept choice without capacity, or is a pad (weight 0)
            usage.tokens += int((routing.combine_weight.detach().sum(1) > 0).sum())
    return result


def merged_bank_tensors(block: MoEFeedForward, usage: LayerUsage, method: str) -> dict:
    """The block's bank tensors (:data:`~moe_mt.moe.experts.BANK_TENSORS`) as one expert
    ``[1, ...]`` by ``method`` (module docstring)."""
    if method not in MERGE_METHODS:
        raise MoeMtError(f"eval.merge_experts={method}: expected one of {', '.join(MERGE_METHODS)}")
    bank = block.experts
    if float(usage.assignments.sum()) == 0:
        raise MoeMtError("the calibration set routed no token through an MoE layer")
    if method == "most_used":
        chosen = int(usage.assignments.argmax())
        weights = torch.zeros_like(usage.assignments)
        weights[chosen] = 1.0
        gate = float(usage.gate_mass[chosen] / usage.assignments[chosen])
    else:
        weights = usage.gate_mass / usage.gate_mass.sum()
        gate = float(usage.gate_mass.sum()) / max(usage.tokens, 1)
    merged = {}
    for name in BANK_TENSORS:
        tensor = getattr(bank, name)
        if tensor is None:
            continue
        w = weights.to(tensor.dtype).view(-1, *([1] * (tensor.dim() - 1)))
        value = (tensor.detach() * w).sum(0, keepdim=True)
        if name in ("w2", "b2"):  # the gate's mean mass, folded into the output
            value = value * gate
        merged[name] = value
    return merged
