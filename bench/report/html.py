"""HTML exporter: one self-contained page (inline CSS, SVG and one small script; nothing fetched).

The page holds a filter box, the table (click a header to sort; failed
cells tinted; ``bench.report.interactive``), its footnotes, then the
figures:

- ``measured`` mode (``bench report``): the per-part bars, predicted next to
  measured (``bench.report.breakdown``), peak against batch size, predicted
  against measured peak, throughput against memory (``bench.report.plots``)
  and, where records carry a step-time prediction, predicted against
  measured throughput (``bench.report.speed_plot``);
- ``plan`` mode (``bench plan -o plan.html``): the same figures of the
  predictions: per-part bars, predicted peak against batch size, predicted
  throughput against predicted peak.

One colour per method in every figure; one panel per (model, card); every
point has a tooltip. A figure with nothing to draw is named with why. Nothing
is fetched when the page is opened: it works from a file, offline, and can be
mailed or attached as is.
"""

from __future__ import annotations

from html import escape

from bench.report import breakdown, figure as fg, interactive, plots, speed_plot
from bench.report.catalog import DEFAULT, Catalog
from bench.report.table import Table

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
div.scroll { overflow: auto; max-height: 80vh; }
th, td { padding: 3px 7px; border-bottom: 1px solid #ddd; white-space: nowrap; }
td.wrap { white-space: normal; min-width: 12em; }
th { background: #f3f3f3; position: sticky; top: 0; text-align: left; vertical-align: bottom; white-space: normal;
     cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.oom td, tr.error td, tr.timeout td { background: #fdecea; }
tr.skipped td { background: #f5f5f5; color: #777; }
tr.nofit td { background: #fdecea; }
div.controls { margin: 0.5em 0; }
input#filter { font: inherit; padding: 3px 6px; width: 24em; }
span#shown { color: #555; margin-left: 1em; }
figure { margin: 2em 0; }
figure svg { max-width: 100%; height: auto; }
g.pt:hover { opacity: 0.6; }
figcaption { color: #555; max-width: 60em; }
ul.notes { color: #444; font-size: 13px; max-width: 80em; }
p.nofigure { color: #777; }
""".strip()


def _row_class(record) -> str:
    status = str(record.get("status") or "")
    if not status and (record.get("predicted") or {}).get("fits") is False:
        return "nofit"
    return status


def _table(table: Table) -> list[str]:
    cls = {c.key: ' class="num"' if c.numeric else "" for c in table.columns}
    cls["method"] = ' class="wrap"'  # the one long text column may wrap
    out = [
        '<div class="controls"><input id="filter" type="search" placeholder="filter rows: e.g. lora h200 -oom" '
        'aria-label="filter rows"><span id="shown"></span></div>',
        '<div class="scroll"><table id="cells">',
        "<thead><tr>",
    ]
    out += [f"<th{cls[c.key]}>{escape(c.title)}</th>" for c in table.columns]
    out.append("</tr></thead><tbody>")
    for row in table.rows:
        cells = "".join(f"<td{cls[c.key]}>{escape(t)}</td>" for c, t in zip(table.columns, row.cells))
        cell_id = escape(str(row.record.get("cell_id") or ""))
        out.append(f'<tr class="{escape(_row_class(row.record))}" data-cell="{cell_id}">{cells}</tr>')
    out.append("</tbody></table></div>")
    return out


def figures(table: Table, catalog: Catalog = DEFAULT) -> list[tuple[str, fg.Figure | None]]:
    """(name, figure or ``None`` when it has nothing to draw) of the table's mode, in page order."""
    records = [row.record for row in table.rows]
    colors = fg.method_colors(records)
    if table.mode == "plan":
        return [
            ("per-part memory", breakdown.breakdown_bars(records, colors, catalog, measured=False)),
            ("peak against batch size", plots.peak_vs_batch(records, colors, catalog, source="predicted")),
            ("throughput against memory", plots.throughput_vs_memory(records, colors, catalog, source="predicted")),
        ]
    out = [
        ("per-part memory", breakdown.breakdown_bars(records, colors, catalog)),
        ("peak against batch size", plots.peak_vs_batch(records, colors, catalog)),
        ("predicted against measured peak", plots.predicted_vs_measured(records, colors, catalog)),
        ("throughput against memory", plots.throughput_vs_memory(records, colors, catalog)),
    ]
    if speed_plot.pairs(records):
        out.append(
            ("predicted against measured throughput", speed_plot.predicted_vs_measured_throughput(records, colors))
        )
    return out


WHY_EMPTY = {
    "per-part memory": "no GPU cell has a predicted breakdown or a measured peak",
    "peak against batch size": "no GPU or CPU training cell has a peak",
    "predicted against measured peak": "no GPU cell has both a prediction and a measured peak (CPU runs measure host RSS)",
    "throughput against memory": "no training cell has both a peak and a throughput",
}


def render(table: Table, title: str = "bench report", catalog: Catalog = DEFAULT) -> str:
    """The page for ``table``: the table, its notes and the figures of its mode."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
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
    if table.rows:
        n = 0
        for name, fig in figures(table, catalog):
            if fig is None:
                out.append(
                    f'<p class="nofigure">No figure of {escape(name)}: {escape(WHY_EMPTY.get(name, "nothing to draw"))}.</p>'
                )
                continue
            n += 1
            out.append(
                f'<figure id="fig-{fig.key}" data-points="{fig.points}">{fig.svg}'
                f"<figcaption>Figure {n}. {escape(fig.caption)}</figcaption></figure>"
            )
    out.append(f"<script>\n{interactive.SCRIPT}\n</script>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
