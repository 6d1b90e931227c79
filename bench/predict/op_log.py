"""Counting the kernels of a micro-step on meta tensors (the torch side of ``op_cost``).

``OpLog`` (a ``TorchDispatchMode``, so it sees the ops autograd runs, forward,
backward and checkpoint recomputation alike) records one ``op_cost.Op`` per
aten op that launches a kernel; ``AttentionCount`` adds the FLOPs of fused
SDPA, which runs as ``empty`` tensors on meta (see ``op_cost``).

``Recording`` counts the kernels inside the memory trace's own pass
(``model_trace.trace_now``), so a cold prediction runs the model once for
both: the counts of the traced key, and, from a trace of ``blocks.TRACED``
blocks, those of the same model with one and with two blocks (what
``op_cost.micro_step`` replicates to the real depth). An N-block model runs
the ops of the blocks before and after them plus each block's own forward
and backward; cutting the last blocks' spans out of the op sequence (the
marks of ``blocks.attach_marks``, placed in the op sequence) leaves, op for
op and in order, the sequence of the shallower model. ``trace_now`` here is
the separate pass: a cache hit on the memory trace whose op counts are not
cached, and the models the cut does not describe (see ``Recording``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from bench.dtypes import torch_dtype
from bench.predict import attention, blocks, model_trace, trace as tr
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
    stored = t.untyped_storage().nbytes()
    return min(_nbytes(t), stored) if stored else _nbytes(t)


_FUNCS: dict = {}
"""Per aten overload: (packet, mutable, launches no kernel, FLOP formula or None)."""


def _func(func) -> tuple:
    info = _FUNCS.get(func)
    if info is None:
        packet = func.overloadpacket
        info = _FUNCS[func] = (packet, func._schema.is_mutable, packet in _NO_KERNEL, flop_registry.get(packet))
    return info


_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default)
"""Data-dependent reads, answered from ``trace.mark_truth``'s tags instead of run."""


def _read(func, t: torch.Tensor):
    if func is torch.ops.aten.is_nonzero.default:
        return bool(getattr(t, "_bench_value", False))
    return tr.scalar_of(t)


class OpLog(TorchDispatchMode):
    """Counts the kernels (and view ops) of everything it sees, per phase."""

    def __init__(self, sequence: bool = False, tolerant: bool = False) -> None:
        super().__init__()
        self.tolerant = tolerant
        """A counting error sets ``failed`` instead of raising (``Recording``: the memory trace it rides on goes on)."""
        self.failed = False
        self.phase = "forward"
        self.kernels: collections.Counter = collections.Counter()
        self.views: collections.Counter = collections.Counter()
        self.flops_seen = 0
        self.sequence: list[tuple[bool, object]] | None = [] if sequence else None
        """With ``sequence``: every count in order, ``(True, op)`` a kernel, ``(False, phase)`` a view op."""

    def add(self, kind: str, dtype: str, flops: int, sizes: tuple[int, ...], phase: str | None = None) -> None:
        op = (phase or self.phase, kind, dtype, int(flops), tuple(sorted(sizes)))
        self.kernels[op] += 1
        self.flops_seen += int(flops)
        if self.sequence is not None:
            self.sequence.append((True, op))

    def view(self, phase: str) -> None:
        self.views[phase] += 1
        if self.sequence is not None:
            self.sequence.append((False, phase))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _READS:
            return _read(func, args[0])
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        before = {id(t.untyped_storage()) for t in inputs}
        out = func(*args, **kwargs)
        tr.mark_truth(func, out)
        self.guarded(self._count, func, args, kwargs, inputs, before, out)
        return out

    def guarded(self, count, *args) -> None:
        """``count(*args)``; when ``tolerant``, an error sets ``failed`` (and later counts are skipped)
        instead of raising: the pass it rides on (a memory trace) goes on, its counts are dropped."""
        if not self.tolerant:
            count(*args)
        elif not self.failed:
            try:
                count(*args)
            except Exception:
                self.failed = True

    def _count(self, func, args, kwargs, inputs, before, out, outs=None) -> None:
        if outs is None:
            outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        _, mutable, no_kernel, formula = _func(func)
        fresh = any(id(t.untyped_storage()) not in before for t in outs)
        if no_kernel or not (mutable or fresh) or not outs and not mutable:
            if attention.inside():  # a fused kernel's own allocations and views
                return
            self.view("recompute" if self.phase == "backward" and torch.is_grad_enabled() else self.phase)
            return
        flops = formula(*args, **kwargs, out_val=out) if formula is not None else 0
        sizes = (*(_read_bytes(t) for t in inputs), *(_nbytes(t) for t in outs if not mutable))
        dtype = str((inputs or outs)[0].dtype).replace("torch.", "")
        # the engine runs backward functions with grad mode off; a checkpoint's recomputation records a graph
        phase = "recompute" if self.phase == "backward" and torch.is_grad_enabled() else self.phase
        self.add("matmul" if flops else "memory", dtype, flops, sizes, phase)


