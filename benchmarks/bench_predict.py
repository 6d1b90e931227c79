"""Predictor speed: one Llama-3.1-70B cell, and a whole ~250-cell plan.

Run with ``make bench`` (pytest-benchmark; one round each, cold caches: every
round starts a fresh process so no trace is reused). The figures are what the
predictor's speed targets refer to: <= 2 s for one 70B cell, <= 60 s for a
200-cell plan, on a 2-core machine.
"""

from __future__ import annotations

import subprocess
import sys

PREDICT_70B = [
    sys.executable,
    "-m",
    "bench",
    "predict",
    "--model",
    "llama-3.1-70b",
    "--method",
    "lora",
    "--precision",
    "bf16",
    "--batch",
    "1",
    "--seq",
    "2048",
    "--grad-ckpt",
    "--gpu",
    "h200",
    "--json",
]
PLAN_V100 = [sys.executable, "-m", "bench", "plan", "matrices/v100.yaml", "--json"]


def _run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


def test_predict_one_70b_cell(benchmark):
    r = benchmark.pedantic(_run, args=(PREDICT_70B,), rounds=1, iterations=1)
    assert r.returncode == 0, r.stderr[-500:]


def test_plan_v100_matrix(benchmark):
    r = benchmark.pedantic(_run, args=(PLAN_V100,), rounds=1, iterations=1)
    assert r.returncode in (0, 2), r.stderr[-500:]
