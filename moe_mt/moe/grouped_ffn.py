"""A fused autograd function for E feed-forward experts over contiguous row groups.

``y[rows_e] = act(x[rows_e] @ w1[e] + b1[e]) * mask @ w2[e] + b2[e]`` for every expert ``e``; with
``w3`` (a GLU bank, Shazeer 2020 eq. 6: FFN_SwiGLU / FFN_GEGLU, with eq. 5's biases when given)
the hidden activations are ``act(x @ w1[e] + b1[e]) * (x @ w3[e] + b3[e]) * mask``.
Plain autograd over a per-expert loop pays twice for the weight gradients: each expert's grad is
a separate tensor, then ``unbind``'s backward stacks them into ``[e, d, f]`` (for E = 32 at
d = 512, f = 2048, two 128 MB copies per step), and the per-expert outputs are concatenated.
Here every matmul writes straight into its slice of one preallocated output or gradient, and
the work runs one expert at a time (fc1, activation, fc2 in forward; the same chain backwards),
so that an expert's ``[rows, f]`` hidden tensors stay in cache. Only the pre-activations (GLU:
and the up projections), and the dropout mask, are kept for backward; activations are
recomputed per expert, which is cheaper than allocating (page-faulting) and filling a second
``[m, f]`` buffer.

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


def _affine(x: Tensor, w: Tensor, b: Tensor | None, e: int, out: Tensor | None = None) -> Tensor:
    """``x @ w[e] + b[e]`` (no bias when ``b`` is None), into ``out`` where given."""
    if b is None:
        return torch.mm(x, w[e], out=out)
    return torch.addmm(b[e], x, w[e], out=out)


def _hidden(a: Tensor, u: Tensor | None, mask: Tensor | None, rows: slice) -> Tensor:
    """The hidden activations of ``rows`` from their activated gates ``a`` (in place): times
    the up projections ``u[rows]`` (GLU) and the dropout mask's rows, where given."""
    if u is not None:
        a.mul_(u[rows])
    return a if mask is None else a.mul_(mask[rows])


def _row_slices(sizes: list[int]) -> list[tuple[int, slice]]:
    """``(expert, rows)`` for every non-empty group."""
    out, start = [], 0
    for e, n in enumerate(sizes):
        if n:
            out.append((e, slice(start, start + n)))
        start += n
    return out


def grouped_ffn_inference(x, w1, b1, w2, b2, sizes, act, dropout_p=0.0, w3=None, b3=None):
    """Forward without autograd: ``fc1 -> act (GLU: times x @ w3 + b3) -> fc2`` one expert at a
    time.

    The hidden activations of one expert (``rows x f``) stay in cache between the two matmuls
    and are never materialised for all ``m`` rows at once (no large fresh buffers, whose page
    faults cost about as much as a matmul pass here).
    """
    y = x.new_empty(x.shape[0], w2.shape[2])
    for e, rows in _row_slices(sizes):
        h = act(_affine(x[rows], w1, b1, e))
        if w3 is not None:
            h.mul_(_affine(x[rows], w3, b3, e))
        if dropout_p > 0:
            h = torch.nn.functional.dropout(h, dropout_p)
        _affine(h, w2, b2, e, out=y[rows])
    return y


