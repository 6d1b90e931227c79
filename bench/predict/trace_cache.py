"""An on-disk cache of traced micro-steps, so a second plan does not trace again.

A trace depends only on its ``ShapeKey``, the versions of torch, transformers
and peft, and the predictor's own code; the cache key hashes all of them, so
an upgrade or a code change never reuses a stale trace. Entries are JSON
(plain data, never executed), written atomically. The folder is
``$BENCH_CACHE_DIR`` or ``~/.cache/bench/traces``; ``BENCH_CACHE_DIR=off``
disables the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from bench.predict import blocks, events as tr

FORMAT = 1


def folder() -> Path | None:
    env = os.environ.get("BENCH_CACHE_DIR")
    if env == "off":
        return None
    return Path(env) if env else Path.home() / ".cache" / "bench" / "traces"


@functools.lru_cache(maxsize=1)
def _fingerprint() -> str:
    h = hashlib.sha256(str(FORMAT).encode())
    for dist in ("torch", "transformers", "peft"):
        try:
            h.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            h.update(dist.encode())
    for src in sorted(Path(__file__).parent.glob("*.py")):
        h.update(src.read_bytes())
    return h.hexdigest()


def _path(key) -> Path | None:
    root = folder()
    if root is None:
        return None
    digest = hashlib.sha256((_fingerprint() + repr(key)).encode()).hexdigest()[:32]
    return root / f"{digest}.json"


def load(key, make):
    """The cached ``TrainTrace`` for ``key``, or ``make(key)`` stored for next time."""
    from bench.predict.events import Param, TrainTrace

    path = _path(key)
    if path is not None and path.exists():
        try:
            d = json.loads(path.read_text())
            marks = blocks.Marks(**d["marks"]) if d["marks"] else None
            trace = tr.Trace(
                events=[tuple(e) for e in d["events"]], grad_keys=set(d["grad_keys"]), forward_end=d["forward_end"]
            )
            return TrainTrace(
                params=tuple(Param(p[0], p[1], p[2], p[3], tuple(p[4])) for p in d["params"]),
                buffers_bytes=d["buffers_bytes"],
                input_bytes=d["input_bytes"],
                trace=trace,
                layers=d["layers"],
                marks=marks,
            )
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable entry: trace again and overwrite it
    tt = make(key)
    if path is not None:
        store(
            path,
            {
                "params": [[p.name, p.numel, p.nbytes, p.trainable, list(p.shape)] for p in tt.params],
                "buffers_bytes": tt.buffers_bytes,
                "input_bytes": tt.input_bytes,
                "layers": tt.layers,
                "events": tt.trace.events,
                "grad_keys": sorted(tt.trace.grad_keys),
                "forward_end": tt.trace.forward_end,
                "marks": dataclasses.asdict(tt.marks) if tt.marks else None,
            },
        )
    return tt


_FACTS: dict = {}


def fact(key: tuple, compute):
    """A small fact about the traced models (e.g. transformers' default attention of a
    model type), computed once by ``compute()`` and kept beside the traces under the same
    fingerprint, so that a cached prediction need not import transformers to ask it.
    Values are JSON scalars or lists."""
    if key in _FACTS:
        return _FACTS[key]
    path = _path(("fact", key))
    if path is not None and path.exists():
        try:
            value = json.loads(path.read_text())["value"]
            _FACTS[key] = value
            return value
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable entry: compute it again and overwrite it
    value = _FACTS[key] = compute()
    if path is not None:
        store(path, {"value": value})
    return value


def store(path: Path, d: dict | list) -> None:
    """Write one entry atomically; a read-only home only costs the cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(d, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the cache is an optimisation only
