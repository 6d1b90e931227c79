"""How a child's end becomes a status: ``ok``, ``oom``, ``timeout`` or ``error``.

An OOM is a measurement, not a crash. The worker catches
``torch.OutOfMemoryError`` itself and writes ``OUT.json`` with status ``oom``
and the peaks it reached; ``classify`` also recognises an OOM the worker could
not report (another rank's traceback in the output, or the kernel's OOM killer
sending SIGKILL when host memory ran out, e.g. under CPU offload, or a host
allocation that failed on ``--device cpu``). Whatever is
not ``ok`` keeps the tail of the child's output, so the store says why.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from bench.status import ERROR, EXIT_OOM, OK, OOM, REPORTED, TIMEOUT, is_oom_text

TAIL_LINES = 40
TAIL_CHARS = 4000


def tail(path: Path | str, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    """The last ``lines`` lines (at most ``chars`` characters) of a log file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 8 * chars))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-chars:]


def read_out(path: Path | str) -> dict[str, Any] | None:
    """The worker's ``OUT.json``, or ``None`` when it is missing or unreadable."""
    try:
        out = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return out if isinstance(out, dict) else None


def failed(message: str, status: str = ERROR) -> dict[str, Any]:
    """A result for a job that produced nothing to read."""
    return {"status": status, "measured": None, "environment": {}, "error": message, "returncode": None}


def timed_out(timeout_s: float, output_tail: str, out: dict[str, Any] | None) -> dict[str, Any]:
    """The result of a child killed (with its group) after ``timeout_s``.

    A worker that had already written its ``OUT.json`` and then hung (in a
    library's teardown) keeps its result, with a note.
    """
    message = f"timeout after {timeout_s:g} s (process group killed)"
    if out is not None and out.get("status") in (OK, OOM):
        result = classify(0 if out["status"] == "ok" else EXIT_OOM, output_tail, out)
        result["error"] = f"{message} after the worker reported {out['status']}\n{result.get('error') or ''}".rstrip()
        return result
    result = failed(f"{message}\n{output_tail}".rstrip(), TIMEOUT)
    if out:
        result["measured"] = out.get("measured")
        result["environment"] = out.get("environment") or {}
    return result


def classify(returncode: int, output_tail: str, out: dict[str, Any] | None) -> dict[str, Any]:
    """Status, measurements and error text of a child that ended by itself.

    - ``OUT.json`` present: its status stands (the worker knows best; a
      non-zero exit after a complete ``ok`` report, e.g. a crash in a library's
      teardown, is noted in ``error`` but does not void the measurement);
    - killed by SIGKILL without one: ``oom`` (host memory; the OOM killer);
    - an OOM traceback in the output: ``oom``;
    - anything else: ``error`` with the output's tail.
    """
    result: dict[str, Any] = {
        "status": ERROR,
        "measured": None,
        "environment": {},
        "error": None,
        "returncode": returncode,
    }
    if out is not None and out.get("status") in REPORTED:
        result.update(status=out["status"], measured=out.get("measured"), environment=out.get("environment") or {})
        if out["status"] == "ok" and returncode != 0:
            result["error"] = f"the worker reported ok, then exited with {returncode}\n{output_tail}".rstrip()
        elif out["status"] != "ok":
            result["error"] = (out.get("error") or "") + ("\n" + output_tail if output_tail else "")
        return result
    if returncode == -signal.SIGKILL:
        result.update(status=OOM, error=f"killed by SIGKILL (host out of memory?)\n{output_tail}".rstrip())
    elif is_oom_text(output_tail):
        result.update(status=OOM, error=output_tail)
    else:
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        result.update(error=f"{how}\n{output_tail}".rstrip())
    return result
