"""Where a measurement goes when the store cannot take it.

A record that cannot be written (a full disk, a filesystem remounted
read-only, permissions changed under a running sweep) must not vanish with the
GPU time it cost. ``keep`` writes it to standard error as one JSON line and to
a file in the first writable folder of ``$BENCH_FALLBACK_DIR``, the temporary
directory, the home folder and the working directory, and returns the
``UserError`` the runner stops with: one line naming the record, the reason
and the fallback file (copy it into the results folder once there is room,
and a re-run skips the cell).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TextIO

from bench.errors import UserError

ENV = "BENCH_FALLBACK_DIR"


def _places() -> list[Path]:
    places = [os.environ.get(ENV), tempfile.gettempdir(), os.path.expanduser("~"), os.getcwd()]
    return [Path(p) for p in dict.fromkeys(p for p in places if p)]


def save(record: dict[str, Any]) -> Path | None:
    """Write ``record`` as JSON into the first place that takes it; ``None`` if none does."""
    text = json.dumps(record, indent=1, sort_keys=True, default=str) + "\n"
    name = f"bench-unsaved-{record.get('cell_id', 'record')}-{os.getpid()}.json"
    for folder in _places():
        path = folder / name
        try:
            path.write_text(text)
            return path
        except OSError:
            try:
                path.unlink(missing_ok=True)  # a partial copy must not pass for the record
            except OSError:
                pass
    return None


def keep(record: dict[str, Any], target: Path, error: OSError, err: TextIO) -> UserError:
    """Save ``record`` that could not be written to ``target``; the error to stop with."""
    print(json.dumps(record, sort_keys=True, default=str), file=err, flush=True)
    saved = save(record)
    where = f"saved in {saved}" if saved else "no writable folder for a copy; it is the JSON line above"
    why = error.strerror or type(error).__name__
    return UserError(
        f"the record of cell {record.get('cell_id')} ({record.get('slug')}, status "
        f"{record.get('status')}) cannot be written to {target} ({why}); it is {where} "
        f"(and on stderr above); stopping: free space or fix the folder, copy the file to "
        f"{target}, and run again"
    )
