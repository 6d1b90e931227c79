"""What a run prints: one line per finished cell, and a bar with ETA on a TTY.

The line (stdout) says the status, the peak that decides fitting (GiB =
2**30 bytes; NVML per-process on a GPU, host RSS on the CPU), throughput and
the prediction error. The bar goes to stderr only when stderr is a terminal,
so logs and pipes stay clean.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from bench.dtypes import GiB as GIB
from bench.run.record import measured_peak


def line(record: dict[str, Any], done: int, total: int) -> str:
    """``[ 3/11] ok      slug  peak 1.23 GiB  4567 tok/s  pred +5.1%  8.2 s``."""
    width = len(str(total))
    m = record.get("measured") or {}
    device = (record.get("environment") or {}).get("device", "cuda")
    parts = [f"[{done:>{width}}/{total}]", f"{record['status']:<8}", record["slug"]]
    peak = measured_peak(m, device)
    if peak is not None:
        parts.append(f"peak {peak / GIB:.2f} GiB" + (" host" if device == "cpu" else ""))
    if m.get("tokens_per_second"):
        parts.append(f"{m['tokens_per_second']:.0f} tok/s")
    if record.get("prediction_error") is not None and device != "cpu":  # a GPU prediction is no host RSS
        parts.append(f"pred {record['prediction_error']:+.1%}")
    if m.get("wall_seconds") is not None:
        parts.append(f"{m['wall_seconds']:.1f} s")
    if record["status"] not in ("ok",) and record.get("error"):
        first = next((ln for ln in reversed(record["error"].strip().splitlines()) if ln.strip()), "")
        parts.append(f"({first.strip()[:120]})")
    return "  ".join(parts)


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts finished cells against ``total`` (which may grow, e.g. bisection)."""

    def __init__(self, total: int, out: TextIO | None = None, err: TextIO | None = None):
        self.total = total
        self.done = 0
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.started = time.monotonic()
        self.tty = bool(getattr(self.err, "isatty", lambda: False)())

    def eta_seconds(self) -> float | None:
        if self.done == 0:
            return None
        per_cell = (time.monotonic() - self.started) / self.done
        return per_cell * max(0, self.total - self.done)

    def bar(self, width: int = 30) -> str:
        filled = int(width * self.done / self.total) if self.total else width
        eta = self.eta_seconds()
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
            f"  elapsed {_clock(time.monotonic() - self.started)}"
            f"  ETA {_clock(eta) if eta is not None else '?'}"
        )

    def _clear(self) -> None:
        if self.tty:
            self.err.write("\r\033[K")

    def show(self) -> None:
        if self.tty:
            self._clear()
            self.err.write(self.bar())
            self.err.flush()

    def cell_done(self, record: dict[str, Any]) -> None:
        self.done += 1
        self.total = max(self.total, self.done)
        self._clear()
        print(line(record, self.done, self.total), file=self.out, flush=True)
        self.show()

    def note(self, text: str) -> None:
        self._clear()
        print(text, file=self.out, flush=True)
        self.show()

    def finish(self) -> None:
        if self.tty:
            self._clear()
            self.err.flush()
