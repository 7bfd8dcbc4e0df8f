"""A fused autograd function for E feed-forward experts over contiguous row groups.

``y[rows_e] = act(x[rows_e] @ w1[e] + b1[e]) * mask @ w2[e] + b2[e]`` for every expert ``e``.
Plain autograd over a per-expert loop pays twice for the weight gradients: each expert's grad is
a separate tensor, then ``unbind``'s backward stacks them into ``[e, d, f]`` (for E = 32 at
d = 512, f = 2048, two 128 MB copies per step), and the per-expert outputs are concatenated.
Here every matmul writes straight into its slice of one preallocated output or gradient, and
the work runs one expert at a time (fc1, activation, fc2 in forward; the same chain backwards),
so that an expert's ``[rows, f]`` hidden tensors stay in cache. Only the pre-activations (and
the dropout mask) are kept for backward; activations are recomputed per expert, which is cheaper
than allocating (page-faulting) and filling a second ``[m, f]`` buffer.

Axes: ``m`` grouped rows, ``d`` input width, ``f`` hidden width, ``o`` output width, ``e`` experts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# d act(h) / d h applied to an incoming gradient: (grad, h) -> grad_h.
ACTIVATION_BACKWARD: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "relu": lambda g, h: torch.ops.aten.threshold_backward(g, h, 0),
    "gelu": lambda g, h: torch.ops.aten.gelu_backward(g, h),
    "gelu_tanh": lambda g, h: torch.ops.aten.gelu_backward(g, h, approximate="tanh"),
    "silu": lambda g, h: torch.ops.aten.silu_backward(g, h),
}


def _empty_grad(w: Tensor, sizes: list[int]) -> Tensor:
    """Uninitialised ``[e, ...]`` gradient, zeroed only for experts without rows."""
    grad = torch.empty_like(w)
    for e, n in enumerate(sizes):
        if n == 0:
            grad[e].zero_()
    return grad


def _activation(act, h: Tensor, mask: Tensor | None, rows: slice) -> Tensor:
    """``act(h[rows])``, times the dropout mask's rows if any."""
    a = act(h[rows])
    return a if mask is None else a.mul_(mask[rows])


def _row_slices(sizes: list[int]) -> list[tuple[int, slice]]:
    """``(expert, rows)`` for every non-empty group."""
    out, start = [], 0
    for e, n in enumerate(sizes):
        if n:
            out.append((e, slice(start, start + n)))
        start += n
    return out


def grouped_ffn_inference(x, w1, b1, w2, b2, sizes, act, dropout_p=0.0):
    """Forward without autograd: ``fc1 -> act -> fc2`` one expert at a time.

    The hidden activations of one expert (``rows x f``) stay in cache between the two matmuls
    and are never materialised for all ``m`` rows at once (no large fresh buffers, whose page
    faults cost about as much as a matmul pass here).
    """
    y = x.new_empty(x.shape[0], w2.shape[2])
    for e, rows in _row_slices(sizes):
        h = torch.mm(x[rows], w1[e]) if b1 is None else torch.addmm(b1[e], x[rows], w1[e])
        h = act(h)
        if dropout_p > 0:
            h = torch.nn.functional.dropout(h, dropout_p)
        if b2 is None:
            torch.mm(h, w2[e], out=y[rows])
        else:
            torch.addmm(b2[e], h, w2[e], out=y[rows])
    return y


class GroupedFFN(torch.autograd.Function):
    """``forward(x, w1, b1, w2, b2, sizes, act, act_name, dropout_p)`` -> ``[m, o]``.

    ``x`` ``[m, d]`` grouped by expert (``sizes`` rows each), ``w1`` ``[e, d, f]``, ``b1``
    ``[e, f]`` or None, ``w2`` ``[e, f, o]``, ``b2`` ``[e, o]`` or None. ``dropout_p > 0`` drops
    hidden units (inverted dropout, mask drawn from torch's global generator).
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, sizes, act, act_name, dropout_p):
        m, f = x.shape[0], w1.shape[2]
        h = x.new_empty(m, f)  # pre-activations, saved; activations are recomputed per expert
        mask = None
        if dropout_p > 0:
            mask = torch.empty_like(h).bernoulli_(1.0 - dropout_p).div_(1.0 - dropout_p)
        y = x.new_empty(m, w2.shape[2])
        for e, rows in _row_slices(sizes):
            if b1 is None:
                torch.mm(x[rows], w1[e], out=h[rows])
            else:
                torch.addmm(b1[e], x[rows], w1[e], out=h[rows])
            a = _activation(act, h, mask, rows)  # [rows, f], still in cache
            if b2 is None:
                torch.mm(a, w2[e], out=y[rows])
            else:
                torch.addmm(b2[e], a, w2[e], out=y[rows])
        ctx.save_for_backward(x, w1, w2, h, mask)
        ctx.sizes, ctx.act, ctx.act_name = sizes, act, act_name
        ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, w1, w2, h, mask = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        grad_x = x.new_empty(x.shape) if need_x else None
        grad_w1 = _empty_grad(w1, ctx.sizes) if need_w1 else None
        grad_w2 = _empty_grad(w2, ctx.sizes) if need_w2 else None
        grad_b1 = w1.new_zeros(w1.shape[0], w1.shape[2]) if ctx.has_b1 and need_b1 else None
        grad_b2 = w2.new_zeros(w2.shape[0], w2.shape[2]) if ctx.has_b2 and need_b2 else None
        act_backward = ACTIVATION_BACKWARD[ctx.act_name]
        # One expert at a time: its [rows, f] hidden gradients stay in cache and no [m, f]
        # buffer is allocated.
        for e, rows in _row_slices(ctx.sizes):
            gy = grad_y[rows]
            if grad_w2 is not None:
                torch.mm(_activation(ctx.act, h, mask, rows).t(), gy, out=grad_w2[e])
            if grad_b2 is not None:
                torch.sum(gy, 0, out=grad_b2[e])
            if not (need_x or need_w1 or grad_b1 is not None):
                continue
            grad_a = torch.mm(gy, w2[e].t())
            if mask is not None:
                grad_a.mul_(mask[rows])
            grad_h = act_backward(grad_a, h[rows])
            if grad_x is not None:
                torch.mm(grad_h, w1[e].t(), out=grad_x[rows])
            if grad_w1 is not None:
                torch.mm(x[rows].t(), grad_h, out=grad_w1[e])
            if grad_b1 is not None:
                torch.sum(grad_h, 0, out=grad_b1[e])
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None, None, None, None
