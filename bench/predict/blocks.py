"""Replicating a transformer block's allocations to the model's real depth.

Tracing 80 blocks of a 70B model costs seconds of Python; the blocks are the
same code on the same shapes. So the model is traced with ``TRACED`` (3)
blocks, with marks where each block's forward starts and ends and where each
block's backward ends (a hook on the gradient of its input). The middle
block's forward and backward segments are then copied ``depth - 3`` times
between the middle and the last block, with fresh keys. A copy's events that
refer to its neighbours' tensors (the input it reads, the gradient it
receives) are remapped by position to the copy's actual neighbours, so frees
happen exactly where they would in the deep model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.predict import events as tr
from bench.recipe import block_of, is_block

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from bench.predict.op_log import OpLog
    from bench.predict.trace import MemoryLog

TRACED = 3


@dataclass
class Marks:
    """Event indices: forward start of each block (+ end of the last); end of
    each block's backward; start of the last block's backward."""

    fwd: list[int | None] = field(default_factory=lambda: [None] * (TRACED + 1))
    bwd_end: list[int | None] = field(default_factory=lambda: [None] * TRACED)
    bwd_start_last: int | None = None


def _block_list(model) -> torch.nn.ModuleList | None:
    """The ``ModuleList`` of the model's blocks (``bench.recipe.block_of``), the
    largest one where there are several (an encoder's and a decoder's)."""
    import torch  # the marks are set while tracing (torch loaded); replication needs no torch

    best = None
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == TRACED and is_block(f"{name}.0"):
            if best is None or sum(p.numel() for p in m.parameters()) > sum(p.numel() for p in best.parameters()):
                best = m
    return best


def attach_marks(model, log: MemoryLog | OpLog, at: Callable[[], int] | None = None):
    """Hooks that fill a ``Marks`` during a traced micro-step: positions in ``log``'s events, or
    what ``at()`` says (``op_log.Recording``: positions in its op sequence)."""
    import torch

    marks, hooks = Marks(), []  # type: Marks, list
    layers = _block_list(model)
    if layers is None:
        return None, hooks
    if at is None:
        events = log.trace.events  # type: ignore[union-attr]
        at = lambda: len(events)  # noqa: E731

    def grad_mark(setter):
        def hook(grad):
            setter(at())

        return hook

    for i, block in enumerate(layers):

        def pre(mod, args, kwargs, i=i):
            if log.phase == "backward" or marks.fwd[i] is not None:
                return
            marks.fwd[i] = at()
            h = args[0] if args else kwargs.get("hidden_states")
            if isinstance(h, torch.Tensor) and h.requires_grad:
                h.register_hook(grad_mark(lambda n, i=i: marks.bwd_end.__setitem__(i, n)))

        hooks.append(block.register_forward_pre_hook(pre, with_kwargs=True))

    def post(mod, args, out):
        if log.phase == "backward" or marks.fwd[TRACED] is not None:
            return
        marks.fwd[TRACED] = at()
        h = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(h, torch.Tensor) and h.requires_grad:
            h.register_hook(grad_mark(lambda n: setattr(marks, "bwd_start_last", n)))

    hooks.append(layers[TRACED - 1].register_forward_hook(post))
    return marks, hooks


def _allocs(events, lo, hi):
    return [(e[1], e[2]) for e in events[lo:hi] if e[0] == tr.ALLOC]


def replicate(small, depth: int):
    """A ``TrainTrace`` of ``depth`` blocks from one of ``TRACED`` blocks, or None."""
    m = small.marks
    if m is None or None in m.fwd or m.bwd_start_last is None or None in m.bwd_end[1:]:
        return None
    ev = small.trace.events
    F = [(m.fwd[i], m.fwd[i + 1]) for i in range(TRACED)]
    B = {2: (m.bwd_start_last, m.bwd_end[2]), 1: (m.bwd_end[2], m.bwd_end[1])}
    fa = [_allocs(ev, *F[i]) for i in range(TRACED)]
    ba = {i: _allocs(ev, *B[i]) for i in (1, 2)}
    if not (
        len(fa[0]) == len(fa[1]) == len(fa[2])
        and [n for _, n in fa[1]] == [n for _, n in fa[2]]
        and [n for _, n in ba[1]] == [n for _, n in ba[2]]
    ):
        return None
    pos = {}  # template key -> ("F"|"B", template block, position)
    for i in range(TRACED):
        pos.update({k: ("F", i, p) for p, (k, _) in enumerate(fa[i])})
    for i in (1, 2):
        pos.update({k: ("B", i, p) for p, (k, _) in enumerate(ba[i])})
    copies = depth - TRACED
    chain = [0, 1, *[("c", j) for j in range(copies)], 2]
    template = {0: 0, 1: 1, 2: 2}
    keys = {("F", b): [k for k, _ in fa[b]] for b in range(TRACED)}
    keys.update({("B", b): [k for k, _ in ba[b]] for b in (1, 2)})
    next_key = [max((e[1] for e in ev), default=0) + 1]
    out: list[tuple[int, int, int, str]] = []
    freed: set[int] = set()

    def emit(lo, hi, block):
        tb = template.get(block, 1)
        idx = chain.index(block)
        own_f, own_b = keys.setdefault(("F", block), []), keys.setdefault(("B", block), [])
        is_copy = block not in template
        for kind, k, n, tag in ev[lo:hi]:
            where = pos.get(k)
            if where is None:  # a tensor of the embeddings, head or loss
                if kind == tr.FREE and is_copy:
                    continue
                out.append((kind, k, n, tag))
                continue
            seg, b, p = where
            rel = b - tb
            if is_copy and rel == 0 and kind == tr.ALLOC:
                new = next_key[0]
                next_key[0] += 1
                (own_f if seg == "F" else own_b).append(new)
                out.append((kind, new, n, tag))
                continue
            if abs(rel) > 1:
                out.append((kind, k, n, tag))
                continue
            target = chain[idx + rel]
            k = keys[(seg, target)][p]
            if kind == tr.FREE:
                freed.add(k)
            out.append((kind, k, n, tag))

    def plain(lo, hi):
        """Events outside the blocks; a free of a middle-block tensor frees its copies' too."""
        for e in ev[lo:hi]:
            out.append(e)
            where = pos.get(e[1])
            if e[0] == tr.FREE and where is not None and where[1] == 1:
                seg, _, p = where
                for j in range(copies):
                    k = keys[(seg, ("c", j))][p]
                    if k not in freed:
                        freed.add(k)
                        out.append((tr.FREE, k, e[2], e[3]))

    out += ev[: F[0][0]]
    emit(*F[0], 0)
    emit(*F[1], 1)
    for j in range(copies):
        emit(*F[1], ("c", j))
    emit(*F[2], 2)
    forward_end = small.trace.forward_end + copies * (F[1][1] - F[1][0])
    plain(F[2][1], B[2][0])
    emit(*B[2], 2)
    for j in reversed(range(copies)):
        emit(*B[1], ("c", j))
    emit(*B[1], 1)
    plain(B[1][1], len(ev))
    trace = tr.Trace(events=out, grad_keys=set(), forward_end=forward_end)
    params = _replicate_params(small.params, copies)
    return dataclasses.replace(small, params=params, trace=trace, layers=depth, marks=None)


def _replicate_params(params, copies: int):
    """Block 1's parameters repeated ``copies`` times right after it."""

    def index(name):
        block = block_of(name)
        return int(block.rsplit(".", 1)[-1]) if block else None

    out = []
    mid = [p for p in params if index(p.name) == 1]
    for p in params:
        out.append(p)
        if mid and p is mid[-1]:
            for j in range(copies):
                out += [dataclasses.replace(q, name=q.name.replace(".1.", f".1c{j}.", 1)) for q in mid]
    return tuple(out)
