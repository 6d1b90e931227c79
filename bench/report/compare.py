"""Comparison of two result sets, cell by cell (matched by ``cell_id``).

For each cell, the measured peak (NVML per process on a GPU, host RSS on
``--device cpu``: ``bench.run.record.measured_peak``) and throughput
(tokens/s) of B against A, and a mark:

- ``new failure``: ok in A, OOM/timeout/error in B (a regression)
- ``worse``: peak rose, or throughput fell, by more than its threshold (a regression)
- ``better``: peak fell, or throughput rose, by more than its threshold, and nothing got worse
- ``fixed``: failed in A, ok in B
- ``same``: within thresholds, or failed the same way in both
- ``not comparable``: nothing to compare (skipped, different failures, metric missing)
- ``only in A`` / ``only in B``

Thresholds are fractions (``--threshold peak=5%,throughput=5%``, the default).
``regressed(changes)`` is what makes ``bench compare`` exit 1.

Throughput is noise-aware. It is judged only where both records measured at
least ``--min-steps`` steps (5 by default; ``measured.step_times_seconds``):
from two steps of a CPU smoke run a median means nothing. And a change counts
only past the larger of its threshold and the noise of the two medians: each
side's relative spread is the median absolute deviation of its step times
(times 1.4826, a standard deviation for normal noise) over its median, the
standard error of a median is 1.2533 of that over the root of the step
count, and the noise bound is ``NOISE_Z`` (2) standard errors of the
difference. The note column says why a change was not called.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bench import status
from bench.errors import UserError
from bench.report import labels
from bench.run.record import measured_peak

MARKS = ("new failure", "worse", "better", "fixed", "not comparable", "only in A", "only in B", "same")
REGRESSIONS = ("new failure", "worse")
FAILED = status.FAILED
THRESHOLD_FORM = "peak=5%,throughput=5%"
MIN_STEPS = 5
"""Measured steps each side needs before its throughput change can be called."""
NOISE_Z = 2.0
"""Standard errors of the difference of the two medians a throughput change must exceed."""


@dataclass(frozen=True)
class Thresholds:
    peak: float = 0.05
    """Largest allowed rise of the measured peak, as a fraction."""
    throughput: float = 0.05
    """Largest allowed fall of tokens/s, as a fraction."""
    min_steps: int = MIN_STEPS
    """Measured steps each side needs for its throughput to be judged."""


def parse_thresholds(spec: str | None) -> Thresholds:
    """``peak=5%,throughput=2.5%`` -> ``Thresholds``; missing keys keep their default."""
    if spec is None or not spec.strip():
        return Thresholds()
    values: dict[str, float] = {}
    problems = []
    for item in spec.split(","):
        key, sep, raw = (s.strip() for s in item.partition("="))
        if not sep:
            problems.append(f"--threshold {item.strip()!r} is not key=value; allowed form: {THRESHOLD_FORM}")
        elif key not in ("peak", "throughput"):
            problems.append(f"--threshold {key!r}: unknown key; allowed: peak, throughput, as in {THRESHOLD_FORM}")
        else:
            try:
                number = float(raw[:-1]) if raw.endswith("%") else math.nan
            except ValueError:
                number = math.nan
            if not number >= 0 or math.isinf(number):
                problems.append(
                    f"--threshold {key}: {raw!r} is not allowed; allowed: a percentage >= 0 "
                    f"such as 5%, as in {THRESHOLD_FORM}"
                )
            else:
                values[key] = number / 100
    if problems:
        raise UserError(*problems)
    return Thresholds(
        peak=values.get("peak", Thresholds.peak), throughput=values.get("throughput", Thresholds.throughput)
    )


@dataclass(frozen=True)
class Change:
    cell_id: str
    slug: str
    mark: str
    status: tuple[str | None, str | None]
    peak_bytes: tuple[float | None, float | None]
    tokens_per_second: tuple[float | None, float | None]
    note: str = ""
    """Why a throughput change was not judged, or the noise bound it was judged against."""

    @property
    def peak_delta(self) -> float | None:
        return _delta(*self.peak_bytes)

    @property
    def throughput_delta(self) -> float | None:
        return _delta(*self.tokens_per_second)


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or a == 0 else (b - a) / a


def _metrics(record: Mapping[str, Any] | None) -> tuple[float | None, float | None]:
    """(peak, tokens/s); the peak that decides a fit on the record's device (host RSS on the CPU)."""
    m = (record or {}).get("measured") or {}
    device = ((record or {}).get("environment") or {}).get("device") or "cuda"
    return measured_peak(m, device), m.get("tokens_per_second")


def step_times(record: Mapping[str, Any] | None) -> list[float]:
    """The measured steps' times (warm-up excluded), as recorded."""
    times = ((record or {}).get("measured") or {}).get("step_times_seconds") or []
    return [float(t) for t in times if isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0]


def relative_spread(times: list[float]) -> float:
    """Robust standard deviation of the step times over their median (MAD x 1.4826 / median)."""
    median = statistics.median(times)
    mad = statistics.median(abs(t - median) for t in times)
    return 1.4826 * mad / median


def throughput_noise(a: list[float], b: list[float]) -> float:
    """``NOISE_Z`` standard errors of the relative difference of two medians of step times."""
    variance = sum((1.2533 * relative_spread(t)) ** 2 / len(t) for t in (a, b))
    return NOISE_Z * math.sqrt(variance)


