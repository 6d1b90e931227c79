"""One runner per results folder: an advisory lock on ``<matrix folder>/.lock``.

Two ``bench run`` of one matrix into one results folder would each measure
every missing cell (twice the GPU time, each competing with the other for the
machine, so both measurements are off) and one could delete the other's
half-written record. ``RunnerLock`` takes an exclusive ``fcntl.flock`` on the
matrix folder's ``.lock`` file before any cell runs and holds it until the
runner ends; the kernel drops it when the process dies, even under ``kill -9``,
so a stale lock cannot outlive its runner. The holder writes who it is (pid,
host, start time) into the file, and a second runner refuses with that line
(exit 2). The file itself is left in place: deleting a lock file lets a third
runner lock a new file while the second still holds the old one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.errors import UserError

LOCK_NAME = ".lock"


def _holder(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


class RunnerLock:
    """An exclusive lock on a matrix folder, taken by ``acquire`` and dropped by ``release``."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, what: str = "") -> RunnerLock:
        """Take the lock or raise ``UserError`` naming the runner that holds it."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise UserError(f"--results: cannot create the lock {str(self.path)!r} ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            h = _holder(self.path)
            who = (
                f"pid {h.get('pid', '?')} on {h.get('host', '?')} since {h.get('started_at', '?')}"
                if h
                else "another process"
            )
            raise UserError(
                f"{self.folder} is in use by another bench run ({who}); "
                f"wait for it to finish, or give another --results folder"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "what": what,
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        except OSError:
            pass  # the lock holds without the note (a full disk is reported when a record is written)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunnerLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()
