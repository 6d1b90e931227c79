"""Faults around a run: a second runner, a full disk, host OOM, and what a killed runner leaves."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench import store as storemod
from bench.cell import normalize
from bench.errors import UserError
from bench.run import leftovers, outcome, prediction, runner
from bench.run.executor import Job, now
from bench.run.lock import RunnerLock

ROOT = Path(__file__).resolve().parent.parent
MATRIX = "name: faults\ngpu: a100-80gb\ndefaults: {model: tiny-gpt2, seq: 16, steps: 1}\nsweep: {batch: [1, 2, 4]}\n"


class FakeExecutor:
    def __init__(self) -> None:
        self.ran: list[Job] = []

    def run(self, jobs: list[Job], on_done: Callable[[Job, dict[str, Any]], None]) -> None:
        for job in jobs:
            self.ran.append(job)
            on_done(
                job,
                {
                    "status": "ok",
                    "error": None,
                    "measured": {"peak_host_rss_bytes": 1000},
                    "environment": {},
                    "started_at": now(),
                    "finished_at": now(),
                },
            )


@pytest.fixture(autouse=True)
def no_predictor(monkeypatch):
    monkeypatch.setattr(prediction, "predict", lambda cells: ({c.cell_id: None for c in cells}, "off in tests"))


def make(path, results, executor=None) -> runner.Runner:
    opts = runner.RunOptions(matrix=str(path), device="cpu", results=str(results))
    return runner.Runner(opts, executor=executor or FakeExecutor(), out=io.StringIO(), err=io.StringIO())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_runner_says_who_holds_the_folder(write_matrix, tmp_path):
    path = write_matrix(MATRIX)
    folder = tmp_path / "results" / "a100-80gb" / "faults"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from bench.run.lock import RunnerLock
            RunnerLock({str(folder)!r}).acquire("first")
            print("held", flush=True)
            time.sleep(60)
        """),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        second = make(path, tmp_path / "results")
        with pytest.raises(UserError) as e:
            second.run()
        (line,) = e.value.problems
        assert f"in use by another bench run (pid {holder.pid} on " in line and "since 20" in line
        assert second.executor.ran == [] and not list(folder.glob("*.json"))
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with its holder: the next runner measures
    third = make(path, tmp_path / "results")
    assert third.run() == 0 and len(third.executor.ran) == 3


