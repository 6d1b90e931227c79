"""The throughput plot of ``bench report``: predicted against measured tokens/s.

Drawn where some ``ok`` GPU record has both a measured ``tokens_per_second``
and a predicted one (records of ``bench run`` carry the step-time prediction,
``bench.predict.speed``). Log-log axes, one colour per method (the page's),
``y = x`` dashed: points above it predict the cell faster than it ran. An
emulated run's measured speed is the host card's: it is plotted against the
prediction for the host card (``predicted_on_host``, made by
``bench.report.freshness``) where there is one, else against the target's,
hollow and said so in its tooltip. CPU runs are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.report import figure as fg, hardware, labels

Record = Mapping[str, Any]
CAPTION = (
    "Predicted against measured training throughput (tokens/s); points above the dashed y = x line "
    "over-predict. An emulated run is compared with the prediction for the card that ran it; a hollow point "
    "ran emulated and has only the target card's prediction. Colour: method."
)


def _like_for_like(record: Record) -> bool:
    """The prediction plotted is for the card that measured the speed."""
    return hardware.emulation(record) is None or bool((record.get("predicted_on_host") or {}).get("tokens_per_second"))


def predicted_tokens(record: Record) -> float | None:
    """The predicted tokens/s to set against the measured: the host card's for an emulated run, where known."""
    host = (record.get("predicted_on_host") or {}).get("tokens_per_second")
    if hardware.emulation(record) is not None and host:
        return float(host)
    return (record.get("predicted") or {}).get("tokens_per_second")


def pairs(records: Sequence[Record]) -> list[tuple[Record, float, float]]:
    """(record, measured, predicted) tokens/s of the ok GPU training records that have both."""
    out = []
    for r in records:
        m, p = (r.get("measured") or {}).get("tokens_per_second"), predicted_tokens(r)
        if r.get("status") == "ok" and r["cell"].get("task", "train") == "train" and m and p and not hardware.is_cpu(r):
            out.append((r, float(m), float(p)))
    return out


def predicted_vs_measured_throughput(records: Sequence[Record], colors: dict[str, Any]) -> fg.Figure | None:
    both = pairs(records)
    if not both:
        return None
    tips = fg.Tips("speed")
    fig = fg.figure(8, 7)
    ax = fig.subplots()
    lo = min(min(m, p) for _, m, p in both) / 1.5
    hi = max(max(m, p) for _, m, p in both) * 1.5
    ax.plot([lo, hi], [lo, hi], color="0.5", linestyle="--", linewidth=1)
    for r, m, p in both:
        color = colors[fg.method(r)]
        hollow = not _like_for_like(r)
        host = (r.get("predicted_on_host") or {}).get("gpu")
        card = f" for {host}" if host and not hollow else (" for the target card" if hollow else "")
        tip = (
            f"{fg.describe(r)}\n{hardware.gpu_label(r)}\nmeasured {labels.count(m)} tokens/s"
            f"{hardware.speed_suffix(r)}, predicted{card} {labels.count(p)} ({(p - m) / m * 100:+.0f}%)"
        )
        ax.scatter(
            [m], [p], s=30, zorder=3, gid=tips.gid(tip, r),
            facecolors="none" if hollow else color, edgecolors=color,
        )  # fmt: skip
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
    ax.set(xlabel="measured tokens/s", ylabel="predicted tokens/s")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3, which="both")
    methods = sorted({fg.method(r) for r, _, _ in both})
    handles = [fg.legend_handle(colors[k], k, linestyle="none") for k in methods]
    if any(not _like_for_like(r) for r, _, _ in both):
        from matplotlib.lines import Line2D

        handles.append(
            Line2D([], [], marker="o", linestyle="none", markerfacecolor="none", color="0.3",
                   label="hollow: emulated, predicted for the target card")
        )  # fmt: skip
    handles.append(fg.legend_handle("0.5", "y = x", marker="", linestyle="--"))
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    return fg.Figure("speed", fg.svg(fig, "speed", tips), len(tips.texts), CAPTION)
