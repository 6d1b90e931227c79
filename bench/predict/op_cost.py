"""The work of one micro-step, op by op: FLOPs, bytes moved and kernel launches.

The step-time model (``step_time``) needs what the GPU executes, not what it
allocates. ``OpLog`` (a ``TorchDispatchMode``, so it sees the ops autograd
runs, forward, backward and checkpoint recomputation alike) records for each
aten op that launches a kernel:

- its FLOPs, from ``torch.utils.flop_counter``'s formulas (matmuls,
  convolutions, the attention kernels) -- zero for everything else;
- the bytes it moves: every tensor argument read plus every output written
  (views count their own elements, not their storage's);
- its kind: ``matmul`` (an op with a FLOP formula), ``memory`` (any other
  kernel), and its compute dtype.

Views, ``empty`` and metadata ops launch no kernel and are counted apart
(``views``): they cost dispatcher time on the host only.

Fused SDPA runs as ``attention``'s stand-ins (``empty`` tensors on meta), so
``AttentionCount`` (a ``TorchFunctionMode`` inside the emulation) adds the
kernels' FLOPs from the shapes: ``4 b h s_q s_k d`` forward (halved when
causal), 2.5x that backward (five matmuls to the forward's two, Dao 2023),
and the forward again for each recomputation under checkpointing.

A micro-step is traced at the cell's real batch and lengths (meta tensors cost
the same at any size) with one and with two blocks; the second block's ops are
replicated to the real depth, as ``blocks`` does for memory. The counting
itself (``op_log``, torch) runs only when the trace cache misses, and then
inside the memory trace's pass (``op_log.Recording``: the memory trace of
``blocks.TRACED`` blocks gives the counts of one and two), which ``record``
keeps here and in the cache; a separate pass counts only what that one did not.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass

from bench import models
from bench.predict import shapes, trace_cache

Op = tuple[str, str, str, int, tuple[int, ...]]
"""``(phase, kind, dtype, flops, bytes of each tensor read or written)``: one kernel (``phase``: forward, backward, or
recompute, a checkpointed block's forward re-run during the backward)."""


@dataclass(frozen=True)
class OpCounts:
    """Kernels of one micro-step: how many of each ``Op``, plus view ops per phase."""

    kernels: dict[Op, float]
    views: dict[str, float]
    params: dict[str, float]
    """``elements``, ``trainable`` (elements), ``tensors``, ``trainable_tensors``, ``modules`` (every
    ``nn.Module`` of the model, the root included: what DeepSpeed ZeRO-3 hooks)."""

    def combine(self, other: OpCounts, weight: float) -> OpCounts:
        """``self + weight * other``, op by op (negative counts dropped)."""
        k: dict[Op, float] = dict(self.kernels)
        for op, n in other.kernels.items():
            k[op] = k.get(op, 0.0) + weight * n
        v = {p: self.views.get(p, 0) + weight * other.views.get(p, 0) for p in {*self.views, *other.views}}
        m = {p: self.params[p] + weight * other.params.get(p, 0.0) for p in self.params}
        return OpCounts({op: n for op, n in k.items() if n > 1e-9}, {p: max(n, 0.0) for p, n in v.items()}, m)

    def flops(self) -> int:
        return int(sum(op[3] * n for op, n in self.kernels.items()))


@functools.lru_cache(maxsize=512)
def micro_step(key: shapes.ShapeKey) -> OpCounts:
    """Kernels of one forward + loss + backward of ``key``'s model at full depth.

    Traced once per model and method at the sentinel batch and lengths of
    ``shapes`` and rescaled (every FLOP and byte count is a product of the
    batch, the lengths and fixed model dimensions), so cells that differ only
    in batch or sequence length share one trace."""
    spec = models.resolve(key.model)
    base = shapes.sentinel(key)
    if key != base:
        if not spec.is_encoder_decoder:
            key = dataclasses.replace(key, target_seq=key.seq)
        return rescaled(micro_step(base), key)
    depth = shapes.layer_count(spec)
    wanted = [key] if depth <= 2 or key.layers is not None else [dataclasses.replace(key, layers=n) for n in (1, 2)]
    if key.layers is None and not spec.is_encoder_decoder and not key.freeze and not all(map(_known, wanted)):
        try:  # the memory trace counts them in its pass (a prediction of the cell needs it anyway)
            shapes.trace_train(key)
        except Exception:  # a shortcut only: the separate pass below says what is wrong, if anything is
            pass
    if len(wanted) == 1:
        return _trace(key)
    one, two = map(_trace, wanted)
    block = two.combine(one, -1.0)
    return one.combine(block, float(depth - 1))


def rescaled(counts: OpCounts, shape) -> OpCounts:
    """``counts`` traced at the sentinel shape, at ``shape``'s batch, seq and target_seq."""
    out: dict[Op, float] = {}
    for (ph, kind, dtype, flops, sizes), n in counts.kernels.items():
        op = (ph, kind, dtype, shapes.rescale(flops, shape), tuple(shapes.rescale(b, shape) for b in sizes))
        out[op] = out.get(op, 0.0) + n  # batch 1 can make two sentinel ops one
    return OpCounts(dict(out), counts.views, counts.params)


_RECORDED: dict[shapes.ShapeKey, OpCounts] = {}
"""Counts taken by a memory trace's pass in this process (``record``), with or without the disk cache."""


def record(counts: dict[shapes.ShapeKey, OpCounts]) -> None:
    """Keep counts taken in a memory trace's pass (``op_log.Recording``), here and in the cache."""
    for key, c in counts.items():
        _RECORDED[key] = c
        while len(_RECORDED) > 1024:  # a long-lived process (bench serve) keeps the newest
            del _RECORDED[next(iter(_RECORDED))]
        path = trace_cache._path(("ops", key))
        if path is not None:
            _store(path, c)


def _known(key: shapes.ShapeKey) -> bool:
    path = trace_cache._path(("ops", key))
    return key in _RECORDED or (path is not None and path.exists())


def _trace(key: shapes.ShapeKey) -> OpCounts:
    """``_trace_now``, through the counts of a memory trace's pass and the on-disk trace cache (``trace_cache``)."""
    if key in _RECORDED:
        return _RECORDED[key]
    path = trace_cache._path(("ops", key))
    if path is not None and path.exists():
        try:
            d = json.loads(path.read_text())
            kernels = {(*op[:4], tuple(op[4])): n for op, n in d["kernels"]}
            return OpCounts(kernels, d["views"], d["params"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable entry: trace again and overwrite it
    counts = _trace_now(key)
    if path is not None:
        _store(path, counts)
    return counts


def _store(path, counts: OpCounts) -> None:
    trace_cache.store(
        path,
        {
            "kernels": [[list(op), n] for op, n in counts.kernels.items()],
            "views": counts.views,
            "params": counts.params,
        },
    )


def _trace_now(key: shapes.ShapeKey) -> OpCounts:
    """The kernels of ``key``'s micro-step, counted now on the real model (``op_log``)."""
    from bench.predict import op_log  # torch and transformers: only on a cache miss

    return op_log.trace_now(key)
