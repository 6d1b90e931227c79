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
  per row (never the ``S x S`` matrix); the CPU path materializes it.
  ``FusedAttention`` allocates exactly what the CUDA kernels allocate
  (``aten/src/ATen/native/transformers/cuda``): out + logsumexp forward;
  dq, dk, dv and a fp32 dq accumulator backward. Without a fused kernel for
  the case the math path is traced (``_math_attention``): fp32 with
  grouped-query heads, or a q/k/v/mask whose last dimension is not of stride
  1 (CUDA's fused kernels refuse those, the CPU's do not; T5's relative
  position bias is such a mask where transformers passes it as computed).
- dropout: on a CUDA tensor ``torch.dropout`` runs the fused ``native_dropout``
  kernel, which saves a one-byte ``bool`` mask for backward
  (``aten/src/ATen/native/Dropout.cpp``, ``is_fused_kernel_acceptable``); on
  any other device it draws a noise tensor of the input's dtype and saves that
  (4 bytes per element for fp32). ``AttentionEmulation`` routes dropout to
  ``native_dropout`` as CUDA does.
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bench.predict.events import ALLOC, FREE, Param, Trace, TrainTrace

__all__ = ["ALLOC", "FREE", "AttentionEmulation", "AutocastEmulation", "MemoryLog", "Param", "Trace", "TrainTrace"]

# --- allocation log ---------------------------------------------------------


class MemoryLog(TorchDispatchMode):
    """Records an event per storage an op creates and per storage freed."""

    def __init__(self, trace: Trace):
        super().__init__()
        self.trace = trace
        self.live: dict[int, tuple[int, str]] = {}
        self.phase = "forward"
        self._next = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            # data-dependent checks: "all" is true, "any" is false, numbers are 0
            return getattr(args[0], "_bench_value", False if args[0].dtype == torch.bool else 0)
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.all, torch.ops.aten.any) and isinstance(out, torch.Tensor):
            out._bench_value = func.overloadpacket is torch.ops.aten.all
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


# --- fused attention, as the CUDA kernels allocate --------------------------


class FusedAttention(torch.autograd.Function):
    """Memory behaviour of CUDA flash / memory-efficient SDPA on meta tensors."""

    @staticmethod
    def forward(ctx, q, k, v, bias, groups):
        b, h, s, d = q.shape
        out = torch.empty((b, s, h, v.shape[-1]), dtype=q.dtype, device=q.device).transpose(1, 2)
        lse = torch.empty((b, h, s), dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse, bias)
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, bias = ctx.saved_tensors
        b, h, s, d = q.shape
        # flash bwd: softmax_d (B,H,S) fp32 and dq_accum (B,S,H,D) fp32 workspaces
        delta = torch.empty((b, h, s), dtype=torch.float32, device=q.device)
        dq_accum = torch.empty((b, s, h, d), dtype=torch.float32, device=q.device)
        dq = torch.empty((b, s, h, d), dtype=q.dtype, device=q.device).transpose(1, 2)
        if ctx.groups > 1:  # kernel expands dk/dv to all query heads, then sums
            dk_full = torch.empty((b, s, h, d), dtype=k.dtype, device=k.device)
            dv_full = torch.empty((b, s, h, v.shape[-1]), dtype=v.dtype, device=v.device)
            del dk_full, dv_full
        dk = torch.empty((b, k.shape[2], k.shape[1], d), dtype=k.dtype, device=k.device).transpose(1, 2)
        dv = torch.empty((b, v.shape[2], v.shape[1], v.shape[-1]), dtype=v.dtype, device=v.device).transpose(1, 2)
        dbias = None
        if bias is not None and ctx.needs_input_grad[3]:
            dbias = torch.empty_like(bias)
        del delta, dq_accum
        return dq, dk, dv, dbias, None


def _cuda_dropout(input, p=0.5, training=True, inplace=False):
    """``torch.dropout`` as on a CUDA tensor: the fused kernel (output + bool mask)."""
    if not training or p == 0 or input.numel() == 0:
        return input
    if p == 1:
        return input.mul_(0) if inplace else input * 0
    out = torch.native_dropout(input, p, True)[0]
    return input.copy_(out) if inplace else out


def _math_attention(q, k, v, mask, dropout_p, is_causal, scale):
    """SDPA's math backend (``_scaled_dot_product_attention_math``) op for op, as CUDA runs it.

    The composite is device-independent (fp16/bf16 inputs upcast to fp32, scores, ``_safe_softmax``,
    dropout, the weights also returned in the input dtype), except its dropout: on a CUDA tensor
    ``at::dropout`` is the fused kernel that saves a bool mask, on meta a noise tensor of the
    scores' dtype. Calling the aten op on meta would therefore count 4 bytes per score for the
    dropout mask where the GPU keeps 1; this is that composite with CUDA's dropout.
    """
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    factor = math.sqrt(scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    if is_causal:
        causal = torch.ones((q.shape[-2], k.shape[-2]), dtype=torch.bool, device=q.device).tril()
        mask = torch.where(causal, 0.0, float("-inf")).to(q.dtype)
    elif mask is not None and mask.dtype == torch.bool:
        mask = torch.where(mask, 0.0, float("-inf")).to(q.dtype)
    scores = (q * factor) @ (k.transpose(-2, -1) * factor)
    if mask is not None:
        scores = scores + mask
    weights = torch.ops.aten._safe_softmax(scores, -1)
    del scores
    if dropout_p > 0:
        weights = _cuda_dropout(weights, dropout_p)
    returned = weights.to(dtype)  # the op's second output, dropped by SDPA after the product
    out = weights @ v
    del weights, returned
    return out.to(dtype)


class AttentionEmulation(TorchFunctionMode):
    """Routes SDPA to ``FusedAttention`` where CUDA has a fused kernel, and
    dropout to CUDA's fused dropout kernel."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.dropout:
            return _cuda_dropout(*args, **kwargs)
        if func is torch.dropout:  # torch.dropout(input, p, train)
            return _cuda_dropout(*args, **kwargs)
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q, k, v = args[:3]
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        groups = q.shape[1] // k.shape[1]
        gqa = bool(kwargs.get("enable_gqa")) and groups > 1
        # CUDA's fused kernels need stride 1 in the last dimension of q, k, v and of the mask
        # (``check_last_dim_stride_equals_1_dense`` in sdp_utils_cpp.h: "GPU backends require
        # attn_mask's last dimension to have stride 1 while the CPU does not"); otherwise math.
        strided = any(t.stride(-1) != 1 and t.shape[-1] != 1 for t in (q, k, v)) or (
            mask is not None and mask.stride(-1) != 1 and mask.shape[-1] != 1
        )
        fused = not strided and not (gqa and (q.dtype == torch.float32 or mask is not None))
        if not fused:
            if gqa:
                k = k.repeat_interleave(groups, dim=1)
                v = v.repeat_interleave(groups, dim=1)
            return _math_attention(
                q, k, v, mask, kwargs.get("dropout_p", 0.0), kwargs.get("is_causal", False), kwargs.get("scale")
            )
        if mask is not None and mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)  # mem-efficient converts bool masks
        return FusedAttention.apply(q, k, v, mask, groups if gqa else 1)