def test_the_cli_exits_2_on_a_held_lock(write_matrix, tmp_path, capsys):
    from bench.cli import main

    path = write_matrix(MATRIX)
    with RunnerLock(tmp_path / "results" / "a100-80gb" / "faults"):
        assert main(["run", str(path), "--device", "cpu", "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and f"pid {os.getpid()}" in err and "Traceback" not in err


def test_stale_temp_cleanup_spares_a_live_writer(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    mine = folder / f"{storemod.temp_prefix()}abc.json"
    other_host = folder / ".tmp-1@elsewhere.example-abc.json"
    dead = folder / f".tmp-{_dead_pid()}@{storemod.temp_prefix().split('@')[1]}abc.json"
    old = folder / ".tmp-abc.json"
    for f in (mine, other_host, dead, old):
        f.write_text("{")
    removed = leftovers.clean_stale_temps(folder)
    assert sorted(removed) == sorted([dead, other_host, old])
    assert mine.exists()


def test_store_temp_files_name_their_writer(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(storemod.os, "replace", lambda a, b: (seen.append(Path(a).name), real(a, b)))
    storemod.atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert seen[0].startswith(storemod.temp_prefix()) and storemod.writer_gone(seen[0]) is False


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_record_that_cannot_be_written_is_kept_and_the_run_stops(write_matrix, tmp_path, monkeypatch, code):
    monkeypatch.setenv("BENCH_FALLBACK_DIR", str(tmp_path / "fallback"))
    (tmp_path / "fallback").mkdir()
    path = write_matrix(MATRIX)
    r = make(path, tmp_path / "results")
    real = storemod.Store.write
    calls = []

    def write(self, rec):
        calls.append(rec["cell_id"])
        if len(calls) == 2:
            raise OSError(code, os.strerror(code))
        return real(self, rec)

    monkeypatch.setattr(storemod.Store, "write", write)
    with pytest.raises(UserError) as e:
        r.run()
    (line,) = e.value.problems
    assert os.strerror(code) in line and "stopping" in line
    assert len(r.executor.ran) == 2  # stopped: the third cell never ran
    saved = list((tmp_path / "fallback").glob("bench-unsaved-*.json"))
    assert len(saved) == 1 and str(saved[0]) in line
    kept = json.loads(saved[0].read_text())
    printed = json.loads(r.err.getvalue().strip().splitlines()[-1])
    assert kept == printed and kept["cell_id"] == calls[1] and kept["status"] == "ok"
    assert kept["measured"]["peak_host_rss_bytes"] == 1000
    # the folder is free again, and the kept record resumes once it is copied in
    dest = tmp_path / "results" / "a100-80gb" / "faults" / f"{kept['cell_id']}.json"
    monkeypatch.setattr(storemod.Store, "write", real)
    storemod.atomic_write_json(dest, {**kept, "schema_version": storemod.SCHEMA_VERSION})
    again = make(path, tmp_path / "results")
    assert again.run() == 0 and len(again.executor.ran) == 1


def test_a_full_tmpfs_mid_run(write_matrix, tmp_path, monkeypatch):
    """A real ENOSPC: the results folder lives on a small tmpfs that fills up after the check."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    try:
        monkeypatch.setenv("BENCH_FALLBACK_DIR", str(tmp_path))
        r = make(write_matrix(MATRIX), mnt / "results")
        fill = mnt / "filler"

        class Filling(FakeExecutor):
            def run(self, jobs, on_done):
                with open(fill, "wb") as f:  # the disk fills up while the cells run
                    try:
                        while True:
                            f.write(b"\0" * 65536)
                            f.flush()
                    except OSError:
                        pass
                super().run(jobs, on_done)

        r.executor = Filling()
        with pytest.raises(UserError) as e:
            r.run()
        assert "No space left on device" in e.value.problems[0]
        assert len(list(tmp_path.glob("bench-unsaved-*.json"))) == 1
        assert not list((mnt / "results").rglob(".tmp-*"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.parametrize(
    "text",
    [
        "RuntimeError: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 1125899906842624 bytes. Error code 12 (Cannot allocate memory)",
        "MemoryError",
    ],
)
def test_host_out_of_memory_is_oom(text):
    assert outcome.classify(1, f"Traceback (most recent call last):\n{text}", None)["status"] == "oom"
    assert outcome.is_oom_text(text)


def test_a_real_host_allocation_failure_reads_as_oom():
    import torch

    with pytest.raises(RuntimeError) as e:
        torch.empty(2**50, dtype=torch.uint8)
    assert outcome.is_oom_text(f"{type(e.value).__name__}: {e.value}")


def test_scratch_of_a_dead_runner_is_removed(tmp_path):
    dead = tmp_path / f"{leftovers.scratch_prefix(_dead_pid())}abc"
    alive = tmp_path / f"{leftovers.scratch_prefix()}abc"
    other = tmp_path / "bench-run-notapid"
    for d in (dead, alive, other):
        d.mkdir()
        (d / "job.json").write_text("{}")
    assert leftovers.clean_scratch(tmp_path) == [dead]
    assert alive.exists() and other.exists()


def test_the_predictor_child_is_stopped_with_the_run():
    from bench.predict import batch

    cells = [normalize({"model": "tiny-gpt2", "gpu": "t4", "seq": 16})]
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(answers=batch.predict_in_subprocess(cells)))
    worker.start()
    deadline = time.monotonic() + 10
    while not batch._CHILDREN and time.monotonic() < deadline:
        time.sleep(0.01)
    (child,) = batch._CHILDREN
    batch.stop_children()
    worker.join(10)
    assert not worker.is_alive() and child.poll() is not None
    assert "predictor failed" in result["answers"][0]["error"]


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_sigterm_stops_children_and_removes_scratch(write_matrix, tmp_path):
    """A real runner: SIGTERM while a cell hangs and the predictor runs leaves nothing behind."""
    path = write_matrix(MATRIX)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch), "BENCH_WORKER_INJECT": "hang"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "run", str(path), "--device", "cpu", "--results", str(tmp_path / "results")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_children(proc.pid)) < 2:  # the predictor and a worker
        time.sleep(0.1)
    children = _children(proc.pid)
    assert len(children) >= 2 and list(scratch.glob("bench-run-*"))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM and "terminated (SIGTERM)" in err and "Traceback" not in err
    time.sleep(0.5)
    assert not [c for c in children if _alive(c)]
    assert not list(scratch.glob("bench-run-*"))
    with RunnerLock(tmp_path / "results" / "a100-80gb" / "faults"):
        pass  # released


@pytest.mark.slow
def test_kill_9_leaves_no_predictor_and_the_next_run_clears_the_scratch(write_matrix, tmp_path):
    path = write_matrix(MATRIX)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch), "BENCH_WORKER_INJECT": "hang"}
    cmd = [sys.executable, "-m", "bench", "run", str(path), "--device", "cpu", "--results", str(tmp_path / "results")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_children(proc.pid)) < 2:
        time.sleep(0.1)
    children = _children(proc.pid)
    predictor = [c for c in children if b"bench.predict.batch" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(predictor) == 1
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(predictor[0]):
        time.sleep(0.2)
    assert not _alive(predictor[0])
    for c in children:  # the hanging test hook never watches its parent; a real worker does
        if c not in predictor and _alive(c):
            os.killpg(c, signal.SIGKILL)
    assert list(scratch.glob("bench-run-*"))  # kill -9: nothing could clean up
    env.pop("BENCH_WORKER_INJECT")
    done = subprocess.run(cmd + ["--timeout", "120"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not list(scratch.glob("bench-run-*"))
