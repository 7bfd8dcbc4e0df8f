"""Where this process's tokens sit in the layer's global batch, for draws and loss sums.

One process: the layer's batch is its input, nothing is set, every function here is the identity.
Expert parallelism (:mod:`moe_mt.moe.expert_parallel`): the layer's batch is the concatenation,
in rank order, of the flat tokens of the ``P`` ranks of an expert-parallel group. The layer then
scopes a :class:`BatchScope` around its router call, and

- random draws (jitter noise, THOR's experts) are drawn for the whole global batch, from a
  generator in the same state on every rank, and each rank takes its own rows
  (:func:`draw_window`), so the draws are those of one process on the concatenated batch;
- token means in the auxiliary losses sum numerators and denominators over the group
  (:func:`global_sum`, differentiable), so the losses are the one-process values.

Axes: ``t`` this rank's tokens, ``T`` the global batch's tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from torch import Tensor

from moe_mt.moe.scoped import scoped_value


@dataclass(frozen=True)
class BatchScope:
    """This rank's window into the global batch.

    Attributes:
        token_offset: flat index of this rank's first token in the global batch.
        total_tokens: ``T``, tokens of the global batch (pads included).
        sentence_offset: global index of this rank's sentence 0.
        total_sentences: sentences of the global batch.
        sum_fn: differentiable sum of a tensor over the group (every rank gets the total).
    """

    token_offset: int
    total_tokens: int
    sentence_offset: int
    total_sentences: int
    sum_fn: Callable[[Tensor], Tensor]


_SCOPE: ContextVar[BatchScope | None] = ContextVar("moemt_moe_batch_scope", default=None)
# Blocks open with a scope, in any thread. torch.compile cannot trace ContextVar.get, and in one
# process no scope is ever open: the layers then read only this plain global.
_OPEN_SCOPES = 0


@contextlib.contextmanager
def batch_scope(scope: BatchScope | None) -> Iterator[None]:
    """Make ``scope`` visible to the routers and losses run inside the block."""
    global _OPEN_SCOPES
    opened = scope is not None
    _OPEN_SCOPES += opened
    try:
        with scoped_value(_SCOPE, scope):
            yield
    finally:
        _OPEN_SCOPES -= opened


def current_scope() -> BatchScope | None:
    return _SCOPE.get() if _OPEN_SCOPES else None


def global_sum(x: Tensor) -> Tensor:
    """``x`` summed over the global batch's ranks (``x`` itself in one process)."""
    scope = current_scope()
    return x if scope is None else scope.sum_fn(x)


def draw_window(t: int) -> tuple[int, int]:
    """``(offset, total)``: draw ``total`` rows, keep ``[offset, offset + t)``."""
    scope = current_scope()
    return (0, t) if scope is None else (scope.token_offset, scope.total_tokens)


def sentence_window(num_local: int) -> tuple[int, int]:
    """``(offset, total)`` of sentences, as :func:`draw_window` for tokens."""
    scope = current_scope()
    return (0, num_local) if scope is None else (scope.sentence_offset, scope.total_sentences)