class AttentionCount(TorchFunctionMode):
    """Adds the FLOPs of fused SDPA calls (which run as ``empty`` tensors on meta).

    With ``wrapped`` (the function mode it would sit directly above), it is that mode too:
    each call goes to ``wrapped``'s handler, as it would one mode down, without the
    dispatch of a mode of its own (``Recording``)."""

    def __init__(self, log: OpLog, recompute: bool, wrapped: TorchFunctionMode | None = None):
        super().__init__()
        self.log = log
        self.recompute = recompute
        self.wrapped = wrapped

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.wrapped is not None:
            run = lambda: self.wrapped.__torch_function__(func, types, args, kwargs)  # noqa: E731
        else:
            run = lambda: func(*args, **kwargs)  # noqa: E731
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return run()
        seen = self.log.flops_seen
        out = run()
        if self.log.flops_seen != seen:  # the math path: its matmuls were counted
            return out
        self.log.guarded(self._count, args, kwargs, out)
        return out

    def _count(self, args, kwargs, out) -> None:
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
    return OpCounts(dict(log.kernels), dict(log.views), _params(list(model.parameters()), _modules(model)))


def _modules(module: torch.nn.Module) -> int:
    return sum(1 for _ in module.modules())


def _params(params: list[torch.nn.Parameter], modules: int) -> dict[str, float]:
    """``OpCounts.params`` of a model: its parameters, and its ``modules`` (the root included)."""
    trainable = [p for p in params if p.requires_grad]
    counts = {
        "elements": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in trainable),
        "tensors": len(params),
        "trainable_tensors": len(trainable),
        "modules": modules,
    }
    return {k: float(v) for k, v in counts.items()}


def _counted(sequence: list[tuple[bool, object]], spans: list[tuple[int, int]]) -> tuple[dict, dict]:
    """Kernels and view ops of the spans of a recorded sequence, counted in order (so the
    counts' order, which sums over them follow, is that of a pass that ran only these ops)."""
    kernels: collections.Counter = collections.Counter()
    views: collections.Counter = collections.Counter()
    for lo, hi in spans:
        for is_kernel, x in sequence[lo:hi]:
            (kernels if is_kernel else views)[x] += 1
    return dict(kernels), dict(views)


def _tensors(x, into: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors of an op's arguments or outputs, in ``tree_leaves`` order (aten ops pass
    tensors, scalars and lists or tuples of them), without pytree's cost per node."""
    if isinstance(x, torch.Tensor):
        into.append(x)
    elif isinstance(x, (list, tuple)):
        for y in x:
            _tensors(y, into)
    elif isinstance(x, dict):
        for y in x.values():
            _tensors(y, into)
    return into


class CountingMemoryLog(tr.MemoryLog):
    """``MemoryLog`` that also counts each op into ``ops`` while ``counting``: one mode
    where the separate pass had the two stacked (``OpLog`` above ``MemoryLog``), with the
    same events and counts, at the cost of one dispatch per op."""

    def __init__(self, trace: tr.Trace, ops: OpLog) -> None:
        super().__init__(trace)
        self.ops = ops
        self.counting = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.counting:
            return super().__torch_dispatch__(func, types, args, kwargs)
        kwargs = kwargs or {}
        if func in _READS:
            return _read(func, args[0])
        ops = self.ops
        inputs = _tensors((args, kwargs), []) if not ops.failed else []
        before = {id(t.untyped_storage()) for t in inputs}
        out = func(*args, **kwargs)
        tr.mark_truth(func, out)
        outs = _tensors(out, [])
        for t in outs:
            self.track(t)
        ops.guarded(ops._count, func, args, kwargs, inputs, before, out, outs)
        return out


