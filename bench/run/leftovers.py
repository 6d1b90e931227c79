"""What a killed runner leaves behind, and how the next one clears it.

A runner killed with ``kill -9`` cannot clean up after itself; two things
stay: half-written ``.tmp-*`` record files in the matrix folder (never read
as records: ``bench.store`` skips them) and its ``bench-run-<pid>-*`` scratch
folder (job files, worker logs) in the temporary directory. The next runner
clears both, touching only what belongs to a writer that is gone: a temp
file whose writer is alive on this host, or a scratch folder whose runner is
still running, stays. Temp files that name no writer (an older bench wrote
them) are removed only under the runner lock (``bench.run.lock``), which no
other runner of the folder can hold.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bench.store import pid_alive, writer_gone

SCRATCH_PREFIX = "bench-run-"


def scratch_prefix(pid: int | None = None) -> str:
    """The prefix of a runner's scratch folder: ``bench-run-<pid>-``."""
    return f"{SCRATCH_PREFIX}{os.getpid() if pid is None else pid}-"


def clean_stale_temps(folder: Path) -> list[Path]:
    """Remove the ``.tmp-*`` files in a matrix folder whose writer is gone; returns them."""
    removed: list[Path] = []
    if folder.is_dir():
        for f in folder.glob(".tmp-*"):
            if writer_gone(f.name) is not False:
                f.unlink(missing_ok=True)
                removed.append(f)
    return removed


def clean_scratch(root: Path | str | None = None) -> list[Path]:
    """Remove ``bench-run-<pid>-*`` folders under the temp directory whose runner is gone."""
    root = Path(root or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(root.glob(f"{SCRATCH_PREFIX}*"))
    except OSError:
        return removed
    for d in entries:
        pid = d.name[len(SCRATCH_PREFIX) :].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