def _throughput(a: Mapping[str, Any], b: Mapping[str, Any], t: Thresholds) -> tuple[float | None, float, str]:
    """(relative change of tokens/s or ``None`` when not judged, the bound it must pass, a note)."""
    delta = _delta(_metrics(a)[1], _metrics(b)[1])
    if delta is None:
        return None, t.throughput, ""
    ta, tb = step_times(a), step_times(b)
    if min(len(ta), len(tb)) < t.min_steps:
        return None, t.throughput, f"tok/s not judged: {min(len(ta), len(tb))} measured steps < {t.min_steps}"
    noise = throughput_noise(ta, tb)
    if noise > t.throughput:
        return delta, noise, f"tok/s noise ±{noise * 100:.1f}%"
    return delta, t.throughput, ""


def _judge(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, t: Thresholds) -> tuple[str, str]:
    """(mark, note) of one cell."""
    if a is None or b is None:
        return ("only in B" if a is None else "only in A"), ""
    sa, sb = a.get("status"), b.get("status")
    if sa == "ok" and sb in FAILED:
        return "new failure", ""
    if sa in FAILED and sb == "ok":
        return "fixed", ""
    if sa != "ok" or sb != "ok":
        return ("same" if sa == sb else "not comparable"), ""
    peak = _delta(_metrics(a)[0], _metrics(b)[0])
    tput, bound, note = _throughput(a, b, t)
    if peak is None and tput is None:
        return "not comparable", note
    if (peak is not None and peak > t.peak) or (tput is not None and tput < -bound):
        return "worse", note
    if (peak is not None and peak < -t.peak) or (tput is not None and tput > bound):
        return "better", note
    return "same", note


def _mark(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, t: Thresholds) -> str:
    return _judge(a, b, t)[0]


def _by_id(records: Iterable[Mapping[str, Any]], side: str) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for r in records:
        if r["cell_id"] in out:
            raise UserError(
                f"{side}: cell {r['cell_id']} ({r.get('slug')}) appears twice "
                f"(in two matrices?); give one matrix folder per side"
            )
        out[r["cell_id"]] = r
    return out


def compare(
    a: Iterable[Mapping[str, Any]], b: Iterable[Mapping[str, Any]], thresholds: Thresholds = Thresholds()
) -> list[Change]:
    """One ``Change`` per cell id in A or B, regressions first, then by slug."""
    ra, rb = _by_id(a, "A"), _by_id(b, "B")
    changes = []
    for cid in set(ra) | set(rb):
        ca, cb = ra.get(cid), rb.get(cid)
        either = ca or cb
        assert either is not None
        mark, note = _judge(ca, cb, thresholds)
        changes.append(
            Change(
                cell_id=cid,
                slug=either.get("slug") or cid,
                mark=mark,
                note=note,
                status=((ca or {}).get("status"), (cb or {}).get("status")),
                peak_bytes=(_metrics(ca)[0], _metrics(cb)[0]),
                tokens_per_second=(_metrics(ca)[1], _metrics(cb)[1]),
            )
        )
    return sorted(changes, key=lambda c: (MARKS.index(c.mark), c.slug, c.cell_id))


def regressed(changes: Iterable[Change]) -> bool:
    return any(c.mark in REGRESSIONS for c in changes)


def summary(changes: list[Change], thresholds: Thresholds) -> str:
    """One line: counts per mark, the thresholds and the verdict."""
    counts = ", ".join(f"{sum(c.mark == m for c in changes)} {m}" for m in MARKS)
    verdict = "REGRESSED" if regressed(changes) else "no regression"
    return (
        f"{len(changes)} cells: {counts} (thresholds: peak +{thresholds.peak * 100:g}%, "
        f"throughput -{thresholds.throughput * 100:g}% or its noise, from {thresholds.min_steps} "
        f"measured steps): {verdict}"
    )


def _unjudged_change(c: Change, thresholds: Thresholds) -> bool:
    """A throughput change past its threshold that was not called (too few steps, noise): listed."""
    d = c.throughput_delta
    return bool(c.note) and d is not None and abs(d) > thresholds.throughput


def render(changes: list[Change], thresholds: Thresholds, show_all: bool = False) -> str:
    """A text table of the cells that changed or whose throughput change was not called
    (all with ``show_all``), then ``summary``."""
    header = (
        "mark",
        "cell",
        "status A -> B",
        "peak A (GiB)",
        "peak B (GiB)",
        "peak",
        "tok/s A",
        "tok/s B",
        "tok/s",
        "note",
    )
    rows = [
        (
            c.mark,
            c.slug,
            f"{c.status[0] or '-'} -> {c.status[1] or '-'}",
            labels.gib(c.peak_bytes[0]),
            labels.gib(c.peak_bytes[1]),
            labels.percent(c.peak_delta, True),
            labels.count(c.tokens_per_second[0]),
            labels.count(c.tokens_per_second[1]),
            labels.percent(c.throughput_delta, True),
            c.note,
        )
        for c in changes
        if show_all or c.mark != "same" or _unjudged_change(c, thresholds)
    ]
    lines = []
    if rows:
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        for r in (header, *rows):
            lines.append(
                "  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()
            )
    lines.append(summary(changes, thresholds))
    return "\n".join(lines) + "\n"
