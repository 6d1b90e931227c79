"""Real children that end badly: timeout, OOM, SIGKILL, errors, and --retry-failed.

The worker's test hook (``BENCH_WORKER_INJECT``, see ``bench.worker.child``)
makes a child hang, run out of memory or fail on demand.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ONE = """name: t
gpu: a100-80gb
defaults: {model: tiny-gpt2, seq: 16, steps: 1, warmup: 0}
sweep: {batch: [1]}
"""
TWO = ONE.replace("[1]}", "[1, 2]}")


def bench_run(path: Path, results: Path, *flags: str, inject: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "BENCH_WORKER_INJECT"}
    if inject:
        env["BENCH_WORKER_INJECT"] = inject
    return subprocess.run(
        [sys.executable, "-m", "bench", "run", str(path), "--device", "cpu", "--results", str(results), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def records(results: Path) -> dict[int, dict]:
    out = {}
    for f in (results / "a100-80gb" / "t").glob("*.json"):
        r = json.loads(f.read_text())
        out[r["cell"]["batch"]] = r
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_timeout_kills_the_whole_process_group(write_matrix, tmp_path):
    results = tmp_path / "r"
    proc = bench_run(write_matrix(ONE), results, "--timeout", "5", inject="hang")
    assert proc.returncode == 1  # a timeout is a failure of the run, not a measurement
    rec = records(results)[1]
    assert rec["status"] == "timeout"
    assert rec["error"].startswith("timeout after 5 s")
    grandchild = int(re.search(r"grandchild pid (\d+)", rec["error"]).group(1))
    assert not alive(grandchild)
    assert "timeout" in proc.stdout


def test_sigkilled_child_is_an_oom(write_matrix, tmp_path):
    results = tmp_path / "r"
    proc = bench_run(write_matrix(ONE), results, inject="sigkill")
    rec = records(results)[1]
    assert rec["status"] == "oom" and "SIGKILL" in rec["error"]
    assert proc.returncode == 0


@pytest.mark.slow
def test_out_of_memory_in_the_child_is_a_measurement(write_matrix, tmp_path):
    results = tmp_path / "r"
    proc = bench_run(write_matrix(ONE), results, inject="oom")
    assert proc.returncode == 0, proc.stderr
    rec = records(results)[1]
    assert rec["status"] == "oom"
    assert "OutOfMemoryError: injected" in rec["error"]
    assert rec["measured"]["peak_host_rss_bytes"] > 0  # the peaks reached before the OOM are kept
    assert rec["measured"].get("step_times_seconds") is None


@pytest.mark.slow
def test_error_keeps_the_output_tail_and_retry_failed_reruns_it(write_matrix, tmp_path):
    path, results = write_matrix(TWO), tmp_path / "r"
    proc = bench_run(path, results, inject="error@-b2-")
    assert proc.returncode == 1
    first = records(results)
    assert first[1]["status"] == "ok" and first[2]["status"] == "error"
    assert "Traceback" in first[2]["error"]
    assert "RuntimeError: injected by BENCH_WORKER_INJECT=error" in first[2]["error"]
    ok_file = results / "a100-80gb" / "t" / f"{first[1]['cell_id']}.json"
    ok_mtime = ok_file.stat().st_mtime_ns

    proc = bench_run(path, results)
    assert "0 to run" in proc.stdout and records(results)[2]["status"] == "error"

    proc = bench_run(path, results, "--retry-failed")
    assert proc.returncode == 0
    assert "1 to run" in proc.stdout
    assert records(results)[2]["status"] == "ok"
    assert ok_file.stat().st_mtime_ns == ok_mtime


@pytest.mark.slow
def test_worker_error_inside_the_cell_is_reported(write_matrix, tmp_path):
    """QLoRA cannot run on the CPU: the worker says so, the record keeps it."""
    text = ONE.replace("sweep: {batch: [1]}", "sweep: {batch: [1]}\ninclude: [{method: qlora, precision: bf16}]")
    results = tmp_path / "r"
    proc = bench_run(write_matrix(text), results)
    assert proc.returncode == 1
    recs = [json.loads(f.read_text()) for f in (results / "a100-80gb" / "t").glob("*.json")]
    bad = [r for r in recs if r["cell"]["tuning"] == "qlora"][0]
    assert bad["status"] == "error"
    assert "tuning qlora needs bitsandbytes on a CUDA GPU" in bad["error"]
    assert bad["error"].splitlines()[0].startswith("RuntimeError")
