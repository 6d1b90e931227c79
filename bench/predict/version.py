"""The predictor's version: a hash of everything a prediction is a function of.

Every prediction stored in a record carries it (``predicted.predictor_version``,
stamped by ``stamp`` in ``bench.predict.batch`` for the runner, and in ``bench plan``'s output), so that a report can tell a prediction
made by the code it runs from one made by an older predictor: ``bench
report`` predicts stale ones afresh (``bench.report.freshness``). Like the
trace cache key (``bench.predict.trace_cache``) it hashes the predictor's code
and the versions of the libraries it traces, and also the shared decisions
and data a prediction reads (recipe, CUDA overhead, architectures, the GPU
and model catalogs). It is computed from files and package metadata only:
importing this module loads no torch.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

_BENCH = Path(__file__).resolve().parents[1]
SOURCES = (
    "predict/*.py",
    "recipe.py",
    "overhead.py",
    "architectures.py",
    "dtypes.py",
    "cell.py",
    "data/gpus.json",
    "data/models/*.json",
)
"""Globs under ``bench/`` whose bytes a prediction depends on."""
LIBRARIES = ("torch", "transformers", "peft")
KEY = "predictor_version"
"""The key of ``predicted`` that holds it."""


@functools.lru_cache(maxsize=1)
def current() -> str:
    """The running predictor's version: 16 hex digits of a SHA-256."""
    h = hashlib.sha256()
    for dist in LIBRARIES:
        try:
            h.update(f"{dist}={metadata.version(dist)}\n".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=none\n".encode())
    for pattern in SOURCES:
        for src in sorted(_BENCH.glob(pattern)):
            h.update(src.relative_to(_BENCH).as_posix().encode() + b"\0")
            h.update(src.read_bytes())
    return h.hexdigest()[:16]


def stamp(entries: list[dict]) -> list[dict]:
    """``entries`` (of ``plan_entries``) with each prediction marked with ``current()``; in place."""
    for e in entries:
        if isinstance(e.get("predicted"), dict):
            e["predicted"][KEY] = current()
    return entries
