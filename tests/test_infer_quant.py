"""8-bit and 4-bit generation: the weights bitsandbytes stores and its kernels' workspaces."""

from __future__ import annotations

import pytest

from bench import cell as cellmod, recipe
from bench.errors import UserError
from bench.predict import generate, infer_quant, predict
from bench.predict.program import TRANSIENT, WEIGHTS
from bench.predict.quant import is_quantized
from bench.predict.trace import ALLOC, Param

LLAMA = dict(model="llama-3.1-8b", task="infer", precision="fp16", batch=1, seq=128, new_tokens=16, gpu="rtx3060")
TINY = dict(model="tiny-llama", task="infer", precision="fp16", batch=1, seq=16, new_tokens=4, gpu="rtx3060")


def _q(kind: str, double: bool = False) -> recipe.Quantization:
    return recipe.Quantization(kind=kind, double=double, compute_dtype="fp16")


def test_quant_is_for_generation_in_half_precision():
    with pytest.raises(UserError, match="quant"):
        cellmod.normalize({**LLAMA, "task": "train", "quant": "int8"})
    with pytest.raises(UserError, match="fp16, bf16"):
        cellmod.normalize({**LLAMA, "precision": "fp32", "quant": "nf4"})
    with pytest.raises(UserError, match="quant_double"):
        cellmod.normalize({**LLAMA, "quant": "int8", "quant_double": True})
    c = cellmod.normalize({**LLAMA, "quant": "nf4", "quant_double": True})
    assert recipe.of(c).quantization == recipe.Quantization(kind="nf4", double=True, compute_dtype="fp16")
    assert recipe.of(c).quantization.config_kwargs()["bnb_4bit_use_double_quant"] is True


def test_tensor_bytes_per_weight():
    shape = (4096, 14336)
    n = shape[0] * shape[1]
    assert infer_quant.tensors(n, shape, _q("int8")) == [n, 4096 * 4]  # CB + fp32 row scales
    blocks = n // 64
    assert infer_quant.tensors(n, shape, _q("nf4")) == [n // 2, blocks * 4, 64]
    assert infer_quant.tensors(n, shape, _q("fp4", True)) == [n // 2, blocks, -(-blocks // 256) * 4, 4, 64]


def test_head_embeddings_and_norms_stay_in_the_compute_dtype():
    for name, shape in (("lm_head.weight", (128256, 4096)), ("model.embed_tokens.weight", (128256, 4096))):
        assert not is_quantized(Param(name, shape[0] * shape[1], 0, False, shape))
    assert not is_quantized(Param("model.norm.weight", 4096, 0, False, (4096,)))
    assert is_quantized(Param("model.layers.0.mlp.down_proj.weight", 1, 0, False, (4096, 14336)))


def test_llama_8b_weights_in_int8_and_nf4():
    """From the architecture: 6.98e9 linear weights in the blocks, 2 x 525M fp16 in embeddings and head."""
    stored = lambda **kw: predict(cellmod.normalize({**LLAMA, **kw})).resident_bytes[WEIGHTS]  # noqa: E731
    fp16, int8 = stored(), stored(quant="int8")
    nf4, dq = stored(quant="nf4"), stored(quant="nf4", quant_double=True)
    linear = 32 * (4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336)
    kept = 2 * 128256 * 4096 * 2 + (2 * 32 + 1) * 4096 * 2
    assert fp16 == pytest.approx(2 * linear + kept, rel=0.001)
    assert int8 == pytest.approx(linear + 32 * (4096 * 2 + 1024 * 2 + 14336 * 2 + 4096) * 4 + kept, rel=0.001)
    assert nf4 == pytest.approx(linear / 2 + linear / 64 * 4 + kept, rel=0.001)
    assert dq == pytest.approx(linear / 2 + linear / 64 * (1 + 4 / 256) + kept, rel=0.001)
    assert dq < nf4 < int8 < fp16


def _workspaces(fields: dict, kind: str):
    c = cellmod.normalize({**fields, "quant": kind})
    t = generate.trace(c, None, (infer_quant.Workspaces(recipe.of(c).quantization),))
    m = t["marks"]
    sizes = lambda lo, hi: [e[2] for e in t["events"][lo:hi] if e[0] == ALLOC and e[3] == "workspace"]  # noqa: E731
    return sizes(0, m[0]), sizes(m[0], m[1])


def test_nf4_dequantizes_at_prefill_and_uses_gemv_at_batch_one_decode():
    prefill, decode = _workspaces(TINY, "nf4")
    assert max(prefill) == 64 * 128 * 2  # the largest linear (mlp, 64 x 128) dequantized to fp16
    assert decode == []  # one token: gemv_4bit, no workspace
    _, decode_b2 = _workspaces({**TINY, "batch": 2}, "nf4")
    assert max(decode_b2) == 64 * 128 * 2  # two rows: MatMul4Bit again


def test_int8_holds_the_int8_input_and_the_int32_accumulator():
    prefill, decode = _workspaces(TINY, "int8")
    tokens = 16
    assert tokens * 128 * 4 in prefill  # int32 accumulator of the widest output (mlp up: 128)
    assert tokens * 64 in prefill  # int8 copy of the input (hidden 64)
    assert 1 * 128 * 4 in decode


def test_nf4_workspace_shows_as_transient_in_the_breakdown():
    p = predict(cellmod.normalize({**LLAMA, "quant": "nf4"}))
    assert p.breakdown[TRANSIENT] >= 14336 * 4096 * 2  # the dequantized MLP weight at prefill
    assert p.fits


def test_quantized_run_needs_a_gpu():
    from bench import models
    from bench.methods import generation

    c = cellmod.normalize({**TINY, "quant": "int8"})
    with pytest.raises(RuntimeError, match="needs bitsandbytes on a CUDA GPU"):
        generation.build(c, models.resolve(c.model), "cpu")


def test_quantized_split():
    c = cellmod.normalize(
        {**LLAMA, "quant": "int8", "split": "layers", "gpus": 2, "gpu": "custom", "gpu_memory": "6GiB"}
    )
    p = predict(c)
    assert p.fits and len(p.cards) == 2
    alone = predict(cellmod.normalize({**LLAMA, "quant": "int8", "gpu": "h200"}))
    assert sum(card["breakdown"][WEIGHTS] for card in p.cards) == pytest.approx(alone.breakdown[WEIGHTS], abs=2**20)


def test_custom_card_by_memory():
    c = cellmod.normalize({**LLAMA, "quant": "nf4", "gpu": "custom", "gpu_memory": "8GiB"})
    p = predict(c)
    assert p.capacity_bytes == 8 * 2**30 and p.fits
    with pytest.raises(UserError, match="gpu_memory"):
        cellmod.normalize({**LLAMA, "gpu": "custom"})
    with pytest.raises(UserError, match="gpu_memory"):
        cellmod.normalize({**LLAMA, "gpu_memory": "lots"})
    from bench.predict.speed import speed

    assert speed(c).step_time_seconds is None and "memory only" in speed(c).figures
