"""Which kernel CUDA's ``scaled_dot_product_attention`` runs for one call on one card.

A plain-Python copy of PyTorch's ``select_sdp_backend``
(``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp``, with the shared checks of
``aten/src/ATen/native/transformers/sdp_utils_cpp.h``): the first backend of the
priority order whose checks all pass, else the math composite.

- ``flash`` (``can_use_flash_attention``): compute capability 8.0 to 12.1
  (``check_flash_attention_hardware_support``); fp16 or bf16
  (``check_dtypes_flash_attention``); no ``attn_mask`` (``check_for_attn_mask``);
  q, k, v of one head dimension, at most 256 (``check_head_dim_size_flash``); in
  training on sm86-89 and sm120-121 a head dimension in (192, 224], or in (224, 256]
  with dropout, is refused (``check_requires_grad_and_head_dim_gt192_constraints_on_sm86_89_or_120``);
  ``is_causal`` needs as many queries as keys (``check_flash_causal_non_square_seqlens``);
  grouped-query heads are accepted.
- ``efficient`` (``can_use_mem_efficient_attention``): compute capability 5.0 to
  12.1; fp16 or fp32 below 8.0, bf16 too from 8.0; q and k of one head dimension,
  q's and v's a multiple of ``minimum_gemm_alignment`` (8 for fp16/bf16 on tensor
  cores, 4 for fp32 from 8.0, else 1), and from 8.0 q/k/v storage offsets aligned
  alike (``check_data_ptr_alignment_mem_efficient``); a mask is accepted; grouped-query
  heads are accepted (``check_batch_size_and_num_heads_dense<supports_gqa=true>`` on
  CUDA since pytorch/pytorch#191085, July 2026, before the 2.13 branch; the 2.13
  docstring of ``scaled_dot_product_attention`` still names flash and math only).
- both fused kernels need stride 1 in the last dimension of q, k, v and of the mask
  (``check_last_dim_stride_equals_1_dense``: flash ignores it for a head dimension of
  1, the memory-efficient kernel does not), non-empty sequences and matching batch
  and head counts (``check_batch_size_and_num_heads_dense``).
- ``math`` otherwise.

cuDNN attention is not modelled. PyTorch puts it first only where
``check_prefer_cudnn_attention`` says so: sm90/sm100 with a runtime cuDNN newer
than 9.15.0 (and, for CUDA 12 builds, minor version 0 or 3), a property of the
installed build, not of the card. Its forward keeps what flash keeps (the output
and a fp32 ``(B, H, S, 1)`` stats tensor against flash's ``(B, H, S)`` logsumexp);
its backward workspace is sized by cuDNN's graph (``get_workspace_size``), which
PyTorch's source does not show. Those cards are therefore traced with the flash
kernel, the default priority order (flash, efficient, math).

``kernels`` names the class of cards that run the same kernels with the same
allocations (``ShapeKey.sdpa_kernels``), so that traces are shared between the cards
of one class and differ between classes.
"""

from __future__ import annotations

from dataclasses import dataclass

FLASH, EFFICIENT, MATH = "flash", "efficient", "math"

HALF = ("fp16", "bf16")

# Classes of cards by the kernels they run, each named by (and decided at) its lowest
# capability: the fused kernels' checks and the memory-efficient kernels' tile tables
# (``mem_eff_attention/kernels/cutlassF.h``, ``cutlassB.h``) differ only between these.
_CLASSES = (
    ((5, 0), "sm50"),  # memory-efficient kernels built for Sm50 (to 6.9)
    ((7, 0), "sm70"),  # Sm70 kernels (to 7.4)
    ((7, 5), "sm75"),  # Sm75 kernels (to 7.9)
    ((8, 0), "sm80"),  # flash; Sm80 kernels
    ((8, 6), "sm86"),  # flash's sm86-89 training rule; cutlassB's extra sm86/89 tile, smaller shared memory
    ((8, 7), "sm87"),  # the sm86-89 rule with sm80's shared memory and tiles
    ((8, 9), "sm86"),
    ((9, 0), "sm80"),  # sm90 to sm11x: what sm80 runs (cuDNN not modelled, see above)
    ((12, 0), "sm120"),  # the sm86-89 rule again (sm120-121), small shared memory, no sm86 tile
    ((12, 2), "none"),  # beyond sm121: no fused kernel is built
)
REPRESENTATIVE = {"none": (0, 0), **{name: cc for cc, name in reversed(_CLASSES) if name != "none"}}
DEFAULT = "sm80"


