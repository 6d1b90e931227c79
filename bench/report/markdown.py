"""Markdown exporter: one GitHub-flavoured table, then the footnotes as a list.

The table is laid out by ``tabulate`` (its ``pipe`` format: columns padded
to a common width so the file reads as a table in a terminal too, numbers
right-aligned with ``---:``). Cells are the table model's text as is
(``disable_numparse``: ``1,024`` and ``–`` are never re-read as numbers).
Rows of one model are adjacent (see ``bench.report.table``); the model name is
repeated on every row so that any row copied on its own still says what it
measured.
"""

from __future__ import annotations

from tabulate import tabulate

from bench.report.table import Table


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def render(table: Table, title: str | None = None) -> str:
    """The Markdown text of ``table`` (ends with a newline)."""
    text = tabulate(
        [[_escape(t) for t in row.cells] for row in table.rows],
        headers=[_escape(c.title) for c in table.columns],
        tablefmt="pipe",
        colalign=["right" if c.numeric else "left" for c in table.columns],
        disable_numparse=True,
    )
    out = [f"# {title}", ""] if title else []
    out.append(text)
    if not table.rows:
        out.append("")
        out.append("No result records.")
    out.append("")
    out += [f"- {note}" for note in table.notes]
    return "\n".join(out) + "\n"
