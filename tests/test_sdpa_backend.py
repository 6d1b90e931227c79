"""The SDPA kernel of the target card: PyTorch's backend choice, each kernel's allocations,
and the card's kernel class in the trace keys (no GPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench import gpus, models
from bench.cell import normalize
from bench.predict import predict, sdpa, shapes
from bench.predict.allocator import round_size
from bench.predict.attention import AttentionEmulation
from bench.predict.trace import ALLOC, MemoryLog, Trace

Q = (4, 12, 1024, 64)


def call(dtype="fp16", q=Q, k=None, v=None, **kw):
    return sdpa.Call(dtype=dtype, q=q, k=k or q, v=v or k or q, **kw)


# --- select_sdp_backend, case by case from sdp_utils.cpp ----------------------


@pytest.mark.parametrize(
    "cc, c, expected",
    [
        ("7.0", call("fp16", requires_grad=True), "efficient"),  # V100: no flash below sm80
        ("7.5", call("fp16"), "efficient"),  # T4
        ("7.0", call("bf16"), "math"),  # bf16 is sm80+ for the memory-efficient kernel
        ("7.0", call("fp32"), "efficient"),
        ("8.0", call("bf16", requires_grad=True), "flash"),  # A100
        ("9.0", call("fp16", causal=True), "flash"),  # H100: cuDNN not modelled, flash first
        ("8.0", call("bf16", mask=True), "efficient"),  # flash takes no attn_mask
        ("8.0", call("fp32"), "efficient"),  # flash is fp16/bf16 only
        ("8.0", call("bf16", mask=True, mask_stride=1024), "math"),  # mask's last dim strided
        ("8.0", call("bf16", strides=(1, 64, 1)), "math"),  # k's last dim strided
        # head dim 256 in training on sm86: refused with dropout (and for (192, 224]), kept without
        ("8.6", call("bf16", q=(2, 8, 512, 256), requires_grad=True, dropout=0.1), "efficient"),
        ("8.6", call("bf16", q=(2, 8, 512, 208), requires_grad=True), "efficient"),
        ("8.6", call("bf16", q=(2, 8, 512, 256), requires_grad=True), "flash"),
        ("8.0", call("bf16", q=(2, 8, 512, 256), requires_grad=True, dropout=0.1), "flash"),  # sm80: no such rule
        ("8.6", call("bf16", q=(2, 8, 512, 256), dropout=0.1), "flash"),  # the rule is for training only
        ("12.0", call("bf16", q=(2, 8, 512, 208), requires_grad=True), "efficient"),  # sm120 too
        ("8.0", call("bf16", q=(2, 8, 512, 288)), "efficient"),  # flash: head dim at most 256
        ("8.0", call("bf16", q=(2, 8, 512, 64), v=(2, 8, 512, 128)), "efficient"),  # flash: one head dim
        ("8.0", call("fp16", q=(2, 8, 512, 60)), "flash"),  # flash pads the head dim to 8 (attention.cpp)
        ("7.0", call("fp16", q=(2, 8, 512, 60)), "math"),  # 60 % 8: memory-efficient refuses it
        ("8.0", call("fp32", q=(2, 8, 512, 60)), "efficient"),  # fp32 from sm80 aligns to 4
        ("7.0", call("fp32", q=(2, 8, 512, 60)), "efficient"),  # no tensor cores for fp32: 1
        ("8.0", call("fp16", mask=True, offsets=(0, 4, 0)), "math"),  # sm80+: storage offsets aligned to 8
        ("7.0", call("fp16", mask=True, offsets=(0, 4, 0)), "efficient"),  # not checked below sm80
        # grouped-query heads: flash and (on CUDA, since pytorch#191085) the memory-efficient kernel
        ("8.0", call("bf16", k=(4, 4, 1024, 64), gqa=True), "flash"),
        ("7.0", call("fp16", k=(4, 4, 1024, 64), gqa=True), "efficient"),
        ("8.0", call("fp32", k=(4, 4, 1024, 64), gqa=True), "efficient"),
        ("8.0", call("fp16", k=(4, 5, 1024, 64), gqa=True), "math"),  # 12 query heads, 5 key heads
        ("8.0", call("fp16", k=(4, 4, 1024, 64)), "math"),  # unequal heads without enable_gqa
        ("8.0", call("bf16", q=(4, 12, 512, 64), k=(4, 12, 1024, 64), causal=True), "efficient"),
        ("4.0", call("fp16"), "math"),  # below sm50: no fused kernel
        ("12.2", call("fp16"), "math"),  # beyond sm121: none built
    ],
)
def test_backend_follows_select_sdp_backend(cc, c, expected):
    assert sdpa.backend(cc, c) == expected


def test_kernel_classes_of_catalog_cards():
    kind = {n: sdpa.kernels(gpus.resolve(n).compute_capability) for n in gpus.names()}
    assert kind["v100-16gb"] == "sm70" and kind["t4"] == "sm75"
    assert kind["a100-40gb"] == kind["h100-80gb"] == kind["h200"] == kind["b200-180gb"] == "sm80"
    assert kind["rtx3090"] == kind["rtx4090"] == kind["l4"] == "sm86" and kind["rtx5090"] == "sm120"
    for name, label in kind.items():  # a class decides as its lowest capability does
        cc = gpus.resolve(name).compute_capability
        for c in (call("bf16", q=(2, 8, 512, 208), requires_grad=True), call("fp16", mask=True), call("fp32")):
            assert sdpa.backend(cc, c) == sdpa.backend(label, c), (name, c)


def test_flash_attention_2_needs_the_cards_flash():
    for name in gpus.names():
        gpu = gpus.resolve(name)
        has_flash = sdpa.backend(gpu.compute_capability, call("bf16")) == "flash"
        assert gpu.supports_flash_attention == has_flash, name  # the matrix refuses flash_attention_2 without


# --- what each kernel allocates, at a real shape -----------------------------


def _allocations(kernels, q_shape, k_shape=None, dtype=torch.float16, **kw):
    """(bytes allocated by the forward, bytes allocated by the backward) of one SDPA call, on
    q/k/v that are head-transposed views of ``(B, S, H, D)`` leaves, as a model's projections give."""
    trace = Trace()
    log = MemoryLog(trace)

    def leaf(shape):
        b, h, s, d = shape
        return torch.empty((b, s, h, d), dtype=dtype, device="meta", requires_grad=True)

    x, y, z = leaf(q_shape), leaf(k_shape or q_shape), leaf(k_shape or q_shape)
    for t in (x, y, z):
        t.untyped_storage()._bench_key = 0  # the inputs: not the call's allocations
    with log:
        with AttentionEmulation(kernels):
            out = F.scaled_dot_product_attention(x.transpose(1, 2), y.transpose(1, 2), z.transpose(1, 2), **kw)
        forward = len(trace.events)
        grad = torch.empty_like(out)
        start = len(trace.events)
        log.phase = "backward"
        out.backward(grad)
    sizes = lambda events: [n for kind, _, n, _ in events if kind == ALLOC]  # noqa: E731
    return sizes(trace.events[:forward]), sizes(trace.events[start:])