class GroupedFFN(torch.autograd.Function):
    """``forward(x, w1, b1, w2, b2, sizes, act, act_name, dropout_p, w3, b3)`` -> ``[m, o]``.

    ``x`` ``[m, d]`` grouped by expert (``sizes`` rows each), ``w1`` ``[e, d, f]``, ``b1``
    ``[e, f]`` or None, ``w2`` ``[e, f, o]``, ``b2`` ``[e, o]`` or None; ``w3`` ``[e, d, f]``
    and ``b3`` ``[e, f]``: a GLU bank's up projection (``act`` acts on the gate ``x @ w1 + b1``
    alone), or None. ``act_name`` is ``act``'s key in :data:`ACTIVATION_BACKWARD`.
    ``dropout_p > 0`` drops hidden units (inverted dropout, mask drawn from torch's global
    generator).
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, sizes, act, act_name, dropout_p, w3, b3):
        m, f = x.shape[0], w1.shape[2]
        h = x.new_empty(m, f)  # pre-activations, saved; activations are recomputed per expert
        u = None if w3 is None else x.new_empty(m, f)  # GLU's up projections, saved
        mask = None
        if dropout_p > 0:
            mask = torch.empty_like(h).bernoulli_(1.0 - dropout_p).div_(1.0 - dropout_p)
        y = x.new_empty(m, w2.shape[2])
        for e, rows in _row_slices(sizes):
            _affine(x[rows], w1, b1, e, out=h[rows])
            if u is not None:
                _affine(x[rows], w3, b3, e, out=u[rows])
            a = _hidden(act(h[rows]), u, mask, rows)  # [rows, f], still in cache
            _affine(a, w2, b2, e, out=y[rows])
        ctx.save_for_backward(x, w1, w2, h, mask, w3, u)
        ctx.sizes, ctx.act, ctx.act_name = sizes, act, act_name
        ctx.has_b1, ctx.has_b2, ctx.has_b3 = b1 is not None, b2 is not None, b3 is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, w1, w2, h, mask, w3, u = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        need_w3, need_b3 = ctx.needs_input_grad[9:11]
        grad_x = x.new_empty(x.shape) if need_x else None
        grad_w1 = _empty_grad(w1, ctx.sizes) if need_w1 else None
        grad_w2 = _empty_grad(w2, ctx.sizes) if need_w2 else None
        grad_w3 = _empty_grad(w3, ctx.sizes) if u is not None and need_w3 else None
        grad_b1 = w1.new_zeros(w1.shape[0], w1.shape[2]) if ctx.has_b1 and need_b1 else None
        grad_b2 = w2.new_zeros(w2.shape[0], w2.shape[2]) if ctx.has_b2 and need_b2 else None
        grad_b3 = w1.new_zeros(w1.shape[0], w1.shape[2]) if ctx.has_b3 and need_b3 else None
        act_backward = ACTIVATION_BACKWARD[ctx.act_name]
        need_hidden = need_x or need_w1 or grad_b1 is not None
        need_hidden = need_hidden or grad_w3 is not None or grad_b3 is not None
        # One expert at a time: its [rows, f] hidden gradients stay in cache and no [m, f]
        # buffer is allocated.
        for e, rows in _row_slices(ctx.sizes):
            gy = grad_y[rows]
            gate = None
            if u is not None and (grad_w2 is not None or need_hidden):
                gate = ctx.act(h[rows])  # GLU: act(x w1 + b1), used twice
            if grad_w2 is not None:
                a = ctx.act(h[rows]) if gate is None else gate * u[rows]
                torch.mm(_hidden(a, None, mask, rows).t(), gy, out=grad_w2[e])
            if grad_b2 is not None:
                torch.sum(gy, 0, out=grad_b2[e])
            if not need_hidden:
                continue
            grad_a = torch.mm(gy, w2[e].t())
            if mask is not None:
                grad_a.mul_(mask[rows])
            grad_u = None
            if u is not None:  # d(act(g) * u): act(g) du + u act'(g) dg
                grad_u = gate.mul_(grad_a)
                grad_a.mul_(u[rows])
            grad_h = act_backward(grad_a, h[rows])
            if grad_x is not None:
                torch.mm(grad_h, w1[e].t(), out=grad_x[rows])
                if grad_u is not None:
                    grad_x[rows].addmm_(grad_u, w3[e].t())
            if grad_w1 is not None:
                torch.mm(x[rows].t(), grad_h, out=grad_w1[e])
            if grad_b1 is not None:
                torch.sum(grad_h, 0, out=grad_b1[e])
            if grad_w3 is not None:
                torch.mm(x[rows].t(), grad_u, out=grad_w3[e])
            if grad_b3 is not None:
                torch.sum(grad_u, 0, out=grad_b3[e])
        # None for sizes, act, act_name, dropout_p.
        first = (grad_x, grad_w1, grad_b1, grad_w2, grad_b2)
        return (*first, None, None, None, None, grad_w3, grad_b3)
