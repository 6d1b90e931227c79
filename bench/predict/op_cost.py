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

Fused SDPA runs as ``trace.FusedAttention`` (``empty`` tensors on meta), so
``AttentionCount`` (a ``TorchFunctionMode`` inside the emulation) adds the
kernels' FLOPs from the shapes: ``4 b h s_q s_k d`` forward (halved when
causal), 2.5x that backward (five matmuls to the forward's two, Dao 2023),
and the forward again for each recomputation under checkpointing.

A micro-step is traced at the cell's real batch and lengths (meta tensors cost
the same at any size) with one and with two blocks; the second block's ops are
replicated to the real depth, as ``blocks`` does for memory.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from bench import models
from bench.dtypes import torch_dtype
from bench.predict import model_trace, trace as tr, trace_cache

_NO_KERNEL = {
    torch.ops.aten.empty,
    torch.ops.aten.empty_strided,
    torch.ops.aten.empty_like,
    torch.ops.aten.detach,
    torch.ops.aten.lift_fresh,
    torch.ops.aten._local_scalar_dense,
    torch.ops.aten.set_,
}

Op = tuple[str, str, str, int, tuple[int, ...]]
"""``(phase, kind, dtype, flops, bytes of each tensor read or written)``: one kernel (``phase``: forward, backward, or
recompute, a checkpointed block's forward re-run during the backward)."""


@dataclass(frozen=True)
class OpCounts:
    """Kernels of one micro-step: how many of each ``Op``, plus view ops per phase."""

    kernels: dict[Op, float]
    views: dict[str, float]
    params: dict[str, float]
    """``elements``, ``trainable`` (elements), ``tensors``, ``trainable_tensors``."""

    def combine(self, other: OpCounts, weight: float) -> OpCounts:
        """``self + weight * other``, op by op (negative counts dropped)."""
        k: dict[Op, float] = dict(self.kernels)
        for op, n in other.kernels.items():
            k[op] = k.get(op, 0.0) + weight * n
        v = {p: self.views.get(p, 0) + weight * other.views.get(p, 0) for p in {*self.views, *other.views}}
        m = {p: self.params[p] + weight * other.params[p] for p in self.params}
        return OpCounts({op: n for op, n in k.items() if n > 1e-9}, {p: max(n, 0.0) for p, n in v.items()}, m)

    def flops(self) -> int:
        return int(sum(op[3] * n for op, n in self.kernels.items()))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _read_bytes(t: torch.Tensor) -> int:
    """Bytes an op reads from ``t``: an expanded (broadcast) view reads its storage once."""
    return min(_nbytes(t), t.untyped_storage().nbytes()) if t.untyped_storage().nbytes() else _nbytes(t)


