"""Markdown exporter: one GitHub-flavoured table, then the footnotes as a list.

Columns are padded to a common width so the file reads as a table in a
terminal too; numbers are right-aligned (``---:``). Rows of one model are
adjacent (see ``bench.report.table``); the model name is repeated on every row
so that any row copied on its own still says what it measured.
"""

from __future__ import annotations

from bench.report.table import Table


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def render(table: Table, title: str | None = None) -> str:
    """The Markdown text of ``table`` (ends with a newline)."""
    header = [c.title for c in table.columns]
    body = [[_escape(t) for t in row.cells] for row in table.rows]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        padded = [cell.rjust(w) if col.numeric else cell.ljust(w) for cell, w, col in zip(cells, widths, table.columns)]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if col.numeric else "-" * w for w, col in zip(widths, table.columns)]
    out = [f"# {title}", ""] if title else []
    out += [line(header), "| " + " | ".join(rule) + " |"]
    out += [line(r) for r in body]
    if not table.rows:
        out.append("")
        out.append("No result records.")
    out.append("")
    out += [f"- {note}" for note in table.notes]
    return "\n".join(out) + "\n"
