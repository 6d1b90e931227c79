"""Trace one training micro-step (or a generation) of the real model on meta tensors.

The model is the real transformers/PEFT module, built from its config on the
``meta`` device: every op runs its shape logic but allocates nothing. A
``TorchDispatchMode`` sees each op's outputs and records an allocation event
per new storage; a ``weakref.finalize`` on the storage records the free when
autograd (or Python) drops the last reference. The event list is therefore the
allocation sequence the CUDA caching allocator would see, tensor for tensor.

Two things differ between the meta device and a CUDA GPU and are emulated so
the trace follows the GPU's code path, not the CPU's:

- ``torch.autocast``: CUDA autocast does not apply to meta tensors, so
  ``AutocastEmulation`` (a ``TorchFunctionMode``, i.e. above autograd, as the
  real autocast) applies CUDA's op lists: matmul-like ops run in the low
  precision dtype with weight casts cached for the forward; softmax,
  log_softmax, layer_norm, exp/pow/rsqrt, losses and sums run in fp32.
- ``scaled_dot_product_attention``: on the GPU it dispatches to the flash or
  memory-efficient kernel, which keep only the output and a fp32 logsumexp
  per row (never the ``S x S`` matrix), or to the math composite; which one
  depends on the card (``sdpa.backend``: compute capability, dtype, head
  dimension, mask, grouped-query heads, strides). ``AttentionEmulation``
  (``attention``) runs, for the target card's kernel class, a stand-in that
  allocates what that CUDA kernel allocates, forward and backward, or the
  math composite as CUDA runs it (``attention._math_attention``).
- dropout: on a CUDA tensor ``torch.dropout`` runs the fused ``native_dropout``
  kernel, which saves a one-byte ``bool`` mask for backward
  (``aten/src/ATen/native/Dropout.cpp``, ``is_fused_kernel_acceptable``); on
  any other device it draws a noise tensor of the input's dtype and saves that
  (4 bytes per element for fp32). ``AttentionEmulation`` routes dropout to
  ``native_dropout`` as CUDA does.

``AttentionEmulation`` lives in ``attention`` and is re-exported here.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bench.predict.attention import AttentionEmulation
from bench.predict.events import ALLOC, FREE, Param, Trace, TrainTrace

__all__ = ["ALLOC", "FREE", "AttentionEmulation", "AutocastEmulation", "MemoryLog", "Param", "Trace", "TrainTrace"]

# --- allocation log ---------------------------------------------------------


_SCALAR = torch.ops.aten._local_scalar_dense.default
_TRUTHS = (torch.ops.aten.all, torch.ops.aten.any)


def scalar_of(t: torch.Tensor):
    """What a data-dependent read of a meta tensor returns (``_local_scalar_dense``): the truth
    ``mark_truth`` gave an ``all``/``any`` result ("all" is true, "any" is false), else ``False``
    for a bool and 0 for a number."""
    return getattr(t, "_bench_value", False if t.dtype == torch.bool else 0)


def mark_truth(func, out) -> None:
    """Tag the result of ``all``/``any`` with the truth ``scalar_of`` will read back."""
    if func.overloadpacket in _TRUTHS and isinstance(out, torch.Tensor):
        out._bench_value = func.overloadpacket is torch.ops.aten.all  # type: ignore[attr-defined]


class MemoryLog(TorchDispatchMode):
    """Records an event per storage an op creates and per storage freed."""

    def __init__(self, trace: Trace):
        super().__init__()
        self.trace = trace
        self.live: dict[int, tuple[int, str]] = {}
        self.phase = "forward"
        self._next = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _SCALAR:  # data-dependent checks
            return scalar_of(args[0])
        out = func(*args, **(kwargs or {}))
        mark_truth(func, out)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out

    def track(self, t: torch.Tensor, tag: str | None = None) -> None:
        st = t.untyped_storage()
        if getattr(st, "_bench_key", None) is not None:
            return
        self._next += 1
        key = self._next
        st._bench_key = key  # type: ignore[attr-defined]
        nbytes = st.nbytes()
        tag = tag or self.phase
        self.live[key] = (nbytes, tag)
        self.trace.events.append((ALLOC, key, nbytes, tag))
        weakref.finalize(st, self._free, key)

    def _free(self, key: int) -> None:
        entry = self.live.pop(key, None)
        if entry is None:
            return
        self.trace.events.append((FREE, key, entry[0], entry[1]))


# --- CUDA autocast, emulated above autograd ---------------------------------

_T = torch.Tensor
_LOW = {
    F.linear,
    torch.matmul,
    _T.matmul,
    _T.__matmul__,
    _T.__rmatmul__,
    torch.mm,
    _T.mm,
    torch.bmm,
    _T.bmm,
    torch.addmm,
    _T.addmm,
    torch.baddbmm,
    _T.baddbmm,
    torch.addbmm,
    torch.einsum,
    F.conv1d,
    F.conv2d,
    torch.addmv,
    torch.mv,
    F.bilinear,
}
_FP32 = {
    F.layer_norm,
    F.group_norm,
    F.cross_entropy,
    F.nll_loss,
    F.mse_loss,
    F.l1_loss,
    F.kl_div,
    F.binary_cross_entropy_with_logits,
    torch.exp,
    _T.exp,
    torch.pow,
    _T.pow,
    _T.__pow__,
    torch.rsqrt,
    _T.rsqrt,
    torch.log,
    _T.log,
    torch.log1p,
    torch.reciprocal,
    torch.logsumexp,
    F.softplus,
    F.cosine_similarity,
}
# "fp32_set_opt_dtype" ops: run with dtype=float32 (fp32 output, no fp32 copy of the input)
_FP32_OUT = {
    F.softmax,
    torch.softmax,
    _T.softmax,
    F.log_softmax,
    torch.log_softmax,
    _T.log_softmax,
    torch.cumsum,
    _T.cumsum,
    torch.sum,
    _T.sum,
    torch.prod,
    _T.prod,
}


class AutocastEmulation(TorchFunctionMode):
    """CUDA ``torch.autocast(dtype=low)`` for meta tensors.

    Weight casts of leaf tensors that require grad are cached while
    ``caching`` is on (the real autocast caches them until the autocast
    region exits; the cast copies stay alive as saved tensors anyway).
    """

    def __init__(self, low: torch.dtype):
        super().__init__()
        self.low = low
        self.cache: dict[int, torch.Tensor] = {}
        self.caching = True

    def _cast(self, x, dtype):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dtype == dtype or x.dtype == torch.float64:
            return x
        if self.caching and x.is_leaf and x.requires_grad:
            hit = self.cache.get(id(x))
            if hit is None:
                hit = self.cache[id(x)] = x.to(dtype)
            return hit
        return x.to(dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LOW:
            args = [self._cast(a, self.low) for a in args]
            kwargs = {k: self._cast(v, self.low) for k, v in kwargs.items()}
        elif func in _FP32_OUT:
            x = args[0] if args else None
            if (
                isinstance(x, torch.Tensor)
                and x.dtype in (torch.float16, torch.bfloat16)
                and kwargs.get("dtype") is None
            ):
                kwargs["dtype"] = torch.float32
        elif func in _FP32:
            args = [self._cast(a, torch.float32) for a in args]
            kwargs = {k: self._cast(v, torch.float32) for k, v in kwargs.items()}
        elif func is F.scaled_dot_product_attention:
            args = [self._cast(a, self.low) if i < 3 else a for i, a in enumerate(args)]
        return func(*args, **kwargs)
