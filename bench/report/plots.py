"""Plots of result records, as inline SVG text (matplotlib, no pyplot state).

Three figures, each a pure function of the records:

- ``peak_vs_batch``: measured peak VRAM against batch size, one panel per
  model, one line per training setup (method, precision, checkpointing, context,
  accumulation), the GPU's memory as a dashed horizontal line; OOM cells are
  crosses on that line.
- ``predicted_vs_measured``: predicted against measured peak with ``y = x``.
- ``throughput_vs_memory``: training tokens/s against peak VRAM, one panel per
  model, with the Pareto front (no other cell is both smaller and faster).

Each SVG is stripped of its XML prolog and metadata (which name external
namespaces) and its element ids are prefixed, so several can live in one page.
Fonts are drawn as paths: the page needs no font or network.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bench.report import labels
from bench.report.catalog import DEFAULT, Catalog

Record = Mapping[str, Any]
GIB = labels.GIB


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def svg(fig, prefix: str) -> str:
    """``fig`` as an ``<svg>`` element with ids prefixed by ``prefix``."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "bench", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)
    text = text.replace(' id="', f' id="{prefix}-').replace('href="#', f'href="#{prefix}-')
    return text.replace("url(#", f"url(#{prefix}-")


def _setup(record: Record, with_seq: bool = True) -> str:
    c = record["cell"]
    parts = [labels.method(c), labels.precision(c)]
    if c.get("grad_ckpt"):
        parts.append("ckpt")
    if with_seq:
        parts.append(f"seq {labels.context(c)}")
    if c.get("grad_accum", 1) > 1:
        parts.append(f"ga {c['grad_accum']}")
    return ", ".join(parts)


