"""``--find-max-batch``: the largest batch that fits, in O(log n) runs.

Cells that differ only in ``batch`` form a group. Fitting is assumed monotone
(if batch b fits, every smaller batch fits), so the boundary is found by
bisection, starting where the predictor puts it: a good prediction costs two
or three runs, a bad one still only ``log2`` of the range.

- A group with two or more listed batches searches those values: the answer
  is the largest listed batch that fits.
- A group with one batch searches all integers: doubling from the start until
  a run fails, then bisecting between the last fit and the first failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from bench.cell import Cell

LIMIT = 1 << 16
"""The largest batch an open-ended search tries."""


def group_key(cell: Cell) -> str:
    """What a group shares: every field except ``batch`` and ``label``."""
    d = cell.to_dict()
    d.pop("batch")
    d.pop("label")
    return json.dumps(d, sort_keys=True)


def groups(cells: list[Cell]) -> dict[str, list[Cell]]:
    """Cells grouped by ``group_key``, each group sorted by batch, in first-seen order."""
    out: dict[str, list[Cell]] = {}
    for c in cells:
        out.setdefault(group_key(c), []).append(c)
    return {k: sorted(v, key=lambda c: c.batch) for k, v in out.items()}


@dataclass
class BatchSearch:
    """Bisection over batch sizes; feed it results with ``record``.

    Contract: call ``next()`` for the batch to run (``None`` when the search
    is over), run it, then ``record(batch, fits)``; repeat. ``best`` is then
    the largest batch known to fit (``None`` if even the smallest failed).
    """

    start: int
    candidates: list[int] | None = None
    limit: int = LIMIT
    probes: list[tuple[int, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.candidates is not None:
            self.candidates = sorted(set(self.candidates))
            below = [i for i, b in enumerate(self.candidates) if b <= self.start]
            self._next: int | None = below[-1] if below else 0
            self.hi: int | None = len(self.candidates)  # a virtual failure just past the list
        else:
            self._next = min(max(self.start, 1), self.limit) - 1
            self.hi = None  # no failure seen yet: grow until one
        self.lo = -1  # index of the largest batch known to fit

    def value(self, index: int) -> int:
        return self.candidates[index] if self.candidates is not None else index + 1

    def next(self) -> int | None:
        """The next batch to run, or ``None`` when the boundary is known."""
        if self._next is not None:
            return self.value(self._next)
        if self.hi is None:  # open-ended (integers only): double the last fit
            grow = min(2 * (self.lo + 1), self.limit) - 1
            if grow <= self.lo:
                return None
            self._next = grow
            return self.value(grow)
        if self.hi - self.lo <= 1:
            return None
        self._next = (self.lo + self.hi) // 2
        return self.value(self._next)

    def record(self, batch: int, fits: bool) -> None:
        """The outcome of running ``batch``."""
        index = self.candidates.index(batch) if self.candidates is not None else batch - 1
        self.probes.append((batch, fits))
        if fits:
            self.lo = max(self.lo, index)
        else:
            self.hi = index if self.hi is None else min(self.hi, index)
        if self._next == index:
            self._next = None

    @property
    def best(self) -> int | None:
        return self.value(self.lo) if self.lo >= 0 else None

    def summary(self) -> str:
        ran = ", ".join(f"{b} {'ok' if ok else 'no'}" for b, ok in self.probes)
        return f"{self.best if self.best is not None else 'none fits'} (ran {ran})"
