"""Expert bank: ``E`` feed-forward experts held as batched weights, run over grouped tokens.

Axes: ``e`` experts, ``m`` grouped rows (contiguous per expert), ``d`` expert input width,
``f`` hidden width, ``o`` output width (``d`` unless set: MH-MoE's sub-token experts have input
width ``d_model / h``, which is just a smaller ``d`` here).

GLU experts (``activation="swiglu"`` or ``"geglu"``) follow Shazeer 2020, eq. 6 (FFN_SwiGLU,
FFN_GEGLU; with eq. 5's biases when ``bias=True``): ``w2(act(x w1 + b1) * (x w3 + b3)) + b2``,
the weights named as Mixtral's and Llama's (``w1`` gate, ``w3`` up, ``w2`` down).
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
#: GLU experts: name -> the activation (a key of :data:`ACTIVATIONS`) of the gate ``x w1``;
#: SwiGLU's Swish_1 is SiLU, GEGLU's GELU the exact (erf) one.
GLU_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu"}
#: The bank's tensors, each ``[e, ...]`` (None where absent: biases, a non-GLU bank's w3, b3).
BANK_TENSORS = ("w1", "b1", "w3", "b3", "w2", "b2")


def _needs_grad(*tensors: Tensor | None) -> bool:
    return any(t is not None and t.requires_grad for t in tensors)


def _addmm(b: Tensor | None, x: Tensor, w: Tensor) -> Tensor:
    """``x @ w + b`` (``x @ w`` when ``b`` is None), one expert's rows."""
    return torch.addmm(b, x, w) if b is not None else x @ w


