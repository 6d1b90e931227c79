"""The shipped CPU smoke matrix end to end, through the CLI, into a throwaway store."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "matrices" / "smoke-cpu.yaml"
MEASURED_KEYS = {
    "peak_nvml_process_bytes",
    "peak_nvml_device_bytes",
    "nvml_mode",
    "peak_torch_allocated_bytes",
    "peak_torch_reserved_bytes",
    "alloc_retries",
    "ooms",
    "peak_host_rss_bytes",
    "step_time_median_seconds",
    "tokens_per_second",
    "samples_per_second",
    "tflops_achieved",
    "mfu",
    "step_times_seconds",
}


@pytest.mark.slow
def test_smoke_matrix_runs_every_cell_ok_on_the_cpu(tmp_path):
    results = tmp_path / "results"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(SMOKE), "--device", "cpu", "--results", str(results)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    wall = time.monotonic() - t0
    print(proc.stdout)
    print(f"smoke matrix wall time: {wall:.0f} s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted((results / "a100-80gb" / "smoke-cpu").glob("*.json"))
    records = [json.loads(f.read_text()) for f in files]
    assert len(records) == 16
    assert {r["status"] for r in records} == {"ok"}, [(r["slug"], r["error"]) for r in records if r["status"] != "ok"]
    methods = {r["cell"]["strategy"] if r["cell"]["strategy"] != "none" else r["cell"]["tuning"] for r in records}
    assert methods >= {"full", "lora", "zero2", "zero3", "fsdp"}
    assert any(r["cell"]["offload"] == "optimizer" for r in records)
    assert {r["cell"]["model"] for r in records} == {"tiny-gpt2", "tiny-llama", "tiny-t5", "tiny-bert"}
    assert {r["cell"].get("head") for r in records if r["cell"]["model"] == "tiny-bert"} == {"seq-cls", "token-cls"}
    assert sum(r["cell"].get("loop") == "trainer" for r in records) == 3
    for r in records:
        m = r["measured"]
        assert MEASURED_KEYS <= set(m), r["slug"]
        assert m["nvml_mode"] == "host-rss" and m["peak_host_rss_bytes"] > 0
        assert len(m["step_times_seconds"]) == 2 and m["tokens_per_second"] > 0
        assert m["mfu"] is None
        assert r["environment"]["device"] == "cpu" and r["environment"]["emulated_target"] is False
        assert r["environment"]["torch_version"] and r["started_at"] <= r["finished_at"]
        if r["cell"]["task"] == "train":
            assert m["final_loss"] > 0
        else:
            assert m["prefill_seconds"] > 0 and m["output_tokens"] == 32 + 8
    assert (results / "a100-80gb" / "machine.json").is_file()
    assert "done: 16 ok" in proc.stdout
