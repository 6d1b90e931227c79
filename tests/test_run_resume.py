"""``kill -9`` of the runner mid-run, then a re-run: nothing lost, nothing redone, nothing corrupt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MATRIX = """name: resume
gpu: a100-80gb
defaults: {model: tiny-gpt2, seq: 16, steps: 1, warmup: 0}
sweep: {batch: [1, 2, 3, 4]}
"""


def workers_for(results: Path) -> list[int]:
    """Pids of live workers whose job writes into ``results`` (other test runs may have their own)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"bench.worker.child" not in argv or state == "Z":
            continue
        job = Path(argv[argv.index(b"bench.worker.child") + 1].decode())
        try:
            if json.loads(job.read_text())["results"] == str(results):
                pids.append(int(p.name))
        except (OSError, ValueError, KeyError):
            continue
    return pids


@pytest.mark.slow
def test_resume_after_sigkill_of_the_runner(write_matrix, tmp_path):
    path = write_matrix(MATRIX)
    results = tmp_path / "results"
    folder = results / "a100-80gb" / "resume"
    cmd = [sys.executable, "-m", "bench", "run", str(path), "--device", "cpu", "--results", str(results)]
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the killed runner's scratch folder stays in here
    runner = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(folder.glob("*.json"))) < 1:
        time.sleep(0.1)
    while time.monotonic() < deadline and not workers_for(results):  # the next cell is in flight
        time.sleep(0.05)
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()

    before = {f.name: (f.stat().st_mtime_ns, json.loads(f.read_text())["started_at"]) for f in folder.glob("*.json")}
    assert 1 <= len(before) < 4
    # the worker in flight notices its parent is gone and exits
    deadline = time.monotonic() + 10
    while workers_for(results) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not workers_for(results)
    (folder / ".tmp-left-by-a-killed-writer.json").write_text('{"cell_id": "half')

    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(before)} already in" in proc.stdout
    files = sorted(folder.glob("*.json"))
    records = [json.loads(f.read_text()) for f in files]
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}
    assert not list(folder.glob(".tmp-*"))
    for name, (mtime, started) in before.items():
        assert (folder / name).stat().st_mtime_ns == mtime
        assert json.loads((folder / name).read_text())["started_at"] == started
