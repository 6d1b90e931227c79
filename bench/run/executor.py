"""Executors: run jobs (one cell each) as fresh child processes.

A ``Job`` is everything a worker needs, as plain data. An ``Executor`` runs a
list of jobs and calls ``on_done(job, result)`` once per job, in the caller's
thread, as soon as that job ends. ``result`` is ``classify``'s dict plus
``started_at``/``finished_at`` (ISO 8601, UTC).

The worker is always started the same way, so other executors (a Ray one, a
Slurm one) reuse the pieces here: ``write_job`` puts the job file in a folder,
``worker_command`` is the argv, ``worker_env`` the environment for a set of
GPUs, ``read_out`` and ``classify`` turn what the child left behind into a
status. ``LocalExecutor`` adds scheduling on this host: 1-GPU cells side by
side, one per GPU; a ``gpus: N`` cell on N GPUs at once via ``torchrun``;
on ``--device cpu`` one cell at a time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from bench.run import outcome
from bench.run.outcome import classify, read_out, tail

__all__ = [
    "Job",
    "Executor",
    "LocalExecutor",
    "write_job",
    "worker_command",
    "worker_env",
    "classify",
    "read_out",
    "tail",
    "now",
]


@dataclass(frozen=True, kw_only=True)
class Job:
    """One cell to measure, as the worker reads it from ``JOB.json``."""

    cell: dict[str, Any]
    """``Cell.to_dict()``."""
    cell_id: str
    slug: str
    matrix: str
    device: str = "cuda"
    """``cuda`` or ``cpu``."""
    gpus: int = 1
    """GPUs the cell needs (on CUDA), and its ranks unless ``ranks`` says otherwise."""
    ranks: int | None = None
    """Processes (``torchrun`` ranks); ``None``: one per GPU. A ``split: layers`` cell is one
    process over all its GPUs (``recipe.ranks``)."""
    timeout_s: float = 1800.0
    emulate_target: bool = True
    """Cap the process at the target GPU's memory when the card is larger."""
    results: str = "results"
    memory_snapshot: str | None = None
    """Where the child dumps the CUDA allocator's history (``bench run --memory-snapshot``); ``None``: not taken."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(**d)


class Executor(Protocol):
    def run(self, jobs: list[Job], on_done: Callable[[Job, dict[str, Any]], None]) -> None:
        """Run every job; call ``on_done`` once per job as it ends."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_job(job: Job, folder: Path) -> tuple[Path, Path]:
    """Write ``JOB.json`` into ``folder``; return it and the ``OUT.json`` path to pass on."""
    folder.mkdir(parents=True, exist_ok=True)
    job_path = folder / f"{job.cell_id}.job.json"
    out_path = folder / f"{job.cell_id}.out.json"
    job_path.write_text(json.dumps(job.to_dict()))
    out_path.unlink(missing_ok=True)
    return job_path, out_path


def worker_command(job: Job, job_path: Path, out_path: Path, python: str = sys.executable) -> list[str]:
    """The worker's argv: ``python -m bench.worker.child JOB OUT``, under torchrun for N ranks."""
    worker = ["-m", "bench.worker.child", str(job_path), str(out_path)]
    ranks = job.gpus if job.ranks is None else job.ranks
    if ranks > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *worker]
    return [python, *worker]


def worker_env(
    job: Job, gpu_ids: list[int] | None = None, base: dict[str, str] | None = None, runner_pid: int | None = None
) -> dict[str, str]:
    """The child's environment: its GPUs (NVML order), or none on ``--device cpu``.

    ``runner_pid`` (same host only) makes the worker exit when that process is gone.
    """
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env.pop("BENCH_RUNNER_PID", None)
    if runner_pid is not None:
        env["BENCH_RUNNER_PID"] = str(runner_pid)
    if job.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["DS_ACCELERATOR"] = "cpu"
    elif gpu_ids is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
    return env


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (the worker and anything it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    log: Any
    log_path: Path
    out_path: Path
    gpu_ids: list[int]
    started: float
    started_at: str


class LocalExecutor:
    """Children on this host, scheduled over its GPUs (or one at a time on the CPU).

    ``gpu_ids`` are NVML indices ([] on the CPU). A job needing more GPUs than
    the host has ends at once with status ``error``. Ctrl-C (or any exception
    in ``on_done``) kills every running child's group before it propagates.
    """

    def __init__(self, gpu_ids: list[int] | None = None, poll_s: float = 0.05) -> None:
        self.gpu_ids = list(gpu_ids or [])
        self.poll_s = poll_s

    def _slots(self, job: Job) -> int:
        return 1 if job.device == "cpu" else job.gpus

    def run(self, jobs: list[Job], on_done: Callable[[Job, dict[str, Any]], None]) -> None:
        pending = list(jobs)
        running: list[_Running] = []
        capacity = 1 if not self.gpu_ids else len(self.gpu_ids)
        free = list(self.gpu_ids) or [-1]
        with tempfile.TemporaryDirectory(prefix=f"bench-run-{os.getpid()}-") as scratch:  # bench.run.leftovers
            try:
                while pending or running:
                    for job in list(pending):
                        need = self._slots(job)
                        if job.device != "cpu" and need > capacity:
                            pending.remove(job)
                            on_done(
                                job,
                                {
                                    **outcome.failed(f"the cell needs {need} GPUs; this host has {capacity}"),
                                    "started_at": now(),
                                    "finished_at": now(),
                                },
                            )
                        elif need <= len(free):
                            pending.remove(job)
                            ids, free = free[:need], free[need:]
                            running.append(self._start(job, Path(scratch), ids))
                    time.sleep(self.poll_s)
                    for r in list(running):
                        result = self._check(r)
                        if result is not None:
                            running.remove(r)
                            free = sorted(free + r.gpu_ids)
                            on_done(r.job, result)
            finally:
                for r in running:
                    kill_group(r.proc)
                    r.proc.wait()
                    r.log.close()

    def _start(self, job: Job, scratch: Path, gpu_ids: list[int]) -> _Running:
        job_path, out_path = write_job(job, scratch)
        log_path = scratch / f"{job.cell_id}.log"
        log = open(log_path, "wb")
        ids = None if job.device == "cpu" else [i for i in gpu_ids if i >= 0]
        env = worker_env(job, ids, runner_pid=os.getpid())
        proc = subprocess.Popen(
            worker_command(job, job_path, out_path),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return _Running(job, proc, log, log_path, out_path, gpu_ids, time.monotonic(), now())

    def _check(self, r: _Running) -> dict[str, Any] | None:
        rc = r.proc.poll()
        elapsed = time.monotonic() - r.started
        timed_out = rc is None and elapsed > r.job.timeout_s
        if rc is None and not timed_out:
            return None
        kill_group(r.proc)  # the worker's own children, and the worker on timeout
        rc = r.proc.wait()
        r.log.close()
        text = tail(r.log_path)
        if timed_out:
            result = outcome.timed_out(r.job.timeout_s, text, read_out(r.out_path))
        else:
            result = classify(rc, text, read_out(r.out_path))
        return {**result, "wall_seconds": round(elapsed, 3), "started_at": r.started_at, "finished_at": now()}
