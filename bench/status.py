"""How a cell ended: the statuses every part of bench speaks.

The worker reports one, the runner's ``outcome`` classifies a child's end into
one, the store validates and resumes by them, ``compare`` and the reports
render them. An OOM is a measurement, not a crash.
"""

from __future__ import annotations

OK = "ok"
"""The cell ran its steps; peaks and timings are measured."""
OOM = "oom"
"""Out of memory (GPU, or host memory under offload): the peaks reached so far are kept."""
TIMEOUT = "timeout"
"""Killed after the runner's timeout, with its process group."""
ERROR = "error"
"""Anything else that went wrong; the record keeps the tail of the child's output."""
SKIPPED = "skipped"
"""Not run: ``--skip-predicted-oom`` and the predictor said it does not fit."""

ALL = (OK, OOM, TIMEOUT, ERROR, SKIPPED)
FINISHED = (OK, OOM)
"""Statuses a re-run keeps; ``error`` and ``timeout`` rerun with ``--retry-failed``."""
FAILED = (OOM, TIMEOUT, ERROR)
"""Statuses of a cell that ran and did not finish its steps."""
REPORTED = (OK, OOM, ERROR)
"""Statuses a worker writes into its ``OUT.json``."""

EXIT_OOM = 3
"""The worker's exit code after it recorded an OOM."""
OOM_MARKERS = (
    "OutOfMemoryError",
    "CUDA out of memory",
    "CUDA error: out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "Cuda failure 'out of memory'",
    # host memory: torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory"),
    # Python's own MemoryError, and errno ENOMEM spelled out
    "can't allocate memory",
    "MemoryError",
    "Cannot allocate memory",
)


def is_oom_text(text: str) -> bool:
    """Whether an error text or output tail says memory ran out."""
    return any(m in text for m in OOM_MARKERS)
