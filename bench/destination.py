"""Where bench writes: output files (``-o``) and the results folder (``--results``).

Both are checked before any work is done or anything is printed, so that a
path naming a folder, a path under a regular file, a read-only or full
filesystem ends in one ``error:`` line at the start, not in a traceback after
the table was already shown (or after a cell was measured). Writing itself
still reports an ``OSError`` the same way: a disk can fill up in between.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.errors import UserError

MIN_FREE_BYTES = 2**20
"""Free space a results folder needs before a run starts (a record is a few KiB)."""


def _existing_ancestor(path: Path, flag: str, start: Path | None = None) -> Path:
    """The nearest of ``start`` and its parents that exists (``start``: ``path``); it must be a folder."""
    start = path if start is None else start
    for candidate in (start, *start.parents):
        if candidate.exists() or candidate.is_symlink():
            if not candidate.is_dir():
                raise UserError(
                    f"{flag} {str(path)!r}: {str(candidate)!r} is a file, not a folder; "
                    f"allowed: a path whose parents are folders"
                )
            return candidate
    return Path(".")


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


def check_file(path: str | Path, flag: str = "-o") -> Path:
    """``path`` as a file bench may create or replace; ``UserError`` otherwise."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a folder; allowed: a file name (e.g. {str(path / 'report.md')!r})")
    folder = _existing_ancestor(path, flag, path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(
            f"{flag} {str(path)!r} cannot be written (permission denied or a read-only filesystem); "
            f"allowed: a writable file"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} {str(path)!r}: the folder {str(folder)!r} is not writable "
            f"(permission denied or a read-only filesystem); allowed: a path in a writable folder"
        )
    return path


def write_text(path: str | Path, text: str, flag: str = "-o") -> Path:
    """Write ``text`` to a checked ``path`` (parents created); an ``OSError`` becomes one line."""
    path = check_file(path, flag)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise UserError(f"{flag} {str(path)!r} cannot be written ({_why(e)})") from None
    return path


def write_bytes(path: str | Path, data: bytes, flag: str = "-o") -> Path:
    """Write ``data`` to a checked ``path`` (parents created); an ``OSError`` becomes one line."""
    path = check_file(path, flag)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as e:
        raise UserError(f"{flag} {str(path)!r} cannot be written ({_why(e)})") from None
    return path


def check_folder(path: str | Path, flag: str = "--results", min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """``path`` as a folder bench may create and fill: a folder (or creatable), writable,
    with at least ``min_free_bytes`` free."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a file; allowed: a folder (it holds <gpu>/<matrix>/ records)")
    folder = _existing_ancestor(path, flag)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} {str(path)!r}: {str(folder)!r} is not writable "
            f"(permission denied or a read-only filesystem); allowed: a writable folder"
        )
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return path
    if free < min_free_bytes:
        raise UserError(
            f"{flag} {str(path)!r}: only {free:,} bytes free on its filesystem; "
            f"allowed: at least {min_free_bytes:,} bytes free"
        )
    return path