class Recording:
    """The op counts of a memory trace's pass, taken while it runs.

    ``model_trace.trace_now`` counts into ``log`` the inputs' creation, the
    forward and the backward (``counting()`` in its ``memory_log``), as the
    separate pass does, with ``count()`` in place of its innermost function
    mode; ``results()`` then gives the counts of the traced key (where
    ``op_cost`` asks for them) and, where the cut holds, of one and two blocks.

    The cut (keep the first blocks, drop the last ones' forward and backward
    spans) needs a decoder of ``blocks.TRACED`` blocks whose ops outside the
    blocks do not depend on the depth: not encoder-decoder (two stacks), not
    frozen blocks (``freeze`` counts from the first), and the same
    ``layer_types`` in all traced blocks (transformers builds one attention
    mask per type present, before the blocks). A model outside it keeps the
    separate pass.
    """

    def __init__(self, key: ShapeKey, model, cut: bool, own: bool) -> None:
        self.key = key
        self.own = own
        """Whether ``op_cost`` asks for the traced key's own counts."""
        self.log = OpLog(sequence=True, tolerant=True)
        self.recompute = key.grad_ckpt
        self.model = model
        self.valid = True
        """False where the memory pass ran ops the separate one does not (``outputs_to_fp32`` casting the loss)."""
        self.marks, self.hooks = (
            blocks.attach_marks(model, self.log, at=lambda: len(self.log.sequence or ())) if cut else (None, [])
        )
        self.memory: CountingMemoryLog | None = None

    def count(self, inner: TorchFunctionMode) -> AttentionCount:
        """``inner`` (the innermost of the trace's function modes), counting fused SDPA as
        ``AttentionCount`` entered directly above it does."""
        return AttentionCount(self.log, self.recompute, inner)

    def memory_log(self, trace: tr.Trace) -> CountingMemoryLog:
        """The memory trace's dispatch mode, counting into ``log`` inside ``counting()``."""
        self.memory = CountingMemoryLog(trace, self.log)
        return self.memory

    @contextlib.contextmanager
    def counting(self):
        assert self.memory is not None
        self.memory.counting = True
        try:
            yield
        finally:
            self.memory.counting = False

    @classmethod
    def of(cls, key: ShapeKey, spec, model) -> Recording | None:
        """A recording for the pass of ``key``, or None where ``op_cost`` asks for none of the
        counts it gives: the traced key's own (a model of at most two blocks, or the one- and
        two-block keys themselves), or one and two blocks cut from ``blocks.TRACED``."""
        cut = _cuttable(key, spec, model)
        own = model_trace.layer_count(spec) <= 2 if key.layers is None else key.layers != blocks.TRACED
        return cls(key, model, cut, own) if cut or own else None

    def results(self) -> dict[ShapeKey, OpCounts]:
        for h in self.hooks:
            h.remove()
        if not self.valid or self.log.failed:
            return {}
        seq = self.log.sequence or []
        params = list(self.model.parameters())
        modules = _modules(self.model)
        out = {self.key: OpCounts(*_counted(seq, [(0, len(seq))]), _params(params, modules))} if self.own else {}
        m = self.marks
        if m is None or None in m.fwd or m.bwd_start_last is None or None in m.bwd_end[1:]:
            return out
        f1, f2, f3 = m.fwd[1], m.fwd[2], m.fwd[3]
        bs, e2, e1 = m.bwd_start_last, m.bwd_end[2], m.bwd_end[1]
        if not (m.fwd[0] <= f1 <= f2 <= f3 <= bs <= e2 <= e1 <= len(seq)):  # type: ignore[operator]
            return out
        layers = blocks._block_list(self.model)
        assert layers is not None
        drop2 = {id(p) for p in layers[2].parameters()}
        drop1 = drop2 | {id(p) for p in layers[1].parameters()}
        two = [(0, f2), (f3, bs), (e2, len(seq))]
        one = [(0, f1), (f3, bs), (e1, len(seq))]
        for n, spans, drop in ((1, one, drop1), (2, two, drop2)):
            kept = [p for p in params if id(p) not in drop]
            blocks_modules = sum(_modules(layers[i]) for i in range(n, blocks.TRACED))
            counts = OpCounts(*_counted(seq, spans), _params(kept, modules - blocks_modules))  # type: ignore[arg-type]
            out[dataclasses.replace(self.key, layers=n)] = counts
        return out


def _cuttable(key: ShapeKey, spec, model) -> bool:
    if spec.is_encoder_decoder or key.freeze or (key.layers or model_trace.layer_count(spec)) != blocks.TRACED:
        return False
    if blocks._block_list(model) is None:
        return False
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    types = getattr(config, "layer_types", None)
    return not types or len(set(types[: blocks.TRACED])) == 1
