"""The sharded and generation programs: ZeRO, FSDP, generate() and QLoRA weights.

Unit checks pin each part against the library behaviour it models; whole
predictions against the measured reference rows (``tests/data/h200-2026-11.jsonl``,
ZeRO, FSDP and generation rows among them) are checked by
``test_predict_measurements``.
"""

from __future__ import annotations

import json

import pytest
import torch

from bench import models
from bench.cell import normalize
from bench.predict import predict
from bench.predict.fsdp import shard
from bench.predict.program import COMM, KV, OPTIM, WEIGHTS
from bench.predict.quant import is_quantized, nf4_weight_bytes
from bench.predict.trace import Param
from bench.predict.zero import gathered_peaks
from bench.recipe import block_of

GiB = 2**30


def cell(**kw):
    return normalize(dict(gpu="h200", batch=2, seq=128, **kw))


def ds_config(tmp_path, **zero) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, **zero}, "bf16": {"enabled": "auto"}}))
    return str(path)


def params_of(name: str, dtype=torch.bfloat16) -> list[Param]:
    model = models.build(models.resolve(name), device="meta", dtype=dtype)
    return [
        Param(n, p.numel(), p.numel() * p.element_size(), p.requires_grad, tuple(p.shape))
        for n, p in model.named_parameters()
    ]


@pytest.mark.parametrize("overlap", [False, True])
def test_zero2_buckets_follow_reduce_bucket_size_and_overlap(tmp_path, overlap):
    elements = 20_000_000
    path = ds_config(tmp_path, reduce_bucket_size=elements, overlap_comm=overlap)
    p = predict(cell(model="tiny-llama", method="zero2", precision="bf16", ds_config=path))
    buckets = 2 if overlap else 1  # stage_1_and_2.py setup_buckets: a second buffer with overlap_comm
    assert p.breakdown[COMM] == buckets * elements * 2


def test_zero_offload_moves_optimizer_states_to_host():
    on = predict(cell(model="gpt2", method="zero2", precision="bf16"))
    off = predict(cell(model="gpt2", method="zero2-offload", precision="bf16"))
    n = sum(p.numel for p in params_of("gpt2"))
    assert on.breakdown[OPTIM] >= 12 * n  # fp32 master + two AdamW moments on the GPU
    assert off.breakdown[OPTIM] == 0
    assert off.host_bytes - on.host_bytes >= 12 * n
    assert off.peak_bytes < on.peak_bytes


def test_zero3_weights_shrink_with_ranks():
    one = predict(cell(model="gpt2", method="zero3", precision="bf16"))
    four = predict(cell(model="gpt2", method="zero3", precision="bf16", gpus=4))
    assert four.breakdown[WEIGHTS] < one.breakdown[WEIGHTS] / 3
    assert four.breakdown[OPTIM] < one.breakdown[OPTIM] / 3


def test_zero3_gathered_parameters_follow_prefetch_and_reuse_distance():
    from dataclasses import replace

    from bench import dsconfig

    params = params_of("gpt2-medium")
    s = dsconfig.generated(cell(model="gpt2-medium", method="zero3", precision="bf16"))
    gathered = sum(p.numel for p in params if p.numel > s.param_persistence_threshold)
    largest = max(p.numel for p in params if p.numel > s.param_persistence_threshold)
    # a module is kept if it is used again within max_reuse_distance elements: the whole
    # (355M-parameter) model is, from its forward to its backward, with the default 1e9
    assert gathered_peaks(params, s, False) == (gathered, gathered)
    eager = replace(s, prefetch_bucket_size=0, max_reuse_distance=0)
    assert max(gathered_peaks(params, eager, False)) <= largest
    # each fetch prefetches up to prefetch_bucket_size more, capped by max_live_parameters
    capped = replace(s, prefetch_bucket_size=50_000_000, max_live_parameters=100_000_000, max_reuse_distance=0)
    fwd, bwd = gathered_peaks(params, capped, True)
    assert 50_000_000 <= fwd <= 100_000_000 + 2 * largest and bwd <= 100_000_000 + 2 * largest


def test_fsdp_shards_per_rank():
    p = Param("model.layers.3.mlp.up_proj.weight", 4096 * 1024, 4096 * 1024 * 4, True, (4096, 1024))
    assert shard(p, 8, 4).numel == p.numel // 8
    assert shard(Param("b", 10, 40, True, (10,)), 4, 4).numel == 3  # dim 0 padded to ceil(10 / 4)
    assert block_of("model.layers.3.mlp.up_proj.weight") == "model.layers.3"
    assert block_of("transformer.h.1c7.attn.c_attn.weight") == "transformer.h.1c7"
    one = predict(cell(model="gpt2", method="fsdp", precision="bf16"))
    four = predict(cell(model="gpt2", method="fsdp", precision="bf16", gpus=4))
    assert four.breakdown[OPTIM] == pytest.approx(one.breakdown[OPTIM] / 4, rel=0.05)


def test_generate_kv_cache_of_gqa_model():
    spec = models.resolve("llama-3.1-8b")
    c = spec.config
    layers, kv_heads = c["num_hidden_layers"], c["num_key_value_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    batch, seq, new = 2, 256, 8
    p = predict(
        normalize(
            dict(model="llama-3.1-8b", gpu="h200", task="infer", precision="bf16", batch=batch, seq=seq, new_tokens=new)
        )
    )
    per_token = 2 * layers * kv_heads * head_dim * batch * 2
    layer_slack = 2 * kv_heads * head_dim * batch * 2 * (seq + new) + (1 << 20)  # one layer's old+new during cat
    assert abs(p.breakdown[KV] - per_token * (seq + new - 1)) <= layer_slack


def test_qlora_linear_weights_take_half_a_byte():
    params = params_of("llama-3.2-1b")
    linear = [p for p in params if is_quantized(p)]
    assert linear and not any(p.name.endswith(("embed_tokens.weight", "lm_head.weight")) for p in linear)
    per_param = sum(nf4_weight_bytes(p) for p in linear) / sum(p.numel for p in linear)
    assert 0.5 <= per_param <= 0.53  # packed nibbles + uint8 absmax per 64 + nested fp32 absmax
    norm = next(p for p in params if "norm" in p.name)
    assert nf4_weight_bytes(norm) == norm.numel * 4  # prepare_model_for_kbit_training upcasts to fp32
