"""``bench serve``'s answer time through HTTP for a model whose trace is cached (target: median <= 300 ms).

A real server on a free port of 127.0.0.1 (``tests/serving.py``), its trace cache in a throwaway
folder. gpt2's LoRA and full traces are made first; then each round asks ``POST /api/predict``
for a cell not answered before (a new batch and sequence length of the cached model: the
predictor replays the run through its allocator model, no trace), and, separately, for a cell
answered before (the server's answer cache). Run with ``make bench``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import serving  # noqa: E402

CELL = {"model": "gpt2", "method": "lora", "precision": "bf16", "seq": 512, "gpu": "h100-80gb"}


@pytest.fixture(scope="module")
def base():
    with tempfile.TemporaryDirectory(prefix="bench-serve-bench-") as cache:
        with serving.server(env={"BENCH_CACHE_DIR": cache}) as url:
            for method in ("lora", "full"):  # the traces (batch 1 and 2 at every length derive from them)
                for batch in (1, 2):
                    assert serving.call(url + "/api/predict", {**CELL, "method": method, "batch": batch})[0] == 200
            yield url


def test_answer_for_a_cached_model_new_cell(base, benchmark):
    shapes = iter([(method, batch) for batch in range(3, 200) for method in ("lora", "full")])
    serving.call(base + "/api/predict", {**CELL, "batch": 200})  # the first replay warms what is imported lazily

    def ask():
        method, batch = next(shapes)
        status, entry = serving.call(base + "/api/predict", {**CELL, "method": method, "batch": batch})
        assert status == 200 and entry["cell"]["batch"] == batch and "predicted" in entry

    benchmark.pedantic(ask, rounds=60, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        assert benchmark.stats.stats.median < 0.3


def test_answer_repeated_cell(base, benchmark):
    serving.call(base + "/api/predict", {**CELL, "batch": 4})

    def ask():
        assert serving.call(base + "/api/predict", {**CELL, "batch": 4})[0] == 200

    benchmark.pedantic(ask, rounds=50, iterations=1)
