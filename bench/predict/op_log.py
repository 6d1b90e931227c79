"""Counting the kernels of a micro-step on meta tensors (the torch side of ``op_cost``).

``OpLog`` (a ``TorchDispatchMode``, so it sees the ops autograd runs, forward,
backward and checkpoint recomputation alike) records one ``op_cost.Op`` per
aten op that launches a kernel; ``AttentionCount`` adds the FLOPs of fused
SDPA, which runs as ``empty`` tensors on meta (see ``op_cost``).
"""

from __future__ import annotations

import collections
import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from bench.dtypes import torch_dtype
from bench.predict import attention, model_trace, trace as tr
from bench.predict.op_cost import OpCounts
from bench.predict.shapes import ShapeKey

_NO_KERNEL = {
    torch.ops.aten.empty,
    torch.ops.aten.empty_strided,
    torch.ops.aten.empty_like,
    torch.ops.aten.detach,
    torch.ops.aten.lift_fresh,
    torch.ops.aten._local_scalar_dense,
    torch.ops.aten.set_,
}


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
            if attention.inside():  # a fused kernel's own allocations and views
                return out
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


def trace_now(key: ShapeKey) -> OpCounts:
    """The kernels of one forward + loss + backward of ``key``, counted on the real model."""
    model, spec = model_trace.build(key)
    log = OpLog()
    with log:
        inputs = model_trace._inputs(key, spec, 0)
        with contextlib.ExitStack() as stack:
            stack.enter_context(tr.AttentionEmulation(key.sdpa_kernels))
            stack.enter_context(model_trace.all_labelled())
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
        "modules": sum(1 for _ in model.modules()),
    }
    return OpCounts(dict(log.kernels), dict(log.views), {k: float(v) for k, v in counts.items()})
