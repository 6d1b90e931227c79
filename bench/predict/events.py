"""The allocation log of a traced step, as plain data (no torch).

``trace`` records it from the real model on meta tensors; everything after
that (the on-disk cache, depth replication, the allocator replay, the
strategies' programs) reads only these types, so a prediction whose trace is
cached never imports torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.predict.blocks import Marks

ALLOC, FREE = 1, -1


@dataclass
class Trace:
    """Allocation events of one traced region, in order.

    ``events`` holds ``(kind, key, nbytes, tag)`` with kind ``ALLOC``/``FREE``;
    ``tag`` is the phase that allocated it (``forward``, ``logits``,
    ``backward``, ``grad`` for tensors that end up as ``param.grad``).
    """

    events: list[tuple[int, int, int, str]] = field(default_factory=list)
    grad_keys: set[int] = field(default_factory=set)
    forward_end: int = 0
    """Index of the first event after the forward (and loss) returned."""


@dataclass(frozen=True)
class Param:
    """One parameter of the traced model: what is static across the step."""

    name: str
    numel: int
    nbytes: int
    trainable: bool
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class TrainTrace:
    """A traced training micro-step: the parameters, and the events of what moves."""

    params: tuple[Param, ...]
    buffers_bytes: int
    input_bytes: int
    trace: Trace
    layers: int
    marks: Marks | None = None
    """Where each block's events are (depth replication)."""
