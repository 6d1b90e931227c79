"""Records as one flat table for dataframe tools: Parquet and JSON Lines.

One row per record, in table order (``bench.report.table.ordered``); nested
keys become dotted columns (``cell.model``, ``measured.peak_nvml_process_bytes``,
``predicted.breakdown.weights``), as in the CSV export, and the units stay raw
(bytes, seconds). Unlike CSV, a list stays a list (``measured.step_times_seconds``
is a list column), so ``pd.read_parquet`` and ``pd.read_json(path, lines=True)``
give back the values themselves.

A column must hold one kind of value for Parquet: where records disagree
(a string in one, a list in another, a dict anywhere, a list of mixed kinds,
an integer past 64 bits), the column's values are written as JSON text
instead, in both formats, so the two files always have the same columns and
values. A null parent whose
children other records have (``measured: null`` of an OOM cell beside
``measured.*``) is left out: its children are null in that row.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bench.errors import UserError, allowed
from bench.report.catalog import DEFAULT, Catalog
from bench.report.render import FORMATS as TEXT_FORMATS, format_of as text_format_of
from bench.report.table import ordered

FORMATS = ("parquet", "jsonl")
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
LEADING = ("cell_id", "slug", "label", "matrix", "status")
"""The first columns; the rest are sorted by name."""
ALL_FORMATS = (*TEXT_FORMATS, *FORMATS)


def format_of(output: str | Path | None, fmt: str | None) -> str:
    """The format to write, as ``bench.report.render.format_of`` decides it, with these two added."""
    if fmt is not None or output is None:
        return fmt or "md"
    suffix = Path(output).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    try:
        return text_format_of(output, None)
    except UserError:
        raise UserError(
            f"-o {output}: cannot tell the format from {suffix or 'no suffix'!r}; name it "
            f".md, .html, .csv, .parquet or .jsonl, or give --format {'|'.join(ALL_FORMATS)}"
        ) from None


def _flatten(value: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, v in value.items():
        name = f"{prefix}{key}"
        if isinstance(v, Mapping) and v:
            _flatten(v, f"{name}.", out)
        else:
            out[name] = v


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int) and not -(2**63) <= v < 2**63:
        return "mixed"  # no Parquet integer holds it: JSON text
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "str"
    if isinstance(v, list) and all(not isinstance(x, (list, dict)) for x in v):
        kinds = {_kind(x) for x in v if x is not None}
        if "mixed" in kinds or len(kinds) > 1:
            return "mixed"
        return f"list[{kinds.pop()}]" if kinds else "list[]"
    return "mixed"  # a dict, a list of lists or dicts, a list of mixed kinds


def _one_kind(values: list[Any]) -> bool:
    kinds = {_kind(v) for v in values if v is not None}
    kinds.discard("list[]")  # an empty list fits any list column
    return len(kinds) <= 1 and "mixed" not in kinds


def rows(records: Iterable[Mapping[str, Any]], catalog: Catalog = DEFAULT) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)``: every record flattened to one dict of column -> value (see the module docstring)."""
    flat = []
    for rec in ordered(records, catalog):
        out: dict[str, Any] = {}
        _flatten(rec, "", out)
        flat.append(out)
    names = {k for r in flat for k in r}
    parents = {n for n in names if any(o.startswith(f"{n}.") for o in names)}
    names -= {p for p in parents if all(r.get(p) is None or r.get(p) == {} for r in flat)}
    columns = [c for c in LEADING if c in names] + sorted(names - set(LEADING))
    table = [{c: r.get(c) for c in columns} for r in flat]
    for c in columns:
        values = [r[c] for r in table]
        if not _one_kind(values):
            for r in table:
                if r[c] is not None:
                    r[c] = json.dumps(r[c], sort_keys=True)
    return columns, table


def frame(records: Iterable[Mapping[str, Any]], catalog: Catalog = DEFAULT):
    """The table as a ``pandas.DataFrame`` (nullable integer, float, boolean and string columns)."""
    import pandas as pd

    columns, table = rows(records, catalog)
    df = pd.DataFrame(table, columns=columns)
    scalar = [c for c in columns if not any(isinstance(v, list) for v in df[c])]
    if scalar:
        df[scalar] = df[scalar].convert_dtypes()
    return df


def to_bytes(records: Iterable[Mapping[str, Any]], fmt: str, catalog: Catalog = DEFAULT) -> bytes:
    """The table of ``records`` as a Parquet file or JSON Lines text (UTF-8)."""
    if fmt not in FORMATS:
        raise UserError(allowed("--format", fmt, FORMATS))
    if fmt == "jsonl":
        _, table = rows(records, catalog)
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table).encode()
    buf = io.BytesIO()
    frame(records, catalog).to_parquet(buf, index=False)
    return buf.getvalue()
