"""HTML exporter: one self-contained page (inline CSS and SVG; no script, no link).

The page holds the table (one ``<tbody>`` per model, failed cells tinted),
its footnotes and, in ``measured`` mode, the three plots of
``bench.report.plots``. Nothing is fetched when it is opened: it works from a
file, offline, and can be mailed or attached as is.
"""

from __future__ import annotations

from html import escape

from bench.report import plots, speed_plot
from bench.report.catalog import DEFAULT, Catalog
from bench.report.table import Table

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
div.scroll { overflow-x: auto; }
th, td { padding: 3px 7px; border-bottom: 1px solid #ddd; white-space: nowrap; }
td.wrap { white-space: normal; min-width: 12em; }
th { background: #f3f3f3; position: sticky; top: 0; text-align: left; vertical-align: bottom; white-space: normal; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr.group th { background: #e8eef7; text-align: left; position: static; }
tr.oom td, tr.error td, tr.timeout td { background: #fdecea; }
tr.skipped td { background: #f5f5f5; color: #777; }
figure { margin: 2em 0; }
figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; max-width: 60em; }
ul.notes { color: #444; font-size: 13px; }
""".strip()

CAPTIONS = (
    "Peak VRAM against batch size per model and setup; the dashed line is the GPU's memory, "
    "a cross an out-of-memory cell.",
    "Predicted against measured peak VRAM; points above the dashed y = x line over-predict.",
    "Training throughput against peak VRAM per model; the dark line is the Pareto front "
    "(no other cell is both smaller and faster).",
)


def _table(table: Table) -> list[str]:
    cls = {c.key: ' class="num"' if c.numeric else "" for c in table.columns}
    cls["method"] = ' class="wrap"'  # the one long text column may wrap
    out = ['<div class="scroll"><table>', "<thead><tr>"]
    out += [f"<th{cls[c.key]}>{escape(c.title)}</th>" for c in table.columns]
    out.append("</tr></thead>")
    for group, rows in table.groups:
        out.append(f'<tbody><tr class="group"><th colspan="{len(table.columns)}">{escape(group)}</th></tr>')
        for row in rows:
            status = escape(str(row.record.get("status") or ""))
            cells = "".join(f"<td{cls[c.key]}>{escape(t)}</td>" for c, t in zip(table.columns, row.cells))
            out.append(f'<tr class="{status}">{cells}</tr>')
        out.append("</tbody>")
    out.append("</table></div>")
    return out


def render(table: Table, title: str = "bench report", catalog: Catalog = DEFAULT) -> str:
    """The page for ``table``; in ``measured`` mode its rows' records feed the three plots."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>\n{CSS}\n</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    if not table.rows:
        out.append("<p>No result records.</p>")
    out += _table(table)
    out.append('<ul class="notes">')
    out += [f"<li>{escape(note)}</li>" for note in table.notes]
    out.append("</ul>")
    if table.mode == "measured":
        ordered = [row.record for row in table.rows]
        figures = (
            plots.peak_vs_batch(ordered, catalog),
            plots.predicted_vs_measured(ordered),
            plots.throughput_vs_memory(ordered),
        )
        captions: tuple[str, ...] = CAPTIONS
        if speed_plot.pairs(ordered):  # records that carry a step-time prediction
            figures += (speed_plot.predicted_vs_measured_throughput(ordered),)  # type: ignore[assignment]
            captions += (speed_plot.CAPTION,)
        for i, (figure, caption) in enumerate(zip(figures, captions), 1):
            out.append(f"<figure>{figure}<figcaption>Figure {i}. {escape(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
