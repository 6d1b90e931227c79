"""Host memory of a process tree, read from ``/proc`` (no psutil).

The sampler uses these to attribute GPU memory to a cell's processes (NVML
reports pids) and, on ``--device cpu``, to measure the cell's resident set
size instead of GPU memory. Everything degrades to empty/zero where ``/proc``
is missing (not Linux), so callers never need to guard.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

PROC = Path("/proc")


def children(pid: int) -> set[int]:
    """Direct children of ``pid`` (every thread's ``children`` file)."""
    out: set[int] = set()
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out.update(int(x) for x in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return out


def tree(root: int) -> set[int]:
    """``root`` and all its descendants that exist right now."""
    seen = {root}
    todo = [root]
    while todo:
        for child in children(todo.pop()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _status_kib(pid: int, field: str) -> int | None:
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pids: set[int] | None = None) -> int:
    """Summed resident set size of ``pids`` [this process] (``statm``: one short line each)."""
    total = 0
    for pid in pids if pids is not None else {os.getpid()}:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux: ``clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's own high-water mark: ``VmHWM``, or ``getrusage`` off Linux."""
    kib = _status_kib(os.getpid(), "VmHWM")
    if kib is not None:
        return kib * 1024
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru if sys.platform == "darwin" else ru * 1024)
