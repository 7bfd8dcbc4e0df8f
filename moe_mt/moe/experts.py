"""Expert bank: ``E`` feed-forward experts held as batched weights, run over grouped tokens.

Axes: ``e`` experts, ``m`` grouped rows (contiguous per expert), ``d`` expert input width,
``f`` hidden width, ``o`` output width (``d`` unless set: MH-MoE's sub-token experts have input
width ``d_model / h``, which is just a smaller ``d`` here).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moe_mt.moe.grouped_ffn import ACTIVATION_BACKWARD, GroupedFFN, grouped_ffn_inference

IMPLS = ("auto", "fused", "loop", "grouped_mm")
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),
    "silu": F.silu,
}


def _needs_grad(*tensors: Tensor | None) -> bool:
    return any(t is not None and t.requires_grad for t in tensors)


class ExpertBank(nn.Module):
    """``E`` FFN experts ``fc2(dropout(act(fc1(x))))``, weights ``[e, d, f]`` and ``[e, f, o]``.

    Args:
        num_experts: ``e``.
        d_model: expert input width ``d``.
        d_ff: hidden width ``f``.
        d_out: output width ``o`` (default ``d_model``).
        activation: name in :data:`ACTIVATIONS`.
        dropout: dropout on the hidden activations inside each expert (Switch's "expert dropout",
            typically higher than the model's dropout).
        bias: add per-expert biases ``[e, f]`` and ``[e, o]``.
        impl: ``"auto"`` (default: ``"grouped_mm"`` for group sizes held on a CUDA device,
            ``"fused"`` otherwise), ``"fused"`` (:class:`~moe_mt.moe.grouped_ffn.GroupedFFN`,
            one matmul pair per expert over its contiguous rows, written in place, with its own
            backward; the fastest on the CPU), ``"loop"`` (the same loop under plain autograd)
            or ``"grouped_mm"`` (``torch.nn.functional.grouped_mm`` over device-side group
            offsets: one kernel per weight and no host synchronisation; bf16 on CUDA,
            fp32/bf16/fp16 on the CPU, with rows that are multiples of 16 bytes, else
            ``"fused"``, which reads the group sizes back to the host).

    Initialisation matches ``nn.Linear`` per expert: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
    """

    def __init__(
        self,
        num_experts: int,
        d_model: int,
        d_ff: int,
        d_out: int | None = None,
        activation: str = "gelu",
        dropout: float = 0.0,
        bias: bool = True,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS or activation not in ACTIVATION_BACKWARD:
            raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; known: {IMPLS}")
        d_out = d_model if d_out is None else d_out
        self.num_experts, self.d_model, self.d_ff, self.d_out = num_experts, d_model, d_ff, d_out
        self.activation, self.impl = activation, impl
        self.act = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)
        self.w1 = nn.Parameter(torch.empty(num_experts, d_model, d_ff))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_ff, d_out))
        self.b1 = nn.Parameter(torch.empty(num_experts, d_ff)) if bias else None
        self.b2 = nn.Parameter(torch.empty(num_experts, d_out)) if bias else None
        self.reset_parameters()

    @property
    def num_global_experts(self) -> int:
        """Experts of the layer (a shard of an expert-parallel layer holds fewer, see
        :class:`~moe_mt.moe.expert_parallel.ShardedExpertBank`)."""
        return self.num_experts

    def reset_parameters(self) -> None:
        for w, b, fan_in in ((self.w1, self.b1, self.d_model), (self.w2, self.b2, self.d_ff)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            if b is not None:
                nn.init.uniform_(b, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, d_model={self.d_model}, d_ff={self.d_ff}, "
            f"d_out={self.d_out}, activation={self.activation}, impl={self.impl}"
        )

    def forward(self, x: Tensor, counts: Tensor | list[int]) -> Tensor:
        """Run ``x`` ``[m, d]``, grouped contiguously by expert with ``counts`` ``[e]`` rows each.

        ``counts`` may sum to less than ``m`` (:func:`~moe_mt.moe.dispatch.plan_dispatch_static`):
        the rows after the last group are not computed, and their output and gradient are
        undefined.

        Returns:
            ``[m, o]``, row ``r`` processed by the expert whose group contains ``r``.
        """
        if len(counts) != self.num_experts:
            raise ValueError(f"{len(counts)} group sizes for {self.num_experts} experts")
        # Sizes known on the host (a list) run best as plain matmuls; on a device, grouped.
        if self.grouped_gemm_runs(x) and (isinstance(counts, Tensor) or self.impl == "grouped_mm"):
            sizes = counts if isinstance(counts, Tensor) else torch.tensor(counts)
            return self._forward_grouped_mm(x, sizes.to(x.device, non_blocking=True))
        sizes = counts.tolist() if isinstance(counts, Tensor) else list(counts)
        if sum(sizes) > x.shape[0]:
            raise ValueError(f"counts {sizes} need more than the {x.shape[0]} rows given")
        if self.impl == "loop":
            return self._forward_loop(x, sizes)
        return self._forward_fused(x, sizes)

    def forward_slots(self, x: Tensor, slots: int) -> Tensor:
        """Run ``x`` ``[e * slots, d]``, expert ``e`` on rows ``[e * slots, (e + 1) * slots)``,
        as one ``bmm`` per weight over ``[e, slots, d]`` (any dtype, no host synchronisation).

        Returns:
            ``[e * slots, o]``.
        """
        e = self.num_experts
        if x.shape[0] != e * slots:
            raise ValueError(f"{x.shape[0]} rows are not {e} experts x {slots} slots")
        h = torch.bmm(x.view(e, slots, -1), self.w1)  # autocast casts bmm's operands
        if self.b1 is not None:
            h = h + self.b1[:, None, :].to(h.dtype)
        h = self.dropout(self.act(h))
        y = torch.bmm(h, self.w2)
        if self.b2 is not None:
            y = y + self.b2[:, None, :].to(y.dtype)
        return y.reshape(e * slots, -1)

    def _forward_fused(self, x: Tensor, sizes: list[int]) -> Tensor:
        # Autocast does not reach the out= matmuls: cast once here to its dtype, then run off.
        device, dtype = x.device.type, self._compute_dtype(x)
        p = self.dropout.p if self.training else 0.0
        with torch.autocast(device, enabled=False):
            x = x.to(dtype).contiguous()
            w1, b1, w2, b2 = (None if t is None else t.to(dtype) for t in self._weights())
            if not (torch.is_grad_enabled() and _needs_grad(x, w1, b1, w2, b2)):
                return grouped_ffn_inference(x, w1, b1, w2, b2, sizes, self.act, p)
            return GroupedFFN.apply(x, w1, b1, w2, b2, sizes, self.act, self.activation, p)

    def _weights(self) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        return self.w1, self.b1, self.w2, self.b2

    def forward_expert(self, x: Tensor, expert: int) -> Tensor:
        """Run every row of ``x`` ``[m, d]`` through expert ``expert`` (THOR's ``fixed`` mode)."""
        sizes = [0] * self.num_experts
        sizes[expert] = x.shape[0]
        return self(x, sizes)

    def grouped_gemm_runs(self, x: Tensor) -> bool:
        """Whether group sizes held on ``x``'s device run as one grouped GEMM per weight: when
        asked for, or under ``auto`` on a GPU (reading the sizes back would stall it), and when
        ``grouped_mm`` takes this dtype and these widths."""
        wanted = self.impl == "grouped_mm" or (self.impl == "auto" and x.is_cuda)
        return wanted and self._grouped_mm_supports(x)

    def _grouped_mm_supports(self, x: Tensor) -> bool:
        """grouped_mm takes row strides that are multiples of 16 bytes, in the dtype it computes
        in (autocast's). On CUDA only bf16: torch's CUTLASS kernel (sm90/sm100) takes bf16
        alone, and its fallback for other dtypes reads the offsets back to the host, which the
        fused path does too, faster. On the CPU, fp32/bf16/fp16."""
        dtype = self._compute_dtype(x)
        allowed = (torch.bfloat16,) if x.is_cuda else (torch.float32, torch.bfloat16, torch.float16)
        if dtype not in allowed:
            return False
        size = torch.finfo(dtype).bits // 8
        return all((w * size) % 16 == 0 for w in (self.d_model, self.d_ff, self.d_out))

    @staticmethod
    def _compute_dtype(x: Tensor) -> torch.dtype:
        device = x.device.type
        return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype

    def _forward_loop(self, x: Tensor, sizes: list[int]) -> Tensor:
        # unbind, not w[e]: its backward stacks the per-expert grads once instead of E zero-filled
        # full-size buffers.
        w1, w2 = self.w1.unbind(0), self.w2.unbind(0)
        b1 = self.b1.unbind(0) if self.b1 is not None else [None] * self.num_experts
        b2 = self.b2.unbind(0) if self.b2 is not None else [None] * self.num_experts
        outs = []
        rest = x.shape[0] - sum(sizes)  # rows after the last group: not computed
        for e, xe in enumerate(x.split([*sizes, rest])[: self.num_experts]):
            if xe.shape[0] == 0:
                outs.append(x.new_empty(0, self.d_out))
                continue
            h = torch.addmm(b1[e], xe, w1[e]) if b1[e] is not None else xe @ w1[e]
            h = self.dropout(self.act(h))
            outs.append(torch.addmm(b2[e], h, w2[e]) if b2[e] is not None else h @ w2[e])
        if rest:
            outs.append(x.new_zeros(rest, self.d_out))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _forward_grouped_mm(self, x: Tensor, sizes: Tensor) -> Tensor:
        """One grouped GEMM per weight over the groups ``sizes`` ``[e]`` (on ``x``'s device).

        Biases are gathered per row from the weights with a zero row appended, which the rows
        after the last group take, so that their undefined values reach no bias gradient.
        """
        m, device, dtype = x.shape[0], x.device.type, self._compute_dtype(x)
        with torch.autocast(device, enabled=False):  # grouped_mm is not on autocast's lists
            x = x.to(dtype)
            offs = torch.cumsum(sizes, 0).to(torch.int32)
            rest = (m - offs[-1:]).to(sizes.dtype)
            groups = torch.arange(self.num_experts + 1, device=x.device)
            row_group = torch.repeat_interleave(groups, torch.cat([sizes, rest]), output_size=m)
            h = F.grouped_mm(x, self.w1.to(dtype), offs=offs)
            if self.b1 is not None:
                h = h + F.pad(self.b1.to(dtype), (0, 0, 0, 1)).index_select(0, row_group)
            h = self.dropout(self.act(h))
            y = F.grouped_mm(h, self.w2.to(dtype), offs=offs)
            if self.b2 is not None:
                y = y + F.pad(self.b2.to(dtype), (0, 0, 0, 1)).index_select(0, row_group)
            return y
