"""Tokens per expert per MoE layer over a decode (or any forward passes), and its heat map.

Usage, around a whole beam-search decode of a split (one ``with`` statement)::

    from moe_mt.workflows.evaluate.expert_usage import track_expert_usage, write_expert_usage

    with track_expert_usage(models[0]) as usage:
        for sample in batches:
            task.inference_step(generator, models, sample)
    report["expert_usage"] = write_expert_usage(usage, run_dir.eval / "expert_usage.png")

:func:`track_expert_usage` observes every MoE layer run inside the block
(:func:`moe_mt.models.moe_layers.observe_moe`, a context variable: nothing is stored on the
model) and adds each layer's kept token assignments per expert to an :class:`ExpertUsage`.
Given the model, it lists every MoE layer up front, so a layer that never ran shows zeros; for a
dense model it records nothing and :func:`write_expert_usage` writes no PNG. Pads never count.
In beam search every hypothesis of the beam counts as a token at every decoder step, and the
encoder's tokens count once per sentence.

:func:`write_expert_usage` writes the heat map (rows: layers named ``encoder.layers.1``,
columns: experts; cell: share of the layer's tokens, 1/E = balanced) with matplotlib's Agg
backend and returns a JSON-able dict::

    {"layers": {"encoder.layers.1": {"tokens": [...per expert], "share": [...],
                                     "dropped": int, "active_experts": int,
                                     "load_max": float, "load_min": float}, ...},
     "plot": "expert_usage.png" or None}

``load_max`` / ``load_min`` are the most / least used expert's tokens relative to a uniform
share (1.0 = balanced), as logged during training by ``moe_label_smoothed_cross_entropy``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from moe_mt.models.moe_layers import observe_moe
from moe_mt.moe import MoEOutput


@dataclass
class ExpertUsage:
    """Accumulated token assignments per expert (``tokens``) and drops, per MoE layer name."""

    tokens: dict[str, Tensor] = field(default_factory=dict)  # name -> [e] float64
    dropped: dict[str, float] = field(default_factory=dict)  # name -> dropped assignments
    # Sum of the core's per-forward-pass activation rate, and the number of passes.
    activation_sum: dict[str, float] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, output: MoEOutput) -> None:
        """Observer of one MoE layer's output (see :func:`track_expert_usage`)."""
        counts = output.stats.tokens_per_expert.detach().to("cpu", torch.float64)
        self._ensure(name, counts.numel())
        self.tokens[name] += counts
        kept = float(output.plan.counts.sum())
        self.dropped[name] += float(output.plan.num_assignments) - kept
        self.activation_sum[name] += float(output.stats.activation_rate)
        self.passes[name] += 1

    def _ensure(self, name: str, num_experts: int) -> None:
        if name not in self.tokens:
            self.tokens[name] = torch.zeros(num_experts, dtype=torch.float64)
            self.dropped[name] = 0.0
            self.activation_sum[name] = 0.0
            self.passes[name] = 0

    def layer_names(self) -> list[str]:
        """Encoder layers first, then decoder layers, each by index."""

        def key(name: str) -> tuple[int, int]:
            side, _, index = name.split(".")
            return (0 if side == "encoder" else 1, int(index))

        return sorted(self.tokens, key=key)

    def as_dict(self) -> dict:
        layers = {}
        for name in self.layer_names():
            tokens = self.tokens[name]
            total = float(tokens.sum())
            e = tokens.numel()
            share = (tokens / total).tolist() if total else [0.0] * e
            layers[name] = {
                "tokens": [int(t) for t in tokens.tolist()],
                "share": [round(s, 6) for s in share],
                "dropped": int(self.dropped[name]),
                "active_experts": int((tokens > 0).sum()),
                "load_max": round(max(share) * e, 4),
                "load_min": round(min(share) * e, 4),
                # Mean over forward passes of the share of experts that got a token in the
                # pass (the core's MoEStats.activation_rate; a beam-search step is a pass).
                "activation_rate": (
                    round(self.activation_sum[name] / self.passes[name], 4)
                    if self.passes[name]
                    else None
                ),
            }
        rates = [v["activation_rate"] for v in layers.values() if v["activation_rate"] is not None]
        return {
            "layers": layers,
            "activation_rate": round(sum(rates) / len(rates), 4) if rates else None,
        }


@contextlib.contextmanager
def track_expert_usage(model: nn.Module | None = None) -> Iterator[ExpertUsage]:
    """Accumulate tokens per expert of every MoE layer run inside the block.

    Args:
        model: optional; its MoE layers are listed up front (with zero counts), so that layers
            that never ran still appear. Without it, only layers that ran appear.
    """
    usage = ExpertUsage()
    if hasattr(model, "moe_layers"):  # an MoETransformerModel
        for name, block in model.moe_layers():
            usage._ensure(name, block.num_experts)
    with observe_moe(usage.add):
        yield usage


def write_expert_usage(usage: ExpertUsage, png: Path | str, title: str | None = None) -> dict:
    """Write the layers x experts heat map to ``png`` and return :meth:`ExpertUsage.as_dict`
    with ``"plot"`` (the PNG's file name, or None when there is no MoE layer to plot)."""
    result = usage.as_dict()
    names = usage.layer_names()
    if not names:
        return {**result, "plot": None}
    png = Path(png)
    _plot(names, [result["layers"][n]["share"] for n in names], png, title)
    return {**result, "plot": png.name}


def _plot(names: list[str], shares: list[list[float]], png: Path, title: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = max(len(s) for s in shares)
    grid = [row + [float("nan")] * (width - len(row)) for row in shares]
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * width, 1.0 + 0.4 * len(names)))
    try:
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0)
        ax.set_xticks(range(width))
        ax.set_yticks(range(len(names)), labels=names)
        ax.set_xlabel("expert")
        ax.set_title(title or "share of each layer's tokens per expert")
        fig.colorbar(image, ax=ax, label="share of tokens")
        fig.tight_layout()
        png.parent.mkdir(parents=True, exist_ok=True)
        tmp = png.with_name(png.name + ".tmp")
        fig.savefig(tmp, dpi=100, format="png")
        tmp.replace(png)
    finally:
        plt.close(fig)