def capability(cc: str | tuple[int, int]) -> tuple[int, int]:
    """``"8.6"`` -> ``(8, 6)``; a kernel class name -> its lowest capability."""
    if isinstance(cc, tuple):
        return cc
    if cc in REPRESENTATIVE:
        return REPRESENTATIVE[cc]
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


def kernels(cc: str | tuple[int, int]) -> str:
    """The kernel class of a compute capability (``GPU.compute_capability``)."""
    v = capability(cc)
    name = "none"
    for lowest, label in _CLASSES:
        if v >= lowest:
            name = label
    return name


@dataclass(frozen=True)
class Call:
    """The facts of one SDPA call that ``select_sdp_backend`` reads (shapes ``(B, H, L, E)``)."""

    dtype: str
    """q/k/v dtype (``fp16``, ``bf16``, ``fp32``, ...); ``mixed`` when they differ."""
    q: tuple[int, ...]
    k: tuple[int, ...]
    v: tuple[int, ...]
    mask: bool = False
    dropout: float = 0.0
    causal: bool = False
    gqa: bool = False
    """``enable_gqa=True``."""
    requires_grad: bool = False
    """Grad mode on and q, k or v requiring grad (``input_requires_grad``)."""
    strides: tuple[int, int, int] = (1, 1, 1)
    """Last-dimension strides of q, k, v."""
    mask_stride: int = 1
    offsets: tuple[int, int, int] = (0, 0, 0)
    """Storage offsets (elements) of q, k, v."""


def backend(cc: str | tuple[int, int], call: Call) -> str:
    """The kernel ``select_sdp_backend`` picks on a card of capability ``cc``."""
    v = capability(cc)
    if _can_flash(v, call):
        return FLASH
    if _can_efficient(v, call):
        return EFFICIENT
    return MATH


def _dense(call: Call, gqa_ok: bool, ignore_singleton_dim: bool) -> bool:
    q, k, v = call.q, call.k, call.v
    if not (len(q) == len(k) == len(v) == 4) or q[2] == 0 or k[2] == 0:
        return False
    if not q[0] == k[0] == v[0]:
        return False
    if call.gqa and gqa_ok:
        if k[1] != v[1] or q[1] % k[1]:
            return False
    elif not q[1] == k[1] == v[1]:
        return False
    stride1 = all(s == 1 for s in call.strides) or (ignore_singleton_dim and q[3] == 1)
    return stride1 and (not call.mask or call.mask_stride == 1)


def _can_flash(v: tuple[int, int], call: Call) -> bool:
    if not (8, 0) <= v <= (12, 1) or call.dtype not in HALF or call.mask:
        return False
    d = call.q[-1]
    if not (d == call.k[-1] == call.v[-1] and d <= 256):
        return False
    if call.requires_grad and ((8, 6) <= v <= (8, 9) or (12, 0) <= v <= (12, 1)):
        if not (d <= 192 or (call.dropout == 0 and d > 224)):
            return False
    if call.causal and call.q[-2] != call.k[-2]:
        return False
    return _dense(call, gqa_ok=True, ignore_singleton_dim=True)


def alignment(v: tuple[int, int], dtype: str) -> int:
    """``minimum_gemm_alignment``: elements a memory-efficient GEMM operand must align to."""
    half = dtype in HALF
    tensor_cores = v[0] >= 8 or (v[0] >= 7 and half)
    mn = 4 if v[0] >= 8 else 1
    return max(mn, 128 // (16 if half else 32)) if tensor_cores else mn


def _can_efficient(v: tuple[int, int], call: Call) -> bool:
    if not (5, 0) <= v <= (12, 1):
        return False
    if call.dtype not in (("fp16", "fp32", "bf16") if v[0] >= 8 else ("fp16", "fp32")):
        return False
    if len(call.q) != 4 or len(call.k) != 4 or len(call.v) != 4:
        return False
    a = alignment(v, call.dtype)
    d, dv = call.q[-1], call.v[-1]
    if not (d == call.k[-1] and d > 0 and dv > 0 and d % a == 0 and dv % a == 0):
        return False
    if v[0] >= 8 and any(o % a for o in call.offsets):
        return False
    return _dense(call, gqa_ok=True, ignore_singleton_dim=False)
