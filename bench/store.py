"""The results store: one JSON file per cell, written atomically.

Layout::

    results/<gpu>/machine.json                 what the machine was
    results/<gpu>/<matrix>/<cell_id>.json      one record per cell
    results/<gpu>/<matrix>/<cell_id>.memory.pickle   its CUDA allocator snapshot (bench run --memory-snapshot)

A record is plain data (never executed)::

    {"schema_version": 1, "cell_id": ..., "slug": ..., "label": ..., "matrix": ...,
     "cell": {normalized cell}, "status": "ok|oom|timeout|error|skipped",
     "environment": {...}, "measured": {...} | null, "predicted": {...} | null,
     "prediction_error": float | null, "error": "stderr tail" | null,
     "started_at": iso8601, "finished_at": iso8601}

Files are written to a temporary name in the same folder and renamed, so a
killed writer leaves either the old file or the new one, never half of one.
The temporary name says who writes it (``.tmp-<pid>@<host>-*.json``), so that
``writer_gone`` can tell a leftover of a killed writer from a file being written.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bench import record, status, userfile
from bench.errors import UserError
from bench.limits import short

SCHEMA_VERSION = record.SCHEMA_VERSION
SNAPSHOT_SUFFIX = ".memory.pickle"
STATUSES = status.ALL
FINISHED = status.FINISHED
_UMASK = os.umask(0)
os.umask(_UMASK)  # read once, at import: os.umask can only be read by setting it


def _host_tag(host: str) -> str:
    """A host name as it can stand in a file name (no ``-``, which separates the parts)."""
    return "".join(ch if ch.isalnum() or ch == "." else "_" for ch in host)[:64]


def temp_prefix() -> str:
    """The prefix of this process's temporary files: ``.tmp-<pid>@<host>-``."""
    return f".tmp-{os.getpid()}@{_host_tag(socket.gethostname())}-"


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def writer_gone(name: str) -> bool | None:
    """Whether the writer of the temporary file ``name`` is gone: ``None`` when the name
    says no writer on this host (an older bench, or another host sharing the folder)."""
    parts = name.split("-", 2)
    if len(parts) < 3 or "@" not in parts[1]:
        return None
    pid, _, host = parts[1].partition("@")
    if not pid.isdigit() or host != _host_tag(socket.gethostname()):
        return None
    return not pid_alive(int(pid))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` via temp file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; results are shared data
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_record(path: Path) -> dict[str, Any]:
    """Read one record; refuse other schema versions with the fix."""
    path = Path(path)
    try:
        rec = userfile.load_json(path, "record", finite=False)
    except UserError as e:  # unreadable, not UTF-8, not JSON, too large or too deep
        raise UserError(f"{path}: not a readable result file ({e.problems[0]})") from None
    if not isinstance(rec, dict) or "cell_id" not in rec:
        raise UserError(f"{path}: not a bench result record (no cell_id)")
    if not isinstance(rec["cell_id"], str) or not rec["cell_id"]:
        raise UserError(f"{path}: not a bench result record (cell_id {short(rec['cell_id'])} is not text)")
    version = rec.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(
            f"{path}: schema_version {version!r} is not supported (this bench reads {SCHEMA_VERSION}); "
            f"delete the file and run its matrix again (`bench run MATRIX` measures the missing cell), "
            f"or read it with the bench release that wrote it"
        )
    return rec


def record_files(paths: Iterable[Path | str]) -> list[Path]:
    """Every cell record under the given files or folders, sorted, machine.json excluded."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += [f for f in _json_files(p) if f.name != "machine.json" and not f.name.startswith(".tmp")]
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"results: {str(p)!r} does not exist; give result folders or record files")
    return sorted(set(out))


def _json_files(folder: Path) -> list[Path]:
    """Every ``*.json`` below ``folder`` (symlinked folders followed once); a folder that
    cannot be listed is a ``UserError``, never a silent gap in a report."""

    def unreadable(e: OSError) -> None:
        raise UserError(
            f"results: {str(e.filename)!r} cannot be read ({e.strerror or e}); allowed: folders bench can list"
        )

    out, seen = [], set()
    for top, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        out += [Path(top) / f for f in files if f.endswith(".json")]
    return out


def load_records(paths: Iterable[Path | str]) -> list[dict[str, Any]]:
    return [load_record(f) for f in record_files(paths)]


class Store:
    """A results folder (default ``results/``)."""

    def __init__(self, root: Path | str = "results"):
        self.root = Path(root)

    def folder(self, gpu: str, matrix: str) -> Path:
        return self.root / gpu / matrix

    def path(self, gpu: str, matrix: str, cell_id: str) -> Path:
        return self.folder(gpu, matrix) / f"{cell_id}.json"

    def snapshot_path(self, gpu: str, matrix: str, cell_id: str) -> Path:
        """Where a cell's allocator snapshot goes, beside its record (which names it)."""
        return self.folder(gpu, matrix) / f"{cell_id}{SNAPSHOT_SUFFIX}"

    def write(self, record: dict[str, Any]) -> Path:
        """Persist one record at its place; returns the path."""
        if record.get("status") not in STATUSES:
            raise ValueError(f"record status {record.get('status')!r} not in {STATUSES}")
        rec = {**record, "schema_version": SCHEMA_VERSION}
        path = self.path(rec["cell"]["gpu"], rec["matrix"], rec["cell_id"])
        atomic_write_json(path, rec)
        return path

    def read(self, gpu: str, matrix: str, cell_id: str) -> dict[str, Any] | None:
        p = self.path(gpu, matrix, cell_id)
        return load_record(p) if p.exists() else None

    def statuses(self, gpu: str, matrix: str) -> dict[str, str]:
        """cell_id -> status of every record of one matrix (for resume)."""
        folder = self.folder(gpu, matrix)
        if not folder.is_dir():
            return {}
        return {r["cell_id"]: r.get("status") for r in (load_record(f) for f in record_files([folder]))}  # type: ignore[misc]

    def completed(self, gpu: str, matrix: str, retry_failed: bool = False) -> set[str]:
        """Cell ids a re-run skips: ``ok``/``oom`` always, others unless ``retry_failed``."""
        keep = FINISHED if retry_failed else STATUSES
        return {cid for cid, st in self.statuses(gpu, matrix).items() if st in keep}

    def write_machine(self, gpu: str, info: dict[str, Any]) -> Path:
        path = self.root / gpu / "machine.json"
        atomic_write_json(path, {"schema_version": SCHEMA_VERSION, **info})
        return path

    def iter_records(self) -> Iterator[dict[str, Any]]:
        yield from load_records([self.root]) if self.root.exists() else []
