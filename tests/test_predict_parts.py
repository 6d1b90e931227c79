"""The predictor's parts, pinned one by one (tiny and small models, no GPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import recipe
from bench.cell import normalize
from bench.predict import model_trace as mt, optimizer as opt, predict
from bench.predict.allocator import CachingAllocator, round_size, segment_size
from bench.predict.trace import Param

MiB = 2**20


def cell(**kw):
    base = dict(model="gpt2", gpu="h200", precision="bf16", batch=2, seq=128)
    base.update(kw)
    return normalize(base)


# --- caching allocator rules -------------------------------------------------


def test_allocator_rounding_and_segments():
    assert round_size(1) == 512 and round_size(513) == 1024
    assert segment_size(100) == 2 * MiB  # small pool
    assert segment_size(3 * MiB) == 20 * MiB  # large, below 10 MiB
    assert segment_size(11 * MiB) == 12 * MiB  # rounded to 2 MiB


def test_allocator_reuses_and_splits_cached_blocks():
    a = CachingAllocator()
    a.malloc("x", 100 * MiB)
    a.free("x")
    a.malloc("y", 40 * MiB)  # split from the cached 100 MiB block
    a.malloc("z", 40 * MiB)  # and the rest
    assert a.reserved == 100 * MiB and a.allocated == 80 * MiB
    a.malloc("w", 30 * MiB)  # 20 MiB left is too small: a new segment
    assert a.reserved == 130 * MiB and a.peak_allocated == 110 * MiB


def test_allocator_merges_free_neighbours():
    a = CachingAllocator()
    a.malloc("x", 100 * MiB)
    a.free("x")
    a.malloc("y", 50 * MiB)
    a.malloc("z", 50 * MiB)
    a.free("y")
    a.free("z")
    a.malloc("big", 100 * MiB)  # only possible if y and z merged back
    assert a.reserved == 100 * MiB


# --- optimizer states per parameter ------------------------------------------


@pytest.mark.parametrize("name,per_param", [("adamw-fused", 8), ("adamw-foreach", 8), ("sgd", 0), ("adamw-8bit", 2)])
def test_optimizer_state_bytes_per_fp32_param(name, per_param):
    p = Param("w", 1 << 20, 4 << 20, True, (1024, 1024))
    states = sum(opt.state_tensors(name, p))
    assert abs(states / p.numel - per_param) < 0.1


def test_adamw_states_follow_the_param_dtype():
    p = Param("w", 1000, 2000, True, (1000,))  # bf16 (pure-bf16 training)
    assert opt.state_tensors("adamw-fused", p)[:2] == [2000, 2000]


def test_adafactor_factors_matrices():
    p = Param("w", 4096 * 1024, 4 * 4096 * 1024, True, (4096, 1024))
    assert sum(opt.state_tensors("adafactor", p)) == (4096 + 1024) * 4


# --- what the trace sees ------------------------------------------------------


def test_weight_bytes_per_precision():
    n = None
    for precision, tuning, per_param in (("fp32", "full", 4), ("bf16", "full", 4), ("pure-bf16", "full", 2)):
        tt = mt.trace_train(mt.shape_key(cell(precision=precision, tuning=tuning)))
        total = sum(p.nbytes for p in tt.params)
        n = sum(p.numel for p in tt.params)
        assert total == per_param * n
    tt = mt.trace_train(mt.shape_key(cell(precision="fp16", tuning="lora")))
    frozen = sum(p.nbytes for p in tt.params if not p.trainable)
    adapters = [p for p in tt.params if p.trainable]
    assert frozen == 2 * sum(p.numel for p in tt.params if not p.trainable)
    assert all(p.nbytes == 4 * p.numel for p in adapters)  # PEFT keeps adapters in fp32


def test_lora_trainable_count_matches_peft():
    import torch
    from peft import LoraConfig, get_peft_model

    from bench import models

    with torch.device("meta"):
        m = models.build(models.resolve("gpt2"), device="meta")
        m = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM"))
    trainable, _ = m.get_nb_trainable_parameters()
    tt = mt.trace_train(mt.shape_key(cell(tuning="lora")))
    assert sum(p.numel for p in tt.params if p.trainable) == trainable == 589824


@pytest.mark.parametrize(
    "kw",
    [
        dict(batch=5, seq=128),
        dict(batch=3, seq=200, attn="eager"),
        dict(model="tiny-t5", batch=2, seq=48, target_seq=24),
        dict(model="llama-3.2-1b", tuning="lora", batch=3, seq=96, grad_ckpt=True),
    ],
)
def test_shape_rescaled_trace_matches_a_direct_trace(kw):
    """One trace at the sentinel shape, rescaled, against a trace at the real shape:
    same events, every tensor of 64 KiB or more the same size, the rest (e.g.
    ``seq + 1`` label padding) within a few KiB in all."""
    key = mt.shape_key(cell(**kw))
    derived, direct = mt.trace_train(key), mt._trace_train(key)
    a, b = derived.trace.events, direct.trace.events
    assert [(e[0], e[3]) for e in a] == [(e[0], e[3]) for e in b]
    assert [e[2] for e in a if e[2] >= 65536] == [e[2] for e in b if e[2] >= 65536]
    assert abs(sum(e[2] for e in a) - sum(e[2] for e in b)) < 512 * 1024


# --- whole predictions ---------------------------------------------------------


def test_breakdown_parts_are_what_was_live_at_the_allocated_peak():
    """The tagged parts (all but the reserve and the context) are the bytes the
    allocator model held when allocated bytes peaked, counted by tag: they must
    equal the allocator's own peak; the reserve is what reserved adds to it."""
    from bench.predict.program import CONTEXT, RESERVE

    for c in (cell(batch=4), cell(batch=2, method="lora", precision="bf16", grad_accum=2)):
        p = predict(c)
        live = sum(v for k, v in p.breakdown.items() if k not in (RESERVE, CONTEXT))
        workspaces = p.breakdown[CONTEXT] - recipe.of(c).outside_allocator_bytes  # cuBLAS, through the allocator
        assert live + workspaces == p.allocated_bytes
        assert p.breakdown[RESERVE] == p.reserved_bytes - p.allocated_bytes >= 0
        assert all(v >= 0 for v in p.breakdown.values())