def _colors(keys: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    names = sorted(set(keys))
    if len(names) <= 10:
        return {k: colormaps["tab10"](i) for i, k in enumerate(names)}
    # tab20 comes in light/dark pairs: all dark shades first keeps neighbours apart.
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {k: colormaps["tab20"](order[i % 20]) for i, k in enumerate(names)}


def _method(record: Record) -> str:
    """Method without the bracketed extras: the colour key of figures 2 and 3."""
    return labels.method(record["cell"]).split(" [")[0]


def _panels(fig, models: Sequence[str]):
    ncols = min(len(models), 2) or 1
    nrows = max(1, -(-len(models) // ncols))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    return dict(zip(models, axes))


def _models(records: Sequence[Record]) -> list[str]:
    return list(dict.fromkeys(r["cell"]["model"] for r in records))


def _peak(record: Record) -> float | None:
    return (record.get("measured") or {}).get("peak_nvml_process_bytes")


def _empty(fig, message: str) -> None:
    fig.set_size_inches(7, 1)
    ax = fig.subplots()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def peak_vs_batch(records: Sequence[Record], catalog: Catalog = DEFAULT) -> str:
    """Peak VRAM (GiB) against batch size per model and setup, with the GPU's memory."""
    train = [
        r
        for r in records
        if r["cell"].get("task", "train") == "train"
        and (r.get("status") == "oom" or (r.get("status") == "ok" and _peak(r) is not None))
    ]
    models = _models(train)
    fig = _figure(12, 4.2 * max(1, -(-len(models) // 2)) + 1.2)
    if not models:
        _empty(fig, "No training cell with a measured peak.")
        return svg(fig, "peak")
    with_seq = len({labels.context(r["cell"]) for r in train}) > 1
    setups = {id(r): _setup(r, with_seq) for r in train}
    colors = _colors(list(setups.values()))
    for model, ax in _panels(fig, models).items():
        mine = [r for r in train if r["cell"]["model"] == model]
        for cap in sorted({catalog.capacity_of(r) for r in mine} - {None}):  # type: ignore[type-var]
            ax.axhline(cap / GIB, color="0.3", linestyle="--", linewidth=1)  # type: ignore[operator]
            ax.annotate(
                f"GPU memory {cap / GIB:.1f} GiB",  # type: ignore[operator]
                (0.01, cap / GIB),  # type: ignore[operator]
                xycoords=("axes fraction", "data"),
                va="bottom",
                fontsize=8,
                color="0.3",
            )
        for setup in sorted({setups[id(r)] for r in mine}):
            ok = sorted(
                (r["cell"]["batch"], _peak(r) / GIB)  # type: ignore[operator]
                for r in mine
                if setups[id(r)] == setup and r.get("status") == "ok"
            )
            if ok:
                ax.plot(*zip(*ok), marker="o", color=colors[setup])
            for r in mine:
                cap = catalog.capacity_of(r)
                if setups[id(r)] == setup and r.get("status") == "oom" and cap:
                    ax.plot(r["cell"]["batch"], cap / GIB, marker="x", markersize=9, color=colors[setup])
        ax.set_xscale("log", base=2)
        batches = sorted({r["cell"]["batch"] for r in mine})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlim(batches[0] / 1.5, batches[-1] * 1.5)
        ax.set_title(model)
        ax.set_xlabel("batch size per GPU")
        ax.set_ylabel("peak VRAM (GiB)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles = [_line(colors[k], k) for k in colors]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return svg(fig, "peak")


def _line(color, label: str, marker: str = "o"):
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, marker=marker, label=label)


def predicted_vs_measured(records: Sequence[Record]) -> str:
    """Predicted against measured peak (GiB) per method, with ``y = x``."""
    pairs = [
        r
        for r in records
        if r.get("status") == "ok" and _peak(r) is not None and (r.get("predicted") or {}).get("peak_bytes") is not None
    ]
    fig = _figure(7, 6)
    if not pairs:
        _empty(fig, "No cell has both a prediction and a measured peak.")
        return svg(fig, "pred")
    ax = fig.subplots()
    methods = [_method(r) for r in pairs]
    colors = _colors([_method(r) for r in records])
    top = max(max(_peak(r), r["predicted"]["peak_bytes"]) for r in pairs) / GIB * 1.05
    ax.plot([0, top], [0, top], color="0.5", linestyle="--", linewidth=1, label="y = x")
    for method in sorted(set(methods)):
        pts = [(_peak(r) / GIB, r["predicted"]["peak_bytes"] / GIB) for r, m in zip(pairs, methods) if m == method]  # type: ignore[operator]
        ax.scatter(*zip(*pts), color=colors[method], label=method, zorder=3)
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="measured peak VRAM (GiB)", ylabel="predicted peak (GiB)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return svg(fig, "pred")


def pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (memory, throughput) points no other point beats on both, by memory."""
    front: list[tuple[float, float]] = []
    for mem, tput in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or tput > front[-1][1]:
            front.append((mem, tput))
    return front


def throughput_vs_memory(records: Sequence[Record]) -> str:
    """Training tokens/s against peak VRAM per model, with each model's Pareto front."""
    train = [
        r
        for r in records
        if r.get("status") == "ok"
        and r["cell"].get("task", "train") == "train"
        and _peak(r) is not None
        and (r.get("measured") or {}).get("tokens_per_second")
    ]
    models = _models(train)
    fig = _figure(12, 4.2 * max(1, -(-len(models) // 2)) + 0.8)
    if not models:
        _empty(fig, "No training cell with a measured peak and throughput.")
        return svg(fig, "tput")
    from matplotlib.ticker import FuncFormatter

    methods = {id(r): _method(r) for r in train}
    colors = _colors([_method(r) for r in records])
    for model, ax in _panels(fig, models).items():
        mine = [r for r in train if r["cell"]["model"] == model]
        for r in mine:
            ax.scatter(_peak(r) / GIB, r["measured"]["tokens_per_second"], color=colors[methods[id(r)]], zorder=3)  # type: ignore[operator]
        front = pareto([(_peak(r) / GIB, r["measured"]["tokens_per_second"]) for r in mine])  # type: ignore[operator]
        ax.plot(*zip(*front), color="0.2", linewidth=1, drawstyle="steps-post", zorder=2)
        ax.set_title(model)
        ax.set_xlabel("peak VRAM (GiB)")
        ax.set_ylabel("tokens/s")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}"))
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles = [_line(colors[k], k) for k in sorted(set(methods.values()))]
    handles.append(_line("0.2", "Pareto front", marker=""))
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    return svg(fig, "tput")