def _bmm(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``x @ w[e] + b[e]`` for every expert, ``x`` ``[e, slots, .]``."""
    y = torch.bmm(x, w)  # autocast casts bmm's operands
    return y if b is None else y + b[:, None, :].to(y.dtype)


def _grouped_linear(x: Tensor, w: Tensor, b: Tensor | None, offs: Tensor, row_group: Tensor):
    """``x @ w[e] + b[e]`` for the rows of every group, one grouped GEMM in ``x``'s dtype; the
    bias of row ``r`` is ``b``'s row ``row_group[r]`` (``e``: a zero row past the last group)."""
    y = F.grouped_mm(x, w.to(x.dtype), offs=offs)
    return y if b is None else y + F.pad(b.to(x.dtype), (0, 0, 0, 1)).index_select(0, row_group)


class ExpertBank(nn.Module):
    """``E`` FFN experts ``fc2(dropout(act(fc1(x))))``, weights ``[e, d, f]`` and ``[e, f, o]``;
    GLU experts ``w2(dropout(act(x w1 + b1) * (x w3 + b3))) + b2`` (module docstring) add
    ``w3`` ``[e, d, f]`` (and ``b3`` ``[e, f]``).

    Args:
        num_experts: ``e``.
        d_model: expert input width ``d``.
        d_ff: hidden width ``f``.
        d_out: output width ``o`` (default ``d_model``).
        activation: name in :data:`ACTIVATIONS`, or a GLU expert's in :data:`GLU_ACTIVATIONS`
            (``swiglu``, ``geglu``). A GLU expert has three ``[d, f]``-sized weights, not two:
            ``d_ff`` is taken as given, not shrunk to 2/3 (Shazeer's choice for equal
            parameters and FLOPs); the caller chooses the widths.
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

    Initialisation matches ``nn.Linear`` per expert: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    (``w3``, ``b3`` as ``w1``, ``b1``, drawn after the others: a non-GLU bank draws as before).
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
        act_name = GLU_ACTIVATIONS.get(activation, activation)
        if act_name not in ACTIVATIONS or act_name not in ACTIVATION_BACKWARD:
            known = sorted([*ACTIVATIONS, *GLU_ACTIVATIONS])
            raise ValueError(f"unknown activation {activation!r}; known: {known}")
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; known: {IMPLS}")
        d_out = d_model if d_out is None else d_out
        self.num_experts, self.d_model, self.d_ff, self.d_out = num_experts, d_model, d_ff, d_out
        self.activation, self.impl = activation, impl
        self.act_name = act_name  # the elementwise activation (a GLU expert's gate's)
        self.act = ACTIVATIONS[act_name]
        self.dropout = nn.Dropout(dropout)
        self.w1 = nn.Parameter(torch.empty(num_experts, d_model, d_ff))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_ff, d_out))
        self.b1 = nn.Parameter(torch.empty(num_experts, d_ff)) if bias else None
        self.b2 = nn.Parameter(torch.empty(num_experts, d_out)) if bias else None
        glu = activation in GLU_ACTIVATIONS
        self.w3 = nn.Parameter(torch.empty(num_experts, d_model, d_ff)) if glu else None
        self.b3 = nn.Parameter(torch.empty(num_experts, d_ff)) if glu and bias else None
        self.reset_parameters()

    @property
    def is_glu(self) -> bool:
        """Whether the experts are GLU FFNs (``w3``, and ``b3`` with biases)."""
        return self.activation in GLU_ACTIVATIONS

    @property
    def num_global_experts(self) -> int:
        """Experts of the layer (a shard of an expert-parallel layer holds fewer, see
        :class:`~moe_mt.moe.expert_parallel.ShardedExpertBank`)."""
        return self.num_experts

    def reset_parameters(self) -> None:
        layers = [(self.w1, self.b1, self.d_model), (self.w2, self.b2, self.d_ff)]
        if self.is_glu:
            layers.append((self.w3, self.b3, self.d_model))
        for w, b, fan_in in layers:
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
        x = x.view(e, slots, -1)
        h = self.act(_bmm(x, self.w1, self.b1))
        if self.is_glu:
            h = h * _bmm(x, self.w3, self.b3)
        return _bmm(self.dropout(h), self.w2, self.b2).reshape(e * slots, -1)

    def _forward_fused(self, x: Tensor, sizes: list[int]) -> Tensor:
        # Autocast does not reach the out= matmuls: cast once here to its dtype, then run off.
        device, dtype = x.device.type, self._compute_dtype(x)
        p = self.dropout.p if self.training else 0.0
        with torch.autocast(device, enabled=False):
            x = x.to(dtype).contiguous()
            weights = [None if t is None else t.to(dtype) for t in self._weights()]
            w1, b1, w2, b2, w3, b3 = weights
            if not (torch.is_grad_enabled() and _needs_grad(x, *weights)):
                return grouped_ffn_inference(x, w1, b1, w2, b2, sizes, self.act, p, w3, b3)
            return GroupedFFN.apply(x, w1, b1, w2, b2, sizes, self.act, self.act_name, p, w3, b3)

    def _weights(self) -> tuple[Tensor | None, ...]:
        """``w1, b1, w2, b2, w3, b3`` (None where the bank has no such tensor)."""
        return self.w1, self.b1, self.w2, self.b2, self.w3, self.b3

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
        w3 = self.w3.unbind(0) if self.is_glu else None
        b3 = self.b3.unbind(0) if self.b3 is not None else [None] * self.num_experts
        outs = []
        rest = x.shape[0] - sum(sizes)  # rows after the last group: not computed
        for e, xe in enumerate(x.split([*sizes, rest])[: self.num_experts]):
            if xe.shape[0] == 0:
                outs.append(x.new_empty(0, self.d_out))
                continue
            h = self.act(_addmm(b1[e], xe, w1[e]))
            if w3 is not None:
                h = h * _addmm(b3[e], xe, w3[e])
            outs.append(_addmm(b2[e], self.dropout(h), w2[e]))
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
            h = self.act(_grouped_linear(x, self.w1, self.b1, offs, row_group))
            if self.is_glu:
                h = h * _grouped_linear(x, self.w3, self.b3, offs, row_group)
            return _grouped_linear(self.dropout(h), self.w2, self.b2, offs, row_group)
