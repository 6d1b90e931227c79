"""What every figure of the HTML report shares: SVG output with tooltips, colours, panels.

- ``svg(fig, prefix, tips)``: the figure as an inline ``<svg>`` (no XML prolog,
  no metadata naming external namespaces, fonts drawn as paths, element ids
  prefixed so several figures live in one page). Every artist drawn with a
  ``tips.gid(text, record)`` becomes ``<g class="pt" data-cell="ID">`` with an
  SVG ``<title>``: the browser shows it as a tooltip, and a test can count
  the points of each record.
- ``method_colors(records)``: one colour per method, the same in every
  figure of a page (the key is the method without its bracketed extras).
- ``panel_key(record)``: figures have one panel per (model, hardware), so
  cards of different capacity never share a panel, and an emulated card or
  the CPU is named as such.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from bench.report import hardware, labels
from bench.report.catalog import DEFAULT, Catalog

Record = Mapping[str, Any]
GIB = labels.GIB


@dataclass(frozen=True)
class Figure:
    """One rendered figure: its SVG, how many points carry a tooltip, and its caption."""

    key: str
    svg: str
    points: int
    caption: str


@dataclass
class Tips:
    """Tooltip texts of one figure, by the gid of the artist they describe."""

    prefix: str
    texts: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """gid -> (tooltip, cell id, extra CSS class)."""

    def gid(self, text: str, record: Record | None = None, cls: str = "") -> str:
        """A fresh gid for an artist whose tooltip is ``text``, drawn for ``record``'s cell."""
        gid = f"pt{len(self.texts)}"
        self.texts[gid] = (text, str((record or {}).get("cell_id") or ""), cls)
        return gid

    def cells(self, cls: str = "") -> set[str]:
        """The cell ids with an artist (of class ``cls``)."""
        return {cell for _, cell, c in self.texts.values() if not cls or c == cls}


def figure(width: float, height: float):
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), layout="constrained")


def svg(fig, prefix: str, tips: Tips | None = None) -> str:
    """``fig`` as an ``<svg>`` element with ids prefixed by ``prefix`` and tooltips added."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "bench", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)
    text = text.replace(' id="', f' id="{prefix}-').replace('href="#', f'href="#{prefix}-')
    text = text.replace("url(#", f"url(#{prefix}-")
    if tips is not None:

        def titled(m: re.Match) -> str:
            got = tips.texts.get(m.group(1))
            if got is None:
                return m.group(0)
            tip, cell, cls = got
            return (
                f'<g id="{prefix}-{m.group(1)}" class="{f"pt {cls}".strip()}" data-cell="{escape(cell)}">'
                f"<title>{escape(tip)}</title>"
            )

        text = re.sub(rf'<g id="{re.escape(prefix)}-(pt\d+)">', titled, text)
    return text


def method(record: Record) -> str:
    """The method without the bracketed extras: the colour key of every figure."""
    return labels.method(record["cell"]).split(" [")[0]


def method_colors(records: Sequence[Record]) -> dict[str, Any]:
    """One colour per method of ``records``, in sorted order (tab10, then tab20's dark shades first)."""
    from matplotlib import colormaps

    names = sorted({method(r) for r in records})
    if len(names) <= 10:
        return {k: colormaps["tab10"](i) for i, k in enumerate(names)}
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {k: colormaps["tab20"](order[i % 20]) for i, k in enumerate(names)}


def panel_key(record: Record, catalog: Catalog = DEFAULT) -> tuple[str, str]:
    """(model, hardware) of a record: one panel each."""
    return labels.model(record["cell"]["model"]), hardware.panel_label(record, catalog)


def panel_title(key: tuple[str, str]) -> str:
    return f"{key[0]} on {key[1]}"


def panels(fig, keys: Sequence[tuple[str, str]], ncols: int = 2) -> dict[tuple[str, str], Any]:
    """One axes per key, ``ncols`` to a row, unused axes hidden."""
    ncols = min(len(keys), ncols) or 1
    nrows = max(1, -(-len(keys) // ncols))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    return dict(zip(keys, axes))


def panel_keys(records: Sequence[Record], catalog: Catalog = DEFAULT) -> list[tuple[str, str]]:
    """The distinct panel keys in record order."""
    return list(dict.fromkeys(panel_key(r, catalog) for r in records))


def describe(record: Record) -> str:
    """A cell in one tooltip line: model, method, precision, batch, context, ckpt, hardware."""
    c = record["cell"]
    parts = [labels.model(c["model"]), labels.method(c), labels.precision(c), f"batch {c.get('batch')}"]
    parts.append(f"context {labels.context(c)}")
    if c.get("grad_accum", 1) > 1:
        parts.append(f"accumulation {c['grad_accum']}")
    if c.get("grad_ckpt"):
        parts.append("grad ckpt")
    return ", ".join(parts)


def short_setup(record: Record) -> str:
    """What tells cells of one panel and method apart on a label: ``b4 ckpt s2048``."""
    c = record["cell"]
    text = f"b{c.get('batch')}"
    if c.get("grad_accum", 1) > 1:
        text += f" ga{c['grad_accum']}"
    if c.get("grad_ckpt"):
        text += " ckpt"
    return text


def legend_handle(color, label: str, marker: str = "o", linestyle: Any = "-"):
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, marker=marker, linestyle=linestyle, label=label)
