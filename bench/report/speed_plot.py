"""The throughput plot of ``bench report``: predicted against measured tokens/s.

Drawn where some ``ok`` record has both a measured ``tokens_per_second`` and a
predicted one (records of ``bench run`` carry the step-time prediction,
``bench.predict.speed``). Log-log axes, one colour per method, ``y = x``
dashed: points above it predict the cell faster than it ran.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.report.plots import _colors, _figure, _method, svg

Record = Mapping[str, Any]
CAPTION = "Predicted against measured training throughput (tokens/s); points above the dashed y = x line over-predict."


def pairs(records: Sequence[Record]) -> list[tuple[Record, float, float]]:
    """(record, measured, predicted) tokens/s of the ok training records that have both."""
    out = []
    for r in records:
        m, p = (r.get("measured") or {}).get("tokens_per_second"), (r.get("predicted") or {}).get("tokens_per_second")
        if r.get("status") == "ok" and r["cell"].get("task", "train") == "train" and m and p:
            out.append((r, float(m), float(p)))
    return out


def predicted_vs_measured_throughput(records: Sequence[Record]) -> str:
    both = pairs(records)
    fig = _figure(7, 6)
    ax = fig.subplots()
    colors = _colors([_method(r) for r in records])
    lo = min(min(m, p) for _, m, p in both) / 1.5
    hi = max(max(m, p) for _, m, p in both) * 1.5
    ax.plot([lo, hi], [lo, hi], color="0.5", linestyle="--", linewidth=1, label="y = x")
    for method in sorted({_method(r) for r, _, _ in both}):
        pts = [(m, p) for r, m, p in both if _method(r) == method]
        ax.scatter(*zip(*pts), color=colors[method], label=method, zorder=3)
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(lo, hi),
        ylim=(lo, hi),
        xlabel="measured tokens/s",
        ylabel="predicted tokens/s",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return svg(fig, "speed")
