"""The CUDA allocator snapshot of a measured cell (``bench.worker.peak.MemorySnapshot``).

The dump itself needs a CUDA GPU; here: what the CPU path records (no
snapshot, and why), the calls and their order on CUDA with torch's two
functions replaced by fakes, where each rank writes, the runner's job field,
and a real ``bench run --device cpu --memory-snapshot``.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.worker import child, peak
from bench.worker.peak import MemorySnapshot


def test_nothing_is_recorded_unless_asked():
    r = MemorySnapshot(None, "cuda")
    r.start()
    assert not r.recording and r.stop() == {}


def test_the_cpu_path_says_no_snapshot_is_taken(tmp_path):
    r = MemorySnapshot(tmp_path / "c.memory.pickle", "cpu")
    r.start()
    out = r.stop()
    assert out["memory_snapshot"] is None and "not taken" in out["memory_snapshot_note"]
    assert "cpu" in out["memory_snapshot_note"] and not list(tmp_path.iterdir())


@pytest.fixture
def fake_cuda_history(monkeypatch):
    """torch.cuda.memory's history functions replaced by fakes that log their calls."""
    calls: list[tuple] = []

    def record(enabled="all", max_entries=None, stacks=None, **kw):
        calls.append(("record", enabled, max_entries, stacks))

    def dump(filename):
        calls.append(("dump", filename))
        with open(filename, "wb") as f:
            pickle.dump({"segments": [], "device_traces": [[]]}, f)

    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history", record)
    monkeypatch.setattr(torch.cuda.memory, "_dump_snapshot", dump)
    return calls


def test_on_cuda_the_history_spans_the_step_and_lands_in_the_file(tmp_path, fake_cuda_history):
    path = tmp_path / "results" / "h200" / "m" / "abc.memory.pickle"
    r = MemorySnapshot(path, "cuda", max_entries=123)
    r.start()
    assert fake_cuda_history == [("record", "all", 123, "python")]
    out = r.stop()
    assert out == {"memory_snapshot": "abc.memory.pickle"}  # named relative to the record's folder
    (dump, stop) = fake_cuda_history[1:]
    assert dump[0] == "dump" and Path(dump[1]).name.startswith(".tmp-") and Path(dump[1]).parent == path.parent
    assert stop == ("record", None, None, None)  # dumped (to a temporary name, then renamed), then stopped
    assert pickle.loads(path.read_bytes())["device_traces"] == [[]] and os.listdir(path.parent) == [path.name]


def test_a_snapshot_that_cannot_be_written_is_a_note_and_the_history_stops(tmp_path, fake_cuda_history):
    (tmp_path / "file").write_text("")
    r = MemorySnapshot(tmp_path / "file" / "x.memory.pickle", "cuda")
    r.start()
    out = r.stop()
    assert out["memory_snapshot"] is None and out["memory_snapshot_note"].startswith("not written")
    assert fake_cuda_history[-1] == ("record", None, None, None) and not r.recording


def test_each_rank_writes_beside_rank_0():
    assert child.snapshot_path(None, 3) is None
    assert child.snapshot_path("/r/h200/m/abc.memory.pickle", 0) == Path("/r/h200/m/abc.memory.pickle")
    assert child.snapshot_path("/r/h200/m/abc.memory.pickle", 2) == Path("/r/h200/m/abc.rank2.memory.pickle")


def test_peak_without_a_gpu_says_no_snapshot_was_taken(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert peak.main(["model=tiny-gpt2", "batch=1", "seq=16"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "no memory snapshot was taken" in err


def test_ray_cannot_keep_the_snapshot(tmp_path, capsys):
    from bench.cli import main

    assert main(["run", "matrices/smoke-cpu.yaml", "--executor", "ray", "--memory-snapshot"]) == 2
    assert "error: --memory-snapshot:" in capsys.readouterr().err


@pytest.mark.slow
def test_a_cpu_run_records_that_no_snapshot_was_taken(tmp_path):
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "name: snap\ngpu: a100-80gb\ndefaults: {precision: fp32, batch: 1, seq: 16, steps: 1, warmup: 0}\n"
        "include:\n  - {model: tiny-gpt2, method: full}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(matrix), "--device", "cpu", "--memory-snapshot"]
        + ["--results", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no allocator snapshot is taken on cpu" in r.stdout
    folder = tmp_path / "results" / "a100-80gb" / "snap"
    (record,) = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    assert record["status"] == "ok" and record["measured"]["memory_snapshot"] is None
    assert "not taken" in record["measured"]["memory_snapshot_note"]
    assert not list(folder.glob("*.pickle"))