def test_checkpointing_cuts_activations_and_accumulation_keeps_gradients():
    plain_, ckpt = predict(cell(batch=4, seq=512)), predict(cell(batch=4, seq=512, grad_ckpt=True))
    assert ckpt.breakdown["activations"] < plain_.breakdown["activations"] / 3
    ga1, ga2 = predict(cell(batch=4, seq=512)), predict(cell(batch=4, seq=512, grad_accum=2))
    grads = 4 * 124439808
    assert ga2.allocated_bytes - ga1.allocated_bytes == pytest.approx(grads, rel=0.05)


def test_eager_attention_materializes_the_score_matrix():
    sdpa, eager = predict(cell(batch=2, seq=1024)), predict(cell(batch=2, seq=1024, attn="eager"))
    assert eager.allocated_bytes - sdpa.allocated_bytes > 12 * 2 * 12 * 1024 * 1024 * 2  # > one bf16 S x S per layer


def test_predict_cli_json_and_gpu_all():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "predict",
            "--model",
            "tiny-llama",
            "--method",
            "lora",
            "--precision",
            "bf16",
            "--batch",
            "2",
            "--seq",
            "64",
            "--gpu",
            "a100-80gb",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    obj = json.loads(out)
    assert set(obj["predicted"]) >= {
        "peak_bytes",
        "allocated_bytes",
        "host_bytes",
        "fits",
        "gpu",
        "capacity_bytes",
        "breakdown",
    }
    assert obj["predicted"]["fits"] is True and obj["cell"]["tuning"] == "lora"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "predict",
            "--model",
            "tiny-gpt2",
            "--precision",
            "fp16",
            "--batch",
            "1",
            "--seq",
            "32",
            "--gpu",
            "all",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("gpu "))
    assert len(lines[at + 2 :]) >= 12 and " fits " in lines[at + 2]


def test_predict_cli_bad_input_is_one_line():
    r = subprocess.run(
        [sys.executable, "-m", "bench", "predict", "--model", "gtp2-xl", "--precision", "fp16", "--gpu", "v100-16gb"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: model:") and "gpt2-xl" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "kw",
    [
        dict(model="llama-3.2-1b", tuning="lora", grad_ckpt=True),
        dict(model="gpt2-medium", precision="fp16", attn="eager"),
    ],
)
def test_block_replication_matches_a_full_depth_trace(kw):
    import dataclasses

    from bench import gpus
    from bench.predict import blocks, plain

    c = cell(**{**dict(batch=2, seq=256), **kw})
    key = mt.shape_key(c)
    depth = mt.layer_count(mt.models.resolve(c.model))
    replicated = blocks.replicate(mt._trace_train(dataclasses.replace(key, layers=blocks.TRACED)), depth)
    full = mt._trace_train(key)
    assert replicated.trace is not full.trace and len(replicated.params) == len(full.params)
    assert sorted(e[2] for e in replicated.trace.events) == sorted(e[2] for e in full.trace.events)
    g = gpus.resolve("h200")
    a, b = plain.program(replicated, c, g), plain.program(full, c, g)
    assert (a.peak_allocated, a.peak_reserved) == (b.peak_allocated, b.peak_reserved)


def test_allocator_releases_its_cache_before_running_out():
    from bench.predict.allocator import limited

    with limited(150 * MiB):
        a = CachingAllocator()
    a.malloc("x", 100 * MiB)
    a.free("x")  # cached, not returned
    a.malloc("y", 120 * MiB)  # 100 cached + 120 > 150: release, retry, fits
    assert (a.retries, a.oom, a.reserved) == (1, False, 120 * MiB)
    a.malloc("z", 40 * MiB)  # 160 > 150 even with nothing cached
    assert a.oom


def test_seed_reference_points_on_a_16gb_v100():
    """The public guide: GPT2-XL, ZeRO-2 + CPU offload, fp16, checkpointing,
    1024 tokens, accumulation 2, 2e8 buckets: batch 12 fitted and not above;
    GPT-Neo 2.7B at batch 4 with 5e7 buckets fitted."""
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[1] / "matrices" / "configs"
    seed = dict(gpu="v100-16gb", method="zero2-offload", precision="fp16", seq=1024, grad_accum=2, grad_ckpt=True)
    xl = lambda b: predict(normalize(dict(seed, model="gpt2-xl", batch=b, ds_config=str(cfg / "ds_gpt2xl.json"))))  # noqa: E731
    assert xl(12).fits and not xl(16).fits
    neo = normalize(dict(seed, model="gpt-neo-2.7b", batch=4, ds_config=str(cfg / "ds_gptneo.json")))
    assert predict(neo).fits
