"""CUDA's attention kernels on meta tensors: what each allocates, forward and backward.

``AttentionEmulation`` (a ``TorchFunctionMode``) asks ``sdpa.backend`` which kernel
the target card runs for each ``scaled_dot_product_attention`` call and runs a
stand-in that allocates what that kernel allocates, in its order (sources under
``aten/src/ATen/native/transformers/cuda``):

- ``FlashAttention`` (``flash_attn/flash_api.cpp``, ``mha_fwd``/``mha_bwd``; a head
  dimension not a multiple of 8 padded first, ``attention.cpp``): forward the output,
  a fp32 ``(B, H, S)`` logsumexp and the two small philox tensors (``rng_state``, ``_unused``), all kept for backward; backward dq, dk, dv,
  a fp32 ``softmax_d`` of ``(B, H, S rounded to 128)`` and a fp32 ``dq_accum`` of
  ``(B, S rounded to 128, H, D rounded to 32, or 64 above 128)``, and with
  grouped-query heads dk/dv expanded to every query head, summed into dk, dv.
- ``EfficientAttention`` (``attention.cu``/``attention_backward.cu``,
  ``_efficient_attention_forward``/``_backward``, ``mem_eff_attention/kernel_forward.h``,
  ``kernel_backward.h``): forward the output and, when grad is needed, a fp32
  logsumexp of ``(B, H, M)`` (M padded to 32 rows in the source, ``kAlignLSE``), plus a fp32 output
  accumulator while it runs when the head dimension exceeds the tile's keys
  (``kNeedsOutputAccumulatorBuffer``); backward dq, dk, dv, the mask's gradient
  (its last dimension padded to 16 in the source) when it requires grad, ``delta`` (fp32
  ``(B, H, M)``, or computed by ops where the kernel does not compute it) and the
  kernel's fp32 workspace (``workspace_size``: grad-q accumulator tiles, and
  grad-k/grad-v staging where they do not stay in registers), sized from the tile
  shapes of the kernel ``dispatch_cutlassB`` picks.
- the math composite (``_math_attention``) otherwise.

Sequence lengths are not rounded: a training trace is taken at the sentinel shape
(``shapes``) and every size must stay a product of the batch and the lengths for its
rescaling to the real shape, so the kernels' row padding (the logsumexp to 32 rows,
flash's workspaces to 128, the memory-efficient grad-q tiles to 64) is left out the same
way at every shape; it is exact where the length is a multiple of the padding (every
power-of-two length from 128 up), under one tile of rows short otherwise. For the same
reason the workspace's grad-q part (without the 16-byte lock of each tile) and its
grad-k/grad-v part, which does not grow with the length, are allocated apart.
Dropout runs CUDA's fused kernel (``trace`` module docstring).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from bench.predict import sdpa

_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


def _up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


_INSIDE = [0]


def inside() -> bool:
    """Whether a kernel stand-in is running: its empties and views are the kernel's own host
    work, not ops of the step (``op_log`` counts the kernel as one op, ``AttentionCount``)."""
    return _INSIDE[0] > 0


class _Kernel:
    def __enter__(self):
        _INSIDE[0] += 1

    def __exit__(self, *exc):
        _INSIDE[0] -= 1


def _empty(shape, dtype, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=like.device)


def _philox(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """flash's ``rng_state`` (2 x uint64) and ``_unused`` (a uint64 scalar), on the device."""
    return _empty((2,), torch.uint64, like), _empty((), torch.uint64, like)


class FlashAttention(torch.autograd.Function):
    """``_scaled_dot_product_flash_attention`` and its backward."""

    @staticmethod
    def forward(ctx, q, k, v, dropout):
        with _Kernel():
            return FlashAttention._forward(ctx, q, k, v, dropout)

    @staticmethod
    def backward(ctx, grad_out):
        with _Kernel():
            return FlashAttention._backward(ctx, grad_out)

    @staticmethod
    def _forward(ctx, q, k, v, dropout):
        b, h, s, _ = q.shape
        out = _empty((b, s, h, v.shape[-1]), q.dtype, q).transpose(1, 2)  # empty_like(q) in (b, s, h, d)
        lse = _empty((b, h, s), torch.float32, q)
        seed, offset = _philox(q)
        ctx.save_for_backward(q, k, v, out, lse, seed, offset)
        return out

    @staticmethod
    def _backward(ctx, grad_out):
        q, k, v, out, lse, seed, offset = ctx.saved_tensors
        b, h, s, d = q.shape
        hk, sk = k.shape[1], k.shape[2]
        g = grad_out.transpose(1, 2).contiguous()  # _flash_attention_backward: "dout is contiguous"
        dq = _empty((b, s, h, d), q.dtype, q)
        dk = _empty((b, sk, hk, d), k.dtype, k)
        dv = _empty((b, sk, hk, v.shape[-1]), v.dtype, v)
        softmax_d = _empty((b, h, s), torch.float32, q)
        dq_accum = _empty((b, s, h, _up(d, 32 if d <= 128 else 64)), torch.float32, q)
        if hk != h:  # MQA / GQA: dk, dv for every query head, then summed per group
            dk_expanded = _empty((b, sk, h, d), k.dtype, k)
            dv_expanded = _empty((b, sk, h, v.shape[-1]), v.dtype, v)
            del dk_expanded, dv_expanded
        del g, softmax_d, dq_accum
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2), None


