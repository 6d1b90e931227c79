"""Predict many cells in a child process, so the runner's parent never imports torch.

``predict_in_subprocess(cells)`` sends the cells as JSON to
``python -m bench.predict.batch`` and returns one dict per cell:
``{"predicted": {...}}`` (stamped with ``bench.predict.version``) or ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from bench.cell import Cell, normalize

PARENT_ENV = "BENCH_PREDICTOR_PARENT"
"""The pid of the process that started the predictor child."""
_CHILDREN: set[subprocess.Popen] = set()
"""Predictor children running now (``stop_children`` kills them)."""


def stop_children() -> None:
    """Kill every predictor child of this process (a run that ends early)."""
    for proc in list(_CHILDREN):
        if proc.poll() is None:
            proc.kill()


def predict_in_subprocess(cells: list[Cell], timeout: float = 1800) -> list[dict]:
    """One answer per cell.

    The child is killed when anything interrupts the wait (Ctrl-C, SIGTERM, the
    timeout) or ``stop_children`` is called, and it exits by itself when its
    parent dies.
    """
    payload = json.dumps([c.to_dict() for c in cells])
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.predict.batch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _CHILDREN.add(proc)
    try:
        stdout, stderr = proc.communicate(payload, timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        _CHILDREN.discard(proc)
    if proc.returncode != 0:
        tail = stderr.strip().splitlines()[-1:] or ["no output"]
        return [{"error": f"predictor failed: {tail[0]}"} for _ in cells]
    return json.loads(stdout)


def _exit_with_parent(interval_s: float = 0.5) -> None:
    """Exit as soon as the parent (the runner) is gone, even after ``kill -9``.

    The parent's pid comes from ``BENCH_PREDICTOR_PARENT``: a parent killed
    while this process was still starting is noticed too. On Linux the kernel
    also sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``), which
    works while a long import holds the interpreter.
    """
    parent = int(os.environ.get(PARENT_ENV, "0") or 0) or os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()


def main() -> int:
    _exit_with_parent()  # first: importing the predictor (torch) takes seconds
    from bench.predict import version
    from bench.predict.cli import plan_entries

    class _M:  # the shape plan_entries reads
        cells = [normalize(d) for d in json.load(sys.stdin)]

    entries = plan_entries(_M, want_max_batch=False, jobs=1)  # one core: the cells being measured need the rest
    version.stamp(entries)  # a record's prediction says which predictor made it (bench.report.freshness)
    json.dump([{k: e[k] for k in ("predicted", "error") if k in e} for e in entries], sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