class OpLog(TorchDispatchMode):
    """Counts the kernels (and view ops) of everything it sees, per phase."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.kernels: collections.Counter = collections.Counter()
        self.views: collections.Counter = collections.Counter()
        self.flops_seen = 0

    def add(self, kind: str, dtype: str, flops: int, sizes: tuple[int, ...], phase: str | None = None) -> None:
        self.kernels[(phase or self.phase, kind, dtype, int(flops), tuple(sorted(sizes)))] += 1
        self.flops_seen += int(flops)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            return getattr(args[0], "_bench_value", False if args[0].dtype == torch.bool else 0)
        if func is torch.ops.aten.is_nonzero.default:
            return bool(getattr(args[0], "_bench_value", False))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        before = {id(t.untyped_storage()) for t in inputs}
        out = func(*args, **kwargs)
        if func.overloadpacket in (torch.ops.aten.all, torch.ops.aten.any) and isinstance(out, torch.Tensor):
            out._bench_value = func.overloadpacket is torch.ops.aten.all
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        mutable = func._schema.is_mutable
        fresh = any(id(t.untyped_storage()) not in before for t in outs)
        if func.overloadpacket in _NO_KERNEL or not (mutable or fresh) or not outs and not mutable:
            self.views["recompute" if self.phase == "backward" and torch.is_grad_enabled() else self.phase] += 1
            return out
        packet = func.overloadpacket
        flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        sizes = (*(_read_bytes(t) for t in inputs), *(_nbytes(t) for t in outs if not mutable))
        dtype = str((inputs or outs)[0].dtype).replace("torch.", "")
        # the engine runs backward functions with grad mode off; a checkpoint's recomputation records a graph
        phase = "recompute" if self.phase == "backward" and torch.is_grad_enabled() else self.phase
        self.add("matmul" if flops else "memory", dtype, flops, sizes, phase)
        return out


class AttentionCount(TorchFunctionMode):
    """Adds the FLOPs of fused SDPA calls (which run as ``empty`` tensors on meta)."""

    def __init__(self, log: OpLog, recompute: bool):
        super().__init__()
        self.log = log
        self.recompute = recompute

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return func(*args, **kwargs)
        seen = self.log.flops_seen
        out = func(*args, **kwargs)
        if self.log.flops_seen != seen:  # the math path: its matmuls were counted
            return out
        q, k, v = args[:3]
        b, h, s_q, d = q.shape
        flops = 2 * b * h * s_q * k.shape[-2] * (d + v.shape[-1])
        if kwargs.get("is_causal") or (len(args) > 5 and args[5]):
            flops //= 2
        dtype = str(out.dtype).replace("torch.", "")  # after autocast's cast
        io = tuple(_nbytes(t) for t in (q, k, v, out))
        self.log.add("attention", dtype, flops, io, "forward")
        self.log.add("attention", dtype, flops * 5 // 2, io + io, "backward")
        if self.recompute:
            self.log.add("attention", dtype, flops, io, "recompute")
        return out


@functools.lru_cache(maxsize=512)
def micro_step(key: model_trace.ShapeKey) -> OpCounts:
    """Kernels of one forward + loss + backward of ``key``'s model at full depth.

    Traced once per model and method at the sentinel batch and lengths of
    ``model_trace`` and rescaled (every FLOP and byte count is a product of the
    batch, the lengths and fixed model dimensions), so cells that differ only
    in batch or sequence length share one trace."""
    spec = models.resolve(key.model)
    target = model_trace.SENTINEL_TARGET if spec.is_encoder_decoder else model_trace.SENTINEL_SEQ
    base = dataclasses.replace(key, batch=model_trace.SENTINEL_BATCH, seq=model_trace.SENTINEL_SEQ, target_seq=target)
    if key != base:
        if not spec.is_encoder_decoder:
            key = dataclasses.replace(key, target_seq=key.seq)
        return rescaled(micro_step(base), key)
    depth = model_trace.layer_count(spec)
    if depth <= 2 or key.layers is not None:
        return _trace(key)
    one = _trace(dataclasses.replace(key, layers=1))
    two = _trace(dataclasses.replace(key, layers=2))
    block = two.combine(one, -1.0)
    return one.combine(block, float(depth - 1))


def rescaled(counts: OpCounts, shape) -> OpCounts:
    """``counts`` traced at the sentinel shape, at ``shape``'s batch, seq and target_seq."""
    out: dict[Op, float] = {}
    for (ph, kind, dtype, flops, sizes), n in counts.kernels.items():
        op = (ph, kind, dtype, model_trace._rescale(flops, shape), tuple(model_trace._rescale(b, shape) for b in sizes))
        out[op] = out.get(op, 0.0) + n  # batch 1 can make two sentinel ops one
    return OpCounts(dict(out), counts.views, counts.params)


def _trace(key: model_trace.ShapeKey) -> OpCounts:
    """``_trace_now``, through the on-disk trace cache (``trace_cache``)."""
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
        trace_cache.store(
            path,
            {
                "kernels": [[list(op), n] for op, n in counts.kernels.items()],
                "views": counts.views,
                "params": counts.params,
            },
        )
    return counts


def _trace_now(key: model_trace.ShapeKey) -> OpCounts:
    model, spec = model_trace.build(key)
    log = OpLog()
    with log:
        inputs = model_trace._inputs(key, spec, 0)
        with contextlib.ExitStack() as stack:
            stack.enter_context(tr.AttentionEmulation())
            if key.autocast:
                stack.enter_context(tr.AutocastEmulation(torch_dtype(key.autocast)))
            stack.enter_context(AttentionCount(log, key.grad_ckpt))
            loss = model(**inputs).loss
        log.phase = "backward"
        loss.backward()
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    counts = {
        "elements": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in trainable),
        "tensors": len(params),
        "trainable_tensors": len(trainable),
    }
    return OpCounts(dict(log.kernels), dict(log.views), {k: float(v) for k, v in counts.items()})
