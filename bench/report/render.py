"""Rendering entry points: records in, text of one format out.

``bench report`` calls ``render``; ``bench plan`` calls ``render_plan`` with
records built by ``plan_record`` from its predictions::

    from bench.report import plan_record, render_plan
    text = render_plan([plan_record(cell, predict(cell).to_dict()) for cell in cells], "md")

``render_html(records, title)`` is the HTML page of measured records (what a
results folder is served as); ``plan_format_of`` tells ``bench plan -o FILE``'s
format (``PLAN_FORMATS``) from the file's suffix.

All are pure: the same records give the same text (the catalog's parameter
counts and GPU memory are the only other input; see ``bench.report.catalog``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bench.errors import UserError, allowed
from bench.record import Record
from bench.report import table as tablemod
from bench.report.catalog import DEFAULT, Catalog

FORMATS = ("md", "html", "csv")
"""Formats of ``render`` (``bench report --format``)."""
PLAN_FORMATS = ("md", "html", "csv", "json")
"""Formats ``bench plan -o FILE`` writes, told by the file's suffix (json: the entries of ``--json``)."""
_SUFFIXES = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".csv": "csv"}
_PLAN_SUFFIXES = {**_SUFFIXES, ".json": "json"}


def render(
    records: Iterable[Mapping[str, Any]],
    fmt: str = "md",
    mode: str = "measured",
    title: str | None = None,
    catalog: Catalog = DEFAULT,
) -> str:
    """``records`` as Markdown, HTML or CSV text; ``mode`` is ``measured`` or ``plan``.

    CSV is the flat records in any mode; Markdown and HTML are the table of
    ``bench.report.table`` (HTML adds the plots in ``measured`` mode).
    """
    records = list(records)
    if fmt not in FORMATS:
        raise UserError(allowed("--format", fmt, FORMATS))
    if fmt == "csv":
        from bench.report import csv

        return csv.render(records, catalog)
    table = tablemod.build(records, mode, catalog)
    if fmt == "md":
        from bench.report import markdown

        return markdown.render(table, title)
    from bench.report import html

    return html.render(table, title or ("bench plan" if mode == "plan" else "bench report"), catalog)


def render_plan(
    records: Iterable[Mapping[str, Any]], fmt: str = "md", title: str | None = None, catalog: Catalog = DEFAULT
) -> str:
    """The plan table (predicted columns only: Predicted GiB, % of GPU, Fits).

    ``records`` need only ``cell`` (a normalized cell as a dict) and
    ``predicted`` (``Prediction.to_dict()``: ``peak_bytes``, ``fits``,
    ``capacity_bytes``...); ``plan_record`` builds them.
    """
    return render(records, fmt, "plan", title, catalog)


def render_html(records: Iterable[Mapping[str, Any]], title: str = "bench report", catalog: Catalog = DEFAULT) -> str:
    """The self-contained HTML page of measured ``records`` (table, per-part bars, plots)."""
    return render(records, "html", title=title, catalog=catalog)


def plan_record(cell: Any, predicted: Mapping[str, Any] | None) -> dict[str, Any]:
    """A record-shaped dict for one predicted ``bench.cell.Cell`` (nothing measured)."""
    return Record.of(
        cell, matrix=None, status=None, predicted=dict(predicted) if predicted is not None else None
    ).to_dict(with_times=False)


def format_of(output: str | Path | None, fmt: str | None) -> str:
    """The format to write: ``fmt`` if given, else from the output's suffix, else ``md``."""
    if fmt is not None:
        return fmt
    if output is None:
        return "md"
    suffix = Path(output).suffix.lower()
    if suffix not in _SUFFIXES:
        raise UserError(
            f"-o {output}: cannot tell the format from {suffix or 'no suffix'!r}; "
            f"name it .md, .html or .csv, or give --format md|html|csv"
        )
    return _SUFFIXES[suffix]


def plan_format_of(output: str | Path) -> str:
    """The format of ``bench plan -o FILE``, from its suffix; an unknown suffix is a ``UserError``."""
    suffix = Path(output).suffix.lower()
    if suffix not in _PLAN_SUFFIXES:
        raise UserError(
            f"-o {output}: cannot tell the format from {suffix or 'no suffix'!r}; "
            f"allowed suffixes: {', '.join(_PLAN_SUFFIXES)}"
        )
    return _PLAN_SUFFIXES[suffix]
