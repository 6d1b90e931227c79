"""Predictor speed: one Llama-3.1-70B cell (cold and warm trace cache) and whole plans.

Run with ``make bench`` (pytest-benchmark). Every round is a fresh process, as
a user's command is; "warm" means the trace cache (``BENCH_CACHE_DIR``, a
throwaway folder per benchmark) already holds the cell's traces, "cold" that
it is empty. The targets, on a 2-core machine:

- warm 70B LoRA + ZeRO-3 offload cell: <= 0.5 s for the whole command, without
  importing torch or transformers;
- cold 70B cell: <= 2 s beyond the imports a trace cannot avoid (torch,
  transformers, peft and the model's modeling file, timed apart);
- ``bench plan matrices/v100.yaml`` (244 cells), warm: <= 8 s;
- ``--max-batch`` on a ~200-cell plan: <= 2x the same plan without it.

The figures are printed and kept in ``extra_info`` (``--benchmark-json``).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREDICT_70B = [
    "predict",
    *("--model", "llama-3.1-70b", "--method", "lora+zero3-offload", "--precision", "bf16"),
    *("--batch", "1", "--seq", "2048", "--gpus", "8", "--gpu", "a100-80gb", "--json"),
]
PLAN_V100 = ["plan", "matrices/v100.yaml", "--json"]
PLAN_A100 = ["plan", "matrices/a100-80gb.yaml", "--json"]  # 192 cells
IMPORTS = (
    "import torch, transformers, peft\n"
    "import transformers.models.llama.modeling_llama\n"  # what tracing the 70B model imports
)
HEAVY_CHECK = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('heavy:', [m for m in ('torch', 'transformers') if m in sys.modules], file=sys.stderr))\n"
    "sys.argv = ['bench', *sys.argv[1:]]\n"
    "runpy.run_module('bench', run_name='__main__')\n"
)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def _env(cache: str) -> dict:
    """The command's environment: its own trace cache, and Python's bytecode cache on as on a
    user's machine (a shell that sets ``PYTHONDONTWRITEBYTECODE`` recompiles bench every run)."""
    env = {**os.environ, "BENCH_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


CPU: dict[str, list[float]] = {}
"""CPU seconds (user + system, the command and its workers) of every timed command, by its
arguments: beside the wall time, a figure that a machine shared with other work disturbs less."""


def _bench(args: list[str], cache: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=_env(cache), cwd=ROOT
    )
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.setdefault(" ".join(args), []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    assert r.returncode in (0, 2), r.stderr[-1000:]
    return seconds


def _cpu(args: list[str]) -> float:
    """Median CPU seconds of the timed runs of ``args`` (the first, untimed, run left out)."""
    runs = CPU.get(" ".join(args), [])
    return statistics.median(runs[1:] or runs)


def _median(fn, rounds: int = ROUNDS) -> tuple[float, list[float]]:
    times = [fn() for _ in range(rounds)]
    return statistics.median(times), times


@pytest.fixture
def cache():
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as d:
        yield d


def _report(benchmark, name: str, median: float, times: list[float], **extra) -> None:
    benchmark.extra_info.update({f"{name}_median_seconds": median, f"{name}_seconds": times, **extra})
    print(f"\n{name}: median {median:.2f} s of {[round(t, 2) for t in times]} {extra or ''}")


def test_predict_70b_cell_warm(benchmark, cache):
    _bench(PREDICT_70B, cache)  # fills the cache
    r = subprocess.run(
        [sys.executable, "-c", HEAVY_CHECK, *PREDICT_70B], capture_output=True, text=True, env=_env(cache), cwd=ROOT
    )
    assert r.stderr.strip().splitlines()[-1] == "heavy: []", r.stderr[-1000:]
    benchmark.pedantic(_bench, args=(PREDICT_70B, cache), rounds=1, iterations=1)
    median, times = _median(lambda: _bench(PREDICT_70B, cache))
    _report(benchmark, "warm_70b", median, times, cpu_seconds=_cpu(PREDICT_70B), target_seconds=0.5)


def test_predict_70b_cell_cold(benchmark):
    def cold() -> float:
        with tempfile.TemporaryDirectory(prefix="bench-cache-") as d:
            return _bench(PREDICT_70B, d)

    def imports() -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True, env=_env("off"), cwd=ROOT)
        return time.perf_counter() - t0

    benchmark.pedantic(cold, rounds=1, iterations=1)
    median, times = _median(cold, max(3, ROUNDS // 2))
    imp, imp_times = _median(imports, max(3, ROUNDS // 2))
    _report(benchmark, "cold_70b", median, times, imports_median_seconds=imp, beyond_imports_seconds=median - imp)


def test_plan_v100_warm(benchmark, cache):
    _bench(PLAN_V100, cache)
    benchmark.pedantic(_bench, args=(PLAN_V100, cache), rounds=1, iterations=1)
    median, times = _median(lambda: _bench(PLAN_V100, cache), max(3, ROUNDS // 2))
    serial, serial_times = _median(lambda: _bench([*PLAN_V100, "--jobs", "1"], cache), max(3, ROUNDS // 2))
    _report(
        benchmark,
        "plan_v100_warm",
        median,
        times,
        cpu_seconds=_cpu(PLAN_V100),
        serial_median_seconds=serial,
        serial_cpu_seconds=_cpu([*PLAN_V100, "--jobs", "1"]),
        target_seconds=8,
    )


def test_plan_max_batch_over_plain_plan(benchmark, cache):
    _bench([*PLAN_A100, "--max-batch"], cache)  # fills the cache for both
    plain, plain_times = _median(lambda: _bench(PLAN_A100, cache), max(3, ROUNDS // 2))
    benchmark.pedantic(_bench, args=([*PLAN_A100, "--max-batch"], cache), rounds=1, iterations=1)
    with_mb, mb_times = _median(lambda: _bench([*PLAN_A100, "--max-batch"], cache), max(3, ROUNDS // 2))
    cpu_plain, cpu_mb = _cpu(PLAN_A100), _cpu([*PLAN_A100, "--max-batch"])
    _report(
        benchmark,
        "plan_a100_max_batch",
        with_mb,
        mb_times,
        plain_median_seconds=plain,
        ratio=with_mb / plain,
        cpu_ratio=cpu_mb / cpu_plain,
        target=2,
    )


def test_plan_v100_cold(benchmark):
    def cold() -> float:
        with tempfile.TemporaryDirectory(prefix="bench-cache-") as d:
            return _bench(PLAN_V100, d)

    r = benchmark.pedantic(cold, rounds=1, iterations=1)
    _report(benchmark, "plan_v100_cold", r, [r])
