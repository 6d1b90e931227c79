"""The per-part figure: each cell's predicted memory as stacked parts, next to what was measured.

One panel per (model, hardware), one row per cell. The predicted bar stacks
the prediction's breakdown (``predicted.breakdown``: weights, gradients,
optimizer states, activations, logits and loss, transient working set, KV
cache, communication buffers, CUDA context and workspaces, allocator
reserve; the parts add up to the predicted peak). The measured bar beside it
(``bench report``) stacks what the run recorded: the torch allocator's peak
allocated bytes, its cache (peak reserved minus allocated) and the memory
outside the allocator (NVML's per-process peak minus peak reserved). The
card's memory is the dashed line. Part colours are their own set (pastel) and
the measured bar is grey, so that no part colour reads as a method; the row
label carries the method's colour. CPU runs are left out (no GPU memory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.report import figure as fg, hardware, labels
from bench.report.catalog import DEFAULT, Catalog

Record = Mapping[str, Any]
GIB = labels.GIB
PARTS = (
    ("weights", "weights"),
    ("gradients", "gradients"),
    ("optimizer_states", "optimizer states"),
    ("activations", "activations"),
    ("logits_and_loss", "logits and loss"),
    ("transient", "transient"),
    ("kv_cache", "KV cache"),
    ("communication_buffers", "communication buffers"),
    ("cuda_context_and_workspaces", "CUDA context"),
    ("allocator_reserve", "allocator reserve"),
)
"""Breakdown keys in stacking order, with their legend names; unknown keys follow in name order."""
PART_COLORS = (
    "#8dd3c7", "#bc80bd", "#e5c494", "#bebada", "#fb8072", "#80b1d3", "#b3de69", "#fdb462", "#fccde5", "#d9d9d9"
)  # fmt: skip
"""Pastel (ColorBrewer Set3-like), one per part of ``PARTS`` in order; never a method's colour (tab10)."""
MEASURED = (
    ("torch allocated", "#4d4d4d"),
    ("allocator cache", "#8c8c8c"),
    ("outside the allocator", "#c8c8c8"),
)
BAR = 0.38
"""Height of one bar; a cell's two bars sit either side of its row."""


def _parts(record: Record) -> list[tuple[str, float]]:
    """(legend name, bytes) of the predicted breakdown, in stacking order."""
    breakdown = (record.get("predicted") or {}).get("breakdown") or {}
    known = dict(PARTS)
    keys = [k for k, _ in PARTS if k in breakdown] + sorted(k for k in breakdown if k not in known)
    return [(known.get(k, k.replace("_", " ")), float(breakdown[k])) for k in keys if breakdown[k]]


def _part_color(name: str) -> str:
    names = [n for _, n in PARTS]
    return PART_COLORS[names.index(name)] if name in names else "#999999"


def measured_parts(record: Record) -> list[tuple[str, float]]:
    """(name, bytes) of the measured peak: allocated, allocator cache, outside the allocator."""
    m = record.get("measured") or {}
    peak = hardware.measured_peak(record)
    if peak is None or hardware.is_cpu(record):
        return []
    allocated, reserved = m.get("peak_torch_allocated_bytes"), m.get("peak_torch_reserved_bytes")
    if not isinstance(allocated, (int, float)) or not isinstance(reserved, (int, float)):
        return [("NVML peak", peak)]
    cache = max(0.0, reserved - allocated)
    outside = max(0.0, peak - max(reserved, allocated))
    return [(name, n) for (name, _), n in zip(MEASURED, (float(allocated), cache, outside))]


def _row_label(record: Record) -> str:
    c = record["cell"]
    text = f"{labels.method(c)}, {labels.precision(c)}, {fg.short_setup(record)}, seq {labels.context(c)}"
    if record.get("status") == "oom":
        return text + " (OOM)"
    if record.get("status") is None and (record.get("predicted") or {}).get("fits") is False:
        return text + " (does not fit)"
    return text


