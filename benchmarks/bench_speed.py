"""What the time prediction adds to a plan: the v100 matrix's cells, memory then speed.

Run with ``make bench``. Each round is a fresh process with an empty trace
cache (``BENCH_CACHE_DIR``, a throwaway folder): it predicts every cell's
memory (``predict``), then every cell's speed (``speed``: op counts, roofline,
optimizer, offload).

The op counts are taken inside the memory trace's own pass
(``op_log.Recording``), so part of the time prediction's cost is inside the
memory time. The same process then runs each memory trace of the plan again,
with the recording off and on in turn (``model_trace.RECORD_OPS``), and takes
the difference of the two sums as the recording's cost; the time prediction
costs ``speed + recording`` (and the import of ``op_log``, timed before
the plan), set against the memory prediction alone
(``memory - recording``): "adds X %". A warm plan (the second process on a
filled cache) traces nothing, so its cost is its speed time.

The target is <= 10 % in both plans. ``BENCH_ROUNDS`` rounds (default 3),
medians printed and kept in ``extra_info`` (``--benchmark-json``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))

SCRIPT = """
import json, sys, time
from bench import matrix
from bench.predict import model_trace, predict
from bench.predict.speed import speed
traced = []
trace_now = model_trace.trace_now
def logged(key):
    traced.append(key)
    return trace_now(key)
model_trace.trace_now = logged
t = time.perf_counter()
import bench.predict.op_log  # the counting's own module: its import is the time prediction's
op_log_import = time.perf_counter() - t
cells = matrix.load("matrices/v100.yaml").cells
t0 = time.perf_counter()
for c in cells:
    predict(c)
t1 = time.perf_counter()
for c in cells:
    speed(c)
t2 = time.perf_counter()
seconds = {False: 0.0, True: 0.0}
for i, key in enumerate(traced):  # each pass again, the recording off and on in turn
    for on in (i % 2 == 0, i % 2 != 0):
        model_trace.RECORD_OPS = on
        t = time.perf_counter()
        trace_now(key)
        seconds[on] += time.perf_counter() - t
print(json.dumps({
    "cells": len(cells), "traces": len(traced), "memory_seconds": t1 - t0, "speed_seconds": t2 - t1,
    "recording_seconds": seconds[True] - seconds[False], "retraced_seconds": seconds[False],
    "op_log_import_seconds": op_log_import,
}))
"""


def _process(cache: str) -> dict:
    env = {**os.environ, "BENCH_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    return json.loads(p.stdout.strip().splitlines()[-1])


def _round(warm: bool) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        if warm:
            _process(cache)  # fills the cache
        r = _process(cache)
    recording = r["recording_seconds"] if r["traces"] else 0.0
    cost = r["speed_seconds"] + recording + r["op_log_import_seconds"]
    return {
        **r,
        "time_prediction_seconds": cost,
        "adds": cost / (r["memory_seconds"] - recording),
        "share": cost / (r["memory_seconds"] + r["speed_seconds"]),
    }


def _measure(benchmark, warm: bool) -> dict:
    rounds: list[dict] = []
    benchmark.pedantic(lambda: rounds.append(_round(warm)), rounds=1, iterations=1)
    rounds += [_round(warm) for _ in range(ROUNDS - 1)]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    benchmark.extra_info.update(med, rounds=rounds)
    name = "warm" if warm else "cold"
    adds = ", ".join(f"{100 * r['adds']:.1f}" for r in rounds)
    print(
        f"\n{name}, {int(med['cells'])} cells, median of {len(rounds)}: memory {med['memory_seconds']:.2f} s,"
        f" speed {med['speed_seconds']:.2f} s, recording {med['recording_seconds']:.2f} s (of"
        f" {med['retraced_seconds']:.2f} s of traces); time prediction {med['time_prediction_seconds']:.2f} s,"
        f" adds {100 * med['adds']:.1f} % to the memory prediction, {100 * med['share']:.1f} % of the plan;"
        f" rounds (adds %): {adds}"
    )
    return med


def test_speed_prediction_share_of_a_plan(benchmark):
    med = _measure(benchmark, warm=False)
    assert med["adds"] <= 0.10


def test_speed_prediction_share_of_a_warm_plan(benchmark):
    med = _measure(benchmark, warm=True)
    assert med["adds"] <= 0.10
