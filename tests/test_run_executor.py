"""``LocalExecutor`` scheduling on a multi-GPU host, with a stand-in for the worker (no GPU needed)."""

from __future__ import annotations

import json
import sys
import time

import pytest

from bench.cell import normalize
from bench.run import executor as executor_mod
from bench.run.executor import Job, LocalExecutor

FAKE_WORKER = r"""
import json, os, sys, time
job, out = sys.argv[1], sys.argv[2]
t0 = time.time()
time.sleep(float(os.environ.get("FAKE_SECONDS", "0.6")))
json.dump({"status": "ok", "environment": {}, "error": None,
           "measured": {"gpus": os.environ["CUDA_VISIBLE_DEVICES"], "t0": t0, "t1": time.time()}}, open(out, "w"))
"""


@pytest.fixture
def fake_worker(monkeypatch, tmp_path):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    monkeypatch.setattr(
        executor_mod,
        "worker_command",
        lambda job, job_path, out_path: [sys.executable, str(script), str(job_path), str(out_path)],
    )


def job(batch: int, gpus: int = 1) -> Job:
    method = "ddp" if gpus > 1 else "full"
    c = normalize({"model": "tiny-gpt2", "gpu": "a100-80gb", "batch": batch, "gpus": gpus, "method": method})
    return Job(cell=c.to_dict(), cell_id=c.cell_id, slug=c.slug, matrix="m", device="cuda", gpus=gpus, timeout_s=60)


def run(jobs: list[Job], gpu_ids: list[int]) -> dict[int, dict]:
    done: dict[int, dict] = {}
    LocalExecutor(gpu_ids).run(jobs, lambda j, result: done.__setitem__(j.cell["batch"], result))
    return done


def overlap(a: dict, b: dict) -> bool:
    return a["t0"] < b["t1"] and b["t0"] < a["t1"]


def test_one_gpu_cells_run_side_by_side_one_per_gpu(fake_worker):
    t0 = time.monotonic()
    done = run([job(1), job(2), job(3), job(4)], [0, 1])
    assert time.monotonic() - t0 < 4 * 0.6 + 1.0  # at most two rounds of ~0.6 s plus start-up
    m = {b: r["measured"] for b, r in done.items()}
    assert {r["status"] for r in done.values()} == {"ok"}
    assert {m[b]["gpus"] for b in m} == {"0", "1"}
    for a in m:
        for b in m:
            if a < b and overlap(m[a], m[b]):
                assert m[a]["gpus"] != m[b]["gpus"]  # never two cells on one GPU at once
    assert any(overlap(m[a], m[b]) for a in m for b in m if a < b)


def test_multi_gpu_cell_gets_all_the_gpus_it_needs(fake_worker):
    done = run([job(1), job(2, gpus=2), job(3)], [0, 1])
    m = {b: r["measured"] for b, r in done.items()}
    assert m[2]["gpus"] == "0,1"
    assert not overlap(m[2], m[1]) and not overlap(m[2], m[3])


def test_a_cell_needing_more_gpus_than_the_host_has_fails_at_once(fake_worker):
    done = run([job(1, gpus=4)], [0, 1])
    assert done[1]["status"] == "error" and "needs 4 GPUs; this host has 2" in done[1]["error"]


def test_results_carry_timestamps_and_wall_time(fake_worker):
    done = run([job(1)], [0])
    r = done[1]
    assert r["started_at"] <= r["finished_at"] and r["wall_seconds"] > 0.5 and r["returncode"] == 0
    json.dumps(r)
