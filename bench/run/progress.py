"""What a run prints: one line per finished cell, and a tqdm bar with ETA on a TTY.

The line (stdout) says the status, the peak that decides fitting (GiB =
2**30 bytes; NVML per-process on a GPU, host RSS on the CPU), throughput and
the prediction error. The bar goes to stderr only when stderr is a terminal,
so logs and pipes stay clean.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from bench import progressbar
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


class Progress:
    """Counts finished cells against ``total`` (which may grow, e.g. bisection): a line per
    cell on ``out``, and a ``tqdm`` bar with the elapsed time and ETA on ``err`` when it is a
    terminal (``bench.progressbar``)."""

    def __init__(self, total: int, out: TextIO | None = None, err: TextIO | None = None):
        self.done = 0
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.bar = progressbar.bar(total, "run", self.err)
        self.tty = not self.bar.disable

    @property
    def total(self) -> int:
        return int(self.bar.total or 0)

    def _print(self, text: str) -> None:
        self.bar.clear()
        print(text, file=self.out, flush=True)
        self.bar.refresh()

    def cell_done(self, record: dict[str, Any]) -> None:
        self.done += 1
        if self.done > self.total:
            self.bar.total = self.done
        self._print(line(record, self.done, self.total))
        self.bar.update(1)

    def note(self, text: str) -> None:
        self._print(text)

    def finish(self) -> None:
        self.bar.close()
