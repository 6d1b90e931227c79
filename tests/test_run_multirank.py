"""A ``gpus: 2`` cell runs under torchrun with two ranks (gloo on the CPU) and merges their peaks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_two_rank_zero2_cell_on_the_cpu(write_matrix, tmp_path):
    path = write_matrix(
        "name: mr\ngpu: a100-80gb\n"
        "defaults: {model: tiny-gpt2, batch: 2, seq: 16, steps: 1, warmup: 0, gpus: 2}\n"
        "sweep: {method: [zero2]}\n"
    )
    results = tmp_path / "r"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(path), "--device", "cpu", "--results", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (rec,) = [json.loads(f.read_text()) for f in (results / "a100-80gb" / "mr").glob("*.json")]
    assert rec["status"] == "ok", rec["error"]
    m = rec["measured"]
    assert len(m["peak_host_rss_bytes_per_rank"]) == 2
    assert m["peak_host_rss_bytes"] == max(m["peak_host_rss_bytes_per_rank"])
    assert m["tokens_per_step"] == 2 * 2 * 16  # both ranks' micro-batches
    assert rec["environment"]["world_size"] == 2
