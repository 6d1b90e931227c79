"""Sampler overhead: training step time with and without the memory sampler thread.

The sampler reads memory every 10 ms on a thread of the process it measures,
so it competes with the training step for the GIL and the CPU. This measures
what that costs on the CPU smoke cells (tiny-gpt2 and tiny-llama, batch 2,
seq 32, fp32, AdamW): blocks of steps alternate between sampler off and on,
so drift on a shared machine hits both alike, and the figure reported is

    overhead % = 100 * (median step time with sampler / median without - 1)

Run with ``make bench`` (or ``pytest benchmarks/bench_sampler.py
--benchmark-enable -s`` to see the figure printed).

On a GPU host, ``BENCH_SAMPLER_DEVICE=cuda`` measures the NVML sampler instead,
on GPT-2 (124M) in bf16, batch 8, 512 tokens, each step ended by a device
synchronize so that its time is the GPU's (``scripts/gpu-check.sh`` runs it).
``BENCH_SAMPLER_BLOCKS`` sets the number of alternating blocks (default 40).
"""

from __future__ import annotations

import os
import statistics
import time

import pytest

from bench import models
from bench.cell import normalize
from bench.methods import training
from bench.worker import nvml

DEVICE = os.environ.get("BENCH_SAMPLER_DEVICE", "cpu")
if DEVICE == "cuda":
    MODELS = ("gpt2",)
    SHAPE = {"batch": 8, "seq": 512, "precision": "bf16"}
else:
    MODELS = ("tiny-gpt2", "tiny-llama")
    SHAPE = {"batch": 2, "seq": 32, "precision": "fp32"}
BLOCKS = int(os.environ.get("BENCH_SAMPLER_BLOCKS", "40"))
STEPS_PER_BLOCK = 5


@pytest.fixture(scope="module", params=MODELS)
def setup(request) -> training.Setup:
    cell = normalize({"model": request.param, "gpu": "a100-80gb", **SHAPE})
    s = training.setup(cell, models.resolve(cell.model), DEVICE)
    for _ in range(3):
        step(s)
    return s


def step(s: training.Setup) -> None:
    s.micro_step()
    s.optimizer_step()
    if DEVICE == "cuda":
        import torch

        torch.cuda.synchronize()


def timed_steps(s: training.Setup, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        step(s)
        out.append(time.perf_counter() - t0)
    return out


def overhead(s: training.Setup) -> dict[str, float]:
    """Median step time off and on, interleaved in blocks; the overhead in percent."""
    off: list[float] = []
    on: list[float] = []
    for block in range(BLOCKS):
        for sampling in (False, True) if block % 2 == 0 else (True, False):
            if sampling:
                sampler = nvml.Sampler(device=DEVICE).start()
                on += timed_steps(s, STEPS_PER_BLOCK)
                samples = sampler.stop()["memory_samples"]
                assert samples > 1
            else:
                off += timed_steps(s, STEPS_PER_BLOCK)
    m_off, m_on = statistics.median(off), statistics.median(on)
    return {"step_off_seconds": m_off, "step_on_seconds": m_on, "overhead_percent": 100 * (m_on / m_off - 1)}


@pytest.mark.parametrize("sampling", [False, True], ids=["sampler-off", "sampler-on"])
def test_step_time(benchmark, setup, sampling):
    """Step time as pytest-benchmark sees it, one group per model."""
    benchmark.group = f"step {setup.cell.model}"
    sampler = nvml.Sampler(device=DEVICE).start() if sampling else None
    try:
        benchmark.pedantic(step, args=(setup,), rounds=40, warmup_rounds=3)
    finally:
        if sampler is not None:
            sampler.stop()


def test_sampler_overhead_percent(benchmark, setup):
    """The interleaved A/B figure; kept in the benchmark's ``extra_info``."""
    benchmark.group = "sampler overhead"
    result = benchmark.pedantic(overhead, args=(setup,), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(
        f"\n{setup.cell.model}: step {result['step_off_seconds'] * 1e3:.2f} ms without the sampler, "
        f"{result['step_on_seconds'] * 1e3:.2f} ms with it: overhead {result['overhead_percent']:+.1f}%"
    )
    # no bound asserted: on a shared machine other processes' noise can exceed the sampler's cost


def test_one_sample_cost(benchmark):
    """The sampler thread's own work per reading, and the share of one core it takes
    at its interval (cost / interval): a noise-free bound on what it can take from
    the training step (``BENCH_SAMPLER_DEVICE=cuda`` times the NVML reading)."""
    benchmark.group = "sampler reading"
    sampler = nvml.Sampler(device=DEVICE)
    benchmark.pedantic(sampler.sample, rounds=200, iterations=10, warmup_rounds=5)
    cost = benchmark.stats.stats.median
    share = cost / sampler.interval_s
    benchmark.extra_info.update(sample_seconds=cost, interval_seconds=sampler.interval_s, core_share=share)
    print(
        f"\none {DEVICE} reading: {cost * 1e6:.1f} us every {sampler.interval_s * 1e3:.0f} ms = {share:.3%} of one core"
    )
