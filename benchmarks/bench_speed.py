"""What the time prediction adds to a plan: the v100 matrix's cells, memory then speed.

Run with ``make bench``. A fresh process with an empty trace cache predicts
every cell's memory (``predict``), then every cell's speed (``speed``: op
traces, roofline, optimizer, offload), and prints both wall times and their
ratio; then a second process does the same from the cache it filled (warm).
The target is speed <= 10 % of the memory prediction's time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

SCRIPT = """
import json, time
from bench import matrix
from bench.predict import predict
from bench.predict.speed import speed
cells = matrix.load("matrices/v100.yaml").cells
t0 = time.perf_counter()
for c in cells:
    predict(c)
t1 = time.perf_counter()
for c in cells:
    speed(c)
t2 = time.perf_counter()
print(json.dumps({"cells": len(cells), "memory_seconds": t1 - t0, "speed_seconds": t2 - t1}))
"""


def _run(warm: bool = False):
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "BENCH_CACHE_DIR": cache}
        runs = [subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)]
        if warm:
            runs.append(
                subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)
            )
    return json.loads(runs[-1].stdout.strip().splitlines()[-1])


def test_speed_prediction_share_of_a_plan(benchmark):
    r = benchmark.pedantic(_run, rounds=1, iterations=1)
    share = r["speed_seconds"] / r["memory_seconds"]
    benchmark.extra_info.update(r, speed_share=share)
    print(
        f"\n{r['cells']} cells: memory {r['memory_seconds']:.1f} s, speed {r['speed_seconds']:.1f} s ({100 * share:.1f} %)"
    )


def test_speed_prediction_share_of_a_warm_plan(benchmark):
    r = benchmark.pedantic(_run, kwargs={"warm": True}, rounds=1, iterations=1)
    share = r["speed_seconds"] / r["memory_seconds"]
    benchmark.extra_info.update(r, speed_share=share)
    print(
        f"\nwarm, {r['cells']} cells: memory {r['memory_seconds']:.1f} s, speed {r['speed_seconds']:.2f} s"
        f" ({100 * share:.1f} %)"
    )