def _backward_tile(v: tuple[int, int], half: bool, max_k: int, dropout: bool) -> tuple[int, int, int, int]:
    """(kBlockSizeI, kBlockSizeJ, kMaxK, arch) of the first ``dispatch_cutlassB`` kernel that
    takes the call (``mem_eff_attention/kernels/cutlassB.h``). The sm80 tables' 128 x 128 tiles
    are left out where the opt-in shared memory is ~100 KiB (sm86/89, sm120), as the sm86/89-only
    128 x 64 tile shows; the other tiles are assumed to fit."""
    small = (8, 6) <= v <= (8, 9) and v != (8, 7) or v[0] == 12
    if v >= (8, 0):
        arch = 80
        if half:
            tiles = [(64, 64, 32), (64, 64, 64)]
            if v in ((8, 6), (8, 9)) and not dropout:
                tiles.append((128, 64, 96))
            if not small:
                tiles.append((128, 128, 128))
            tiles += [(64, 64, 128), (128, 64, 65536)]
        else:
            tiles = [(64, 64, 32), (64, 64, 64), (128, 64, 128), (64, 64, 128), (128, 64, 65536)]
    else:
        arch = 75 if v >= (7, 5) else 70 if v >= (7, 0) else 50
        tiles = [(64, 64, 32), (64, 64, 64)]
        if half and arch >= 70:
            tiles.append((128, 64, 128))
        tiles += [(64, 64, 128), (64, 64, 65536)] if arch == 50 or not half else [(64, 64, 128), (128, 64, 65536)]
    bi, bj, max_tile = next(t for t in tiles if t[2] >= max_k)
    return bi, bj, max_tile, arch


class EfficientAttention(torch.autograd.Function):
    """``_scaled_dot_product_efficient_attention`` and its backward, on a card of kernel class ``kernels``."""

    @staticmethod
    def forward(ctx, q, k, v, bias, dropout, kernels, grad):
        with _Kernel():
            return EfficientAttention._forward(ctx, q, k, v, bias, dropout, kernels, grad)

    @staticmethod
    def backward(ctx, grad_out):
        with _Kernel():
            return EfficientAttention._backward(ctx, grad_out)

    @staticmethod
    def _forward(ctx, q, k, v, bias, dropout, kernels, grad):
        b, h, m, _ = q.shape
        kv = v.shape[-1]
        half = q.dtype in (torch.float16, torch.bfloat16)
        out = _empty((b, m, h, kv), q.dtype, q).transpose(1, 2)
        # should_compute_logsumexp; without it the logsumexp is (B, H, 0), no device memory
        lse = _empty((b, h, m), torch.float32, q) if grad else None
        if half and max(q.shape[-1], kv) > 128:  # 32 x 128 tile of kMaxK 65536: kNeedsOutputAccumulatorBuffer
            accum = _empty((b, m, h, kv), torch.float32, q)
            del accum
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.dropout, ctx.kernels = dropout, kernels
        return out

    @staticmethod
    def _backward(ctx, grad_out):
        q, k, v, bias, out, lse = ctx.saved_tensors
        b, h, m, kd = q.shape
        n, kv = k.shape[2], v.shape[-1]
        g = grad_out.transpose(1, 2).contiguous()  # "handle potentially non-contiguous grad_out through a copy"
        hk = k.shape[1]
        dq = _empty((b, m, h, kd), q.dtype, q)
        dk = _empty((b, n, h, kd), k.dtype, k)
        dv = _empty((b, n, h, kv), v.dtype, v)
        dbias = None
        if bias is not None and ctx.needs_input_grad[3]:
            dbias = _empty(bias.shape, bias.dtype, bias)  # its last dimension padded to 16 in the source
        half = q.dtype in (torch.float16, torch.bfloat16)
        bi, bj, max_tile, arch = _backward_tile(sdpa.capability(ctx.kernels), half, max(kd, kv), ctx.dropout > 0)
        in_registers = half and max_tile <= bi  # kOutputInRF
        if half and (in_registers or arch != 70):  # kKernelComputesDelta
            delta = _empty((b, h, m), torch.float32, q)
        else:
            delta = (g.to(torch.float32) * out.transpose(1, 2).to(torch.float32)).sum(-1).transpose(-2, -1).contiguous()
        workspace = _workspace(b, h, m, n, kd, kv, bi, bj, arch, half, in_registers, q)
        del g, delta, workspace
        if hk != h:  # GQA: dk, dv for every query head, summed per group by a follow-up kernel
            dk_expanded, dv_expanded = dk, dv
            dk = _empty((b, n, hk, kd), k.dtype, k)
            dv = _empty((b, n, hk, kv), v.dtype, v)
            del dk_expanded, dv_expanded
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2), dbias, None, None, None


