"""The scatter and line figures of the HTML report, each a pure function of the records.

- ``peak_vs_batch``: peak memory against batch size, one panel per (model,
  hardware), one line per training setup, the card's memory dashed; an OOM
  cell is a cross on that line (measured), a cell that does not fit a cross
  at its predicted peak (plan).
- ``predicted_vs_measured``: predicted against measured peak with ``y = x``;
  points more than ``LABEL_ERROR`` off are labelled with their cell.
- ``throughput_vs_memory``: training tokens/s against peak memory, one panel
  per (model, hardware), with the Pareto front (no other cell is both
  smaller and faster).

``source`` is ``measured`` (``bench report``) or ``predicted`` (``bench
plan``: the predicted peak and tokens/s). Colours are one per method across
every figure (``figure.method_colors``); every point has a tooltip
(``figure.Tips``). A figure with nothing to show is ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.report import figure as fg, hardware, labels
from bench.report.catalog import DEFAULT, Catalog

Record = Mapping[str, Any]
GIB = labels.GIB
LABEL_ERROR = 0.10
"""Predicted-vs-measured points off by more than this are labelled on the plot."""
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def peak_of(record: Record, source: str) -> float | None:
    """The measured peak (NVML, host RSS on the CPU) or the predicted one."""
    if source == "predicted":
        return (record.get("predicted") or {}).get("peak_bytes")
    return hardware.measured_peak(record)


def _train(record: Record) -> bool:
    return record["cell"].get("task", "train") == "train"


def _setup(record: Record) -> str:
    c = record["cell"]
    parts = [labels.precision(c), f"seq {labels.context(c)}"]
    if c.get("grad_ckpt"):
        parts.append("ckpt")
    if c.get("grad_accum", 1) > 1:
        parts.append(f"ga {c['grad_accum']}")
    return f"{labels.method(c)}, " + ", ".join(parts)


def _failed(record: Record, source: str) -> bool:
    """An OOM cell (measured), or one predicted not to fit (plan)."""
    if source == "predicted":
        return (record.get("predicted") or {}).get("fits") is False
    return record.get("status") == "oom"


def _tip(record: Record, source: str, catalog: Catalog) -> str:
    lines = [fg.describe(record), hardware.gpu_label(record, catalog)]
    peak = peak_of(record, source)
    what = "predicted peak" if source == "predicted" else ("host RSS peak" if hardware.is_cpu(record) else "peak")
    if peak is not None:
        lines.append(f"{what} {labels.gib(peak)} GiB")
    if record.get("status") not in (None, "ok"):
        lines.append(f"status {labels.status(record.get('status'))}")
    return "\n".join(lines)


def peak_vs_batch(
    records: Sequence[Record], colors: dict[str, Any], catalog: Catalog = DEFAULT, source: str = "measured"
) -> fg.Figure | None:
    """Peak (GiB) against batch size per (model, hardware) panel and setup, with the card's memory."""
    if source == "predicted":
        train = [r for r in records if _train(r) and peak_of(r, source) is not None]
    else:
        train = [
            r
            for r in records
            if _train(r)
            and (
                (r.get("status") == "ok" and peak_of(r, source) is not None)
                or (r.get("status") == "oom" and not hardware.is_cpu(r) and catalog.capacity_of(r))
            )
        ]
    keys = fg.panel_keys(train, catalog)
    if not keys:
        return None
    tips = fg.Tips("peak")
    fig = fg.figure(12, 3.8 * -(-len(keys) // 2) + 1.0)
    setups = sorted({_setup(r) for r in train})
    style = {s: i for i, s in enumerate(setups)}
    for key, ax in fg.panels(fig, keys).items():
        mine = [r for r in train if fg.panel_key(r, catalog) == key]
        for cap in sorted({catalog.capacity_of(r) for r in mine if not hardware.is_cpu(r)} - {None}):  # type: ignore[type-var]
            ax.axhline(cap / GIB, color="0.3", linestyle="--", linewidth=1)  # type: ignore[operator]
            ax.annotate(
                f"GPU memory {cap / GIB:.1f} GiB",  # type: ignore[operator]
                (0.01, cap / GIB),  # type: ignore[operator]
                xycoords=("axes fraction", "data"),
                va="bottom",
                fontsize=8,
                color="0.3",
            )
        for setup in sorted({_setup(r) for r in mine}):
            group = sorted((r for r in mine if _setup(r) == setup), key=lambda r: r["cell"]["batch"])
            color = colors[fg.method(group[0])]
            i = style[setup]
            fitting = [(r["cell"]["batch"], peak_of(r, source) / GIB) for r in group if not _failed(r, source)]  # type: ignore[operator]
            if len(fitting) > 1:
                ax.plot(*zip(*fitting), color=color, linestyle=LINESTYLES[i % len(LINESTYLES)], linewidth=1.2)
            for r in group:
                failed = _failed(r, source)
                y = (catalog.capacity_of(r) if r.get("status") == "oom" else peak_of(r, source)) / GIB  # type: ignore[operator]
                ax.plot(
                    r["cell"]["batch"],
                    y,
                    marker="x" if failed else MARKERS[i % len(MARKERS)],
                    markersize=9 if failed else 6,
                    color=color,
                    linestyle="none",
                    gid=tips.gid(_tip(r, source, catalog), r),
                )
        batches = sorted({r["cell"]["batch"] for r in mine})
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlim(batches[0] / 1.5, batches[-1] * 1.5)
        ax.set_title(fg.panel_title(key), fontsize=10)
        cpu = key[1] == "CPU"
        ax.set_xlabel("batch size" if cpu else "batch size per GPU")
        what = "predicted peak" if source == "predicted" else ("peak host RSS" if cpu else "peak VRAM")
        ax.set_ylabel(f"{what} (GiB)")
        caps: list[float] = [catalog.capacity_of(r) or 0 for r in mine if not hardware.is_cpu(r)]
        highest = max([peak_of(r, source) or 0.0 for r in mine] + caps)
        ax.set_ylim(0, highest / GIB * 1.12)  # room above the card's line for its label
        ax.grid(alpha=0.3)
    method_of = {_setup(r): fg.method(r) for r in train}
    handles = [
        fg.legend_handle(
            colors[method_of[s]], s, MARKERS[style[s] % len(MARKERS)], LINESTYLES[style[s] % len(LINESTYLES)]
        )
        for s in setups
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    caption = (
        "Peak memory against batch size, one panel per model and card; the dashed line is the card's memory, "
        + ("a cross a cell predicted not to fit." if source == "predicted" else "a cross an out-of-memory cell.")
        + " Colour: method. Hover a point for its cell."
    )
    return fg.Figure("peak", fg.svg(fig, "peak", tips), len(tips.texts), caption)


def predicted_vs_measured(
    records: Sequence[Record], colors: dict[str, Any], catalog: Catalog = DEFAULT
) -> fg.Figure | None:
    """Predicted against measured GPU peak (GiB), with ``y = x``; CPU runs are left out."""
    pairs = [
        r
        for r in records
        if r.get("status") == "ok"
        and not hardware.is_cpu(r)
        and peak_of(r, "measured") is not None
        and (r.get("predicted") or {}).get("peak_bytes") is not None
    ]
    if not pairs:
        return None
    tips = fg.Tips("pred")
    fig = fg.figure(8, 7)
    ax = fig.subplots()
    top = max(max(peak_of(r, "measured"), r["predicted"]["peak_bytes"]) for r in pairs) / GIB * 1.05  # type: ignore[type-var]
    ax.plot([0, top], [0, top], color="0.5", linestyle="--", linewidth=1)
    labelled = 0
    for r in sorted(pairs, key=lambda r: peak_of(r, "measured") or 0):
        x, y = peak_of(r, "measured") / GIB, r["predicted"]["peak_bytes"] / GIB  # type: ignore[operator]
        error = (y - x) / x
        stale = " (stale prediction)" if r.get("prediction_stale") else ""
        tip = f"{_tip(r, 'measured', catalog)}\npredicted {y:.2f} GiB, error {error * 100:+.1f}%{stale}"
        ax.scatter([x], [y], color=colors[fg.method(r)], zorder=3, s=28, gid=tips.gid(tip, r))
        if abs(error) > LABEL_ERROR:
            # below the diagonal for an under-prediction, above for an over-prediction; staggered so
            # that neighbours do not overlap, and towards the inside of the axes
            dy = (-1 if error < 0 else 1) * (10 + 11 * (labelled % 3))
            ax.annotate(
                f"{labels.model(r['cell']['model'])}, {fg.method(r)}, {fg.short_setup(r)} ({error * 100:+.0f}%)",
                (x, y),
                xytext=(-6 if x > top / 2 else 6, dy),
                textcoords="offset points",
                ha="right" if x > top / 2 else "left",
                fontsize=8,
                arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.6},
            )
            labelled += 1
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="measured peak VRAM (GiB)", ylabel="predicted peak (GiB)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    methods = sorted({fg.method(r) for r in pairs})
    handles = [fg.legend_handle(colors[m], m, linestyle="none") for m in methods]
    handles.append(fg.legend_handle("0.5", "y = x", marker="", linestyle="--"))
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    caption = (
        "Predicted against measured peak VRAM; points above the dashed y = x line over-predict. "
        f"Points off by more than {LABEL_ERROR * 100:.0f}% are labelled. Colour: method."
    )
    return fg.Figure("pred", fg.svg(fig, "pred", tips), len(tips.texts), caption)


def pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (memory, throughput) points no other point beats on both, by memory."""
    front: list[tuple[float, float]] = []
    for mem, tput in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or tput > front[-1][1]:
            front.append((mem, tput))
    return front


def tokens_of(record: Record, source: str) -> float | None:
    section = record.get("predicted" if source == "predicted" else "measured") or {}
    return section.get("tokens_per_second")


def throughput_vs_memory(
    records: Sequence[Record], colors: dict[str, Any], catalog: Catalog = DEFAULT, source: str = "measured"
) -> fg.Figure | None:
    """Training tokens/s against peak per (model, hardware) panel, with each panel's Pareto front."""
    train = [
        r
        for r in records
        if _train(r)
        and peak_of(r, source) is not None
        and tokens_of(r, source)
        and (r.get("status") == "ok" if source == "measured" else (r.get("predicted") or {}).get("fits"))
    ]
    keys = fg.panel_keys(train, catalog)
    if not keys:
        return None
    from matplotlib.ticker import FuncFormatter

    tips = fg.Tips("tput")
    fig = fg.figure(12, 3.8 * -(-len(keys) // 2) + 0.8)
    for key, ax in fg.panels(fig, keys).items():
        mine = [r for r in train if fg.panel_key(r, catalog) == key]
        pts = [(peak_of(r, source) / GIB, float(tokens_of(r, source))) for r in mine]  # type: ignore[operator, arg-type]
        for r, (x, y) in zip(mine, pts):
            tip = f"{_tip(r, source, catalog)}\n{labels.count(y)} tokens/s{hardware.speed_suffix(r) if source == 'measured' else ' predicted'}"
            ax.scatter([x], [y], color=colors[fg.method(r)], zorder=3, s=28, gid=tips.gid(tip, r))
            ax.annotate(fg.short_setup(r), (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7, color="0.3")
        front = pareto(pts)
        ax.plot(*zip(*front), color="0.2", linewidth=1, drawstyle="steps-post", zorder=2)
        ax.set_title(fg.panel_title(key), fontsize=10)
        host = hardware.speed_suffix(mine[0]) if source == "measured" else ""
        ax.set_xlabel(
            ("predicted " if source == "predicted" else "")
            + ("peak host RSS (GiB)" if key[1] == "CPU" else "peak (GiB)")
        )
        ax.set_ylabel(("predicted " if source == "predicted" else "") + f"tokens/s{host}")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}"))
        ax.set_xlim(left=0, right=max(x for x, _ in pts) * 1.25)
        ax.set_ylim(bottom=0, top=max(y for _, y in pts) * 1.15)
        ax.grid(alpha=0.3)
    methods = sorted({fg.method(r) for r in train})
    handles = [fg.legend_handle(colors[m], m, linestyle="none") for m in methods]
    handles.append(fg.legend_handle("0.2", "Pareto front", marker=""))
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    caption = (
        "Training throughput against peak memory, one panel per model and card; the dark line is the Pareto "
        "front (no other cell is both smaller and faster). Labels: batch (b), accumulation (ga), checkpointing."
        + (" Emulated cards' throughput is the host card's." if source == "measured" else "")
    )
    return fg.Figure("tput", fg.svg(fig, "tput", tips), len(tips.texts), caption)