def test_flash_allocates_as_mha_fwd_and_mha_bwd():
    b, h, s, d = 2, 12, 1024, 64  # S a multiple of 128: the source's row rounding changes nothing
    fwd, bwd = _allocations("sm80", (b, h, s, d), is_causal=True)
    # out, fp32 logsumexp (B, H, S), rng_state (2 x uint64), _unused (one uint64)
    assert fwd == [b * h * s * d * 2, b * h * s * 4, 16, 8]
    r = -(-s // 128) * 128
    # dq, dk, dv; softmax_d (B, H, S rounded to 128); dq_accum (B, S rounded, H, D rounded to 32)
    assert bwd == [b * h * s * d * 2] * 3 + [b * h * r * 4, b * r * h * d * 4]


def test_flash_pads_a_head_dimension_to_8():
    b, h, s, d = 1, 4, 256, 60
    fwd, _ = _allocations("sm80", (b, h, s, d))
    assert fwd == [b * h * s * 64 * 2] * 4 + [b * h * s * 4, 16, 8]  # padded q, k, v; out; lse; philox


def test_flash_expands_grouped_heads_in_backward():
    b, h, hk, s, d = 2, 12, 4, 512, 64
    fwd, bwd = _allocations("sm80", (b, h, s, d), (b, hk, s, d), enable_gqa=True)
    assert len(fwd) == 4
    assert bwd[5:] == [b * s * h * d * 2] * 2  # dk, dv for every query head before the group sums


def test_memory_efficient_takes_grouped_heads_and_sums_dk_dv_per_group():
    b, h, hk, s, d = 2, 12, 4, 1024, 64
    fwd, bwd = _allocations("sm70", (b, h, s, d), (b, hk, s, d), enable_gqa=True, is_causal=True)
    assert fwd[0] == b * h * s * d * 2 and max(fwd) < b * h * s * s  # fused: no S x S scores
    # dq, dk, dv of every query head first; after the kernel's workspace, dk and dv of the key heads
    assert bwd[:3] == [b * h * s * d * 2] * 3
    assert bwd[-2:] == [b * hk * s * d * 2] * 2


def test_memory_efficient_allocates_as_the_cutlass_kernels():
    b, h, s, d = 2, 12, 1024, 64  # S a multiple of 64: the source's row rounding changes nothing
    fwd, bwd = _allocations("sm70", (b, h, s, d), is_causal=True)
    # out; logsumexp padded to a multiple of 32 rows (kAlignLSE)
    assert fwd == [b * h * s * d * 2, b * h * (-(-s // 32) * 32) * 4]
    # dq, dk, dv; delta (B, H, M) fp32; workspace: a grad-q tile of 64 x 64 fp32 per 64 queries
    # and 64 head columns (Sm70 fp16 64 x 64 kernel; dk/dv stay in registers), the 16-byte lock
    # of each tile left out
    tiles = -(-s // 64) * -(-d // 64)
    assert bwd == [b * h * s * d * 2] * 3 + [b * h * s * 4, b * h * tiles * 64 * 64 * 4]


def test_memory_efficient_stages_grad_kv_for_wide_heads():
    b, h, s, d = 1, 4, 512, 256  # Sm70 fp16, head dim 256: the 128 x 64 tile of any head dim
    fwd, bwd = _allocations("sm70", (b, h, s, d))
    assert fwd[2:] == [b * s * h * d * 4]  # the forward's fp32 output accumulator (kMaxK > 128 keys)
    bi, bj = 128, 64
    splits = min(-(-s // bj), 200 // (b * h))
    gq = -(-s // bi) * -(-d // bj) * bi * bj
    gkv = 2 * splits * bj * d
    # dq, dk, dv; delta computed by ops on Sm70 (grad_out and out in fp32, their product, its
    # sum, transposed); the workspace's grad-q and grad-k/grad-v parts
    fp32_delta = [b * s * h * d * 4] * 3 + [b * s * h * 4, b * h * s * 4]
    assert bwd == [b * h * s * d * 2] * 3 + fp32_delta + [b * h * gq * 4, b * h * gkv * 4]


def test_math_keeps_the_scores_where_no_fused_kernel_takes_the_call():
    b, h, hk, s, d = 1, 8, 2, 256, 64
    fwd, _ = _allocations("sm70", (b, h, s, d), (b, hk, s, d), enable_gqa=True, dtype=torch.bfloat16)  # V100 bf16: math
    assert b * h * s * s * 4 in fwd  # fp32 scores / probabilities
    fwd, _ = _allocations("sm80", (b, h, s, d), (b, hk, s, d), enable_gqa=True)  # A100: flash
    assert max(fwd) == b * h * s * d * 2


# --- the card in the trace keys and the prediction ----------------------------


def _cell(gpu, **kw):
    return normalize(dict(model="gpt2", gpu=gpu, precision="fp16", batch=2, seq=1024, **kw))


def test_shape_keys_share_traces_by_kernel_class():
    key = lambda gpu, **kw: shapes.shape_key(_cell(gpu, **kw))  # noqa: E731
    assert key("v100-16gb").sdpa_kernels == "sm70" and key("t4").sdpa_kernels == "sm75"
    assert key("a100-40gb") == key("h100-80gb") == key("a100-80gb")  # one class, one trace
    assert key("v100-16gb") != key("a100-40gb") != key("t4")
    assert key("v100-16gb", attn="eager") == key("a100-40gb", attn="eager")  # no SDPA call


def test_prediction_on_v100_and_a100_differs_by_the_kernels_saved_tensors():
    """gpt2 at seq 1024 (a multiple of 32): both kernels keep the output and a fp32 (B, H, S)
    logsumexp per layer; flash also keeps its two philox tensors (16 and 8 bytes, a block
    each), the memory-efficient kernel's seed and offset are host tensors. The peak is in
    the backward, with every layer's saved tensors alive."""
    v100, a100 = predict(_cell("v100-16gb")), predict(_cell("a100-40gb"))
    layers = shapes.layer_count(models.resolve("gpt2"))
    assert a100.allocated_bytes - v100.allocated_bytes == layers * (round_size(16) + round_size(8))


def test_inference_keeps_no_logsumexp_for_the_memory_efficient_kernel():
    """Without grad the memory-efficient forward computes no logsumexp (``(B, H, 0)``, no block);
    flash always writes one, freed with the call's other outputs."""
    b, h, s, d = 2, 12, 1024, 64
    for kernels, expected in (("sm75", [b * h * s * d * 2]), ("sm80", [b * h * s * d * 2, b * h * s * 4, 16, 8])):
        trace = Trace()
        q = torch.empty((b, s, h, d), dtype=torch.float16, device="meta").transpose(1, 2)
        q.untyped_storage()._bench_key = 0
        with torch.inference_mode(), MemoryLog(trace), AttentionEmulation(kernels):
            out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
        assert [n for kind, _, n, _ in trace.events if kind == ALLOC] == expected
        del out