def _workspace(b, h, m, n, kd, kv, bi, bj, arch, half, in_registers, like) -> list[torch.Tensor]:
    """The backward kernel's fp32 workspace (``Params::workspace_size``): its grad-q part and its
    grad-k/grad-v part, apart (module docstring)."""
    gq = 0
    if arch >= 70 or half:  # kNeedsAccumGradQ: kEnableSplitKeys or an output type narrower than fp32
        gq = m * -(-kd // bj) * bj  # ceil(M / BI) x ceil(K / BJ) tiles of BI x BJ floats
    gkv = 0
    if half and not in_registers:  # kNeedsAccumGradK / kNeedsAccumGradV
        splits = -(-n // bj)
        if b * h >= 256 and n <= 2 * bj:
            splits = 1
        splits = min(splits, 200 // (b * h))
        if arch < 70 or splits < 1:
            splits = 1
        gkv = splits * bj * (_up(kd, bi) + _up(kv, bi))
    return [_empty((b * h * p * 4,), torch.uint8, like) for p in (gq, gkv) if p]


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


def call_of(q, k, v, mask, dropout: float, causal: bool, gqa: bool) -> sdpa.Call:
    """The ``sdpa.Call`` of one SDPA call on these tensors."""
    dtypes = {q.dtype, k.dtype, v.dtype}
    return sdpa.Call(
        dtype=_DTYPES.get(q.dtype, str(q.dtype)) if len(dtypes) == 1 else "mixed",
        q=tuple(q.shape),
        k=tuple(k.shape),
        v=tuple(v.shape),
        mask=mask is not None,
        dropout=dropout,
        causal=causal,
        gqa=gqa,
        requires_grad=torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)),
        strides=(q.stride(-1), k.stride(-1), v.stride(-1)),
        mask_stride=mask.stride(-1) if mask is not None else 1,
        offsets=(q.storage_offset(), k.storage_offset(), v.storage_offset()),
    )


class AttentionEmulation(TorchFunctionMode):
    """Routes SDPA to the kernel a card of kernel class ``kernels`` (``sdpa.kernels``) runs,
    and dropout to CUDA's fused dropout kernel."""

    def __init__(self, kernels: str = sdpa.DEFAULT):
        super().__init__()
        self.kernels = kernels

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.dropout:
            return _cuda_dropout(*args, **kwargs)
        if func is torch.dropout:  # torch.dropout(input, p, train)
            return _cuda_dropout(*args, **kwargs)
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        names = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        kwargs.update(zip(names, args[3:]))
        q, k, v = args[:3]
        mask, dropout = kwargs.get("attn_mask"), float(kwargs.get("dropout_p") or 0.0)
        causal, scale = bool(kwargs.get("is_causal")), kwargs.get("scale")
        gqa = bool(kwargs.get("enable_gqa")) and q.shape[1] != k.shape[1]
        call = call_of(q, k, v, mask, dropout, causal, gqa)
        kind = sdpa.backend(self.kernels, call)
        if kind == sdpa.FLASH:
            d = q.shape[-1]
            if d % 8:  # attention.cpp: pad_last_dim<8> copies q, k, v; the output is sliced back
                q, k, v = (F.pad(t, (0, -d % 8)) for t in (q, k, v))
            return FlashAttention.apply(q, k, v, dropout)[..., :d]
        if kind == sdpa.EFFICIENT:
            if mask is not None:
                if mask.dtype == torch.bool:  # convert_boolean_attn_mask: a float mask of q's dtype
                    mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
                mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])  # preprocess_mask
            return EfficientAttention.apply(q, k, v, mask, dropout, self.kernels, call.requires_grad)
        if gqa:
            groups = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        return _math_attention(q, k, v, mask, dropout, causal, scale)
