"""Context variables set for the duration of a block: how a model hands per-call state (padding,
batch scope, THOR's sentence keys, observers) to the layers and routers it calls, without
threading arguments through fairseq's layer signatures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def scoped_value(var: ContextVar[T], value: T) -> Iterator[None]:
    """``var`` holds ``value`` inside the block and its earlier value again after it, also when
    the block raises."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)