def breakdown_bars(
    records: Sequence[Record], colors: dict[str, Any], catalog: Catalog = DEFAULT, measured: bool = True
) -> fg.Figure | None:
    """The stacked per-part bars of ``records`` (predicted, and measured where ``measured``)."""
    rows = [r for r in records if not hardware.is_cpu(r) and (_parts(r) or (measured and measured_parts(r)))]
    keys = fg.panel_keys(rows, catalog)
    if not keys:
        return None
    tips = fg.Tips("parts")
    sizes = [sum(fg.panel_key(r, catalog) == k for r in rows) for k in keys]
    per_row = 0.42 if measured else 0.3
    fig = fg.figure(12, sum(per_row * n + 0.75 for n in sizes) + 1.0)
    axes = fig.subplots(len(keys), 1, squeeze=False, gridspec_kw={"height_ratios": [n + 1.2 for n in sizes]})
    part_color: dict[str, str] = {}
    for key, ax in zip(keys, axes[:, 0]):
        mine = [r for r in rows if fg.panel_key(r, catalog) == key]
        top = 0.0
        for i, r in enumerate(mine):
            y = len(mine) - 1 - i
            bars: list[tuple[str, list[tuple[str, float]], float, tuple | None]] = [
                ("predicted", _parts(r), y + (BAR / 2 if measured else 0), None)
            ]
            if measured:
                bars.append(("measured", measured_parts(r), y - BAR / 2, MEASURED))
            for kind, parts, yy, palette in bars:
                left, total = 0.0, sum(n for _, n in parts)
                for name, n in parts:
                    if palette is None:
                        color = _part_color(name)
                        part_color[name] = color
                    else:
                        color = dict(palette).get(name, "#4d4d4d")
                    tip = (
                        f"{fg.describe(r)}\n{kind}: {name} {n / GIB:.2f} GiB of {total / GIB:.2f} GiB"
                        f" ({100 * n / total:.0f}%)"
                    )
                    ax.barh(yy, n / GIB, left=left / GIB, height=BAR if measured else 0.7, color=color,
                            edgecolor="white", linewidth=0.4, gid=tips.gid(tip, r, kind))  # fmt: skip
                    left += n
                top = max(top, left)
        caps = sorted({c for c in (catalog.capacity_of(r) for r in mine) if c})
        for cap in caps:
            ax.axvline(cap / GIB, color="0.2", linestyle="--", linewidth=1)
            top = max(top, cap)
        ax.set_yticks(range(len(mine)), [_row_label(r) for r in reversed(mine)], fontsize=8)
        for tick, r in zip(ax.get_yticklabels(), reversed(mine)):
            tick.set_color(colors[fg.method(r)])
        ax.set_ylim(-0.7, len(mine) - 0.3)
        ax.set_xlim(0, top / GIB * 1.04)
        cap_text = f" (dashed: card memory {caps[0] / GIB:.1f} GiB)" if len(caps) == 1 else ""
        ax.set_title(fg.panel_title(key) + cap_text, fontsize=10, loc="left")
        ax.set_xlabel("GiB per GPU")
        ax.grid(alpha=0.3, axis="x")
    order = [n for _, n in PARTS] + sorted(n for n in part_color if n not in dict(PARTS).values())
    handles = [
        fg.legend_handle(part_color[n], f"predicted: {n}", marker="s", linestyle="none")
        for n in order
        if n in part_color
    ]
    if measured:
        handles += [fg.legend_handle(c, f"measured: {n}", marker="s", linestyle="none") for n, c in MEASURED]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    caption = "Memory per part of each cell against the card's memory (dashed), one panel per model and card. " + (
        "Upper bar: the prediction's parts, which add up to the predicted peak; lower bar (grey): the measured "
        "peak as torch allocated, allocator cache (reserved - allocated) and memory outside the allocator "
        "(NVML - reserved). Row labels are coloured by method. Hover a segment for its size."
        if measured
        else "Each bar: the prediction's parts, which add up to the predicted peak. Row labels are coloured "
        "by method. Hover a segment for its size."
    )
    return fg.Figure("parts", fg.svg(fig, "parts", tips), len(tips.cells()), caption)
