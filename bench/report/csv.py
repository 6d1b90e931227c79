"""CSV exporter: the records themselves, flattened, one row per cell.

Unlike the Markdown and HTML tables this keeps raw units (bytes, seconds,
fractions) and every field, for a spreadsheet or a notebook: nested keys
become dotted columns (``measured.peak_nvml_process_bytes``,
``predicted.breakdown.weights``) via ``pandas.json_normalize``. Rows follow the
table order; columns start with ``cell_id, slug, matrix, status`` and the rest
are sorted by name. Lists are written as JSON; integers stay integers even
where some cells have no value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from bench.report.catalog import DEFAULT, Catalog
from bench.report.table import ordered

LEADING = ("cell_id", "slug", "matrix", "status")


def render(records: Iterable[Mapping[str, Any]], catalog: Catalog = DEFAULT) -> str:
    """The CSV text of ``records`` (header line included; empty input gives an empty header)."""
    import pandas as pd

    rows = ordered(records, catalog)
    if not rows:
        return ",".join(LEADING) + "\n"
    df = pd.json_normalize([dict(r) for r in rows])
    # A null parent (``measured: null``) leaves an empty column beside its children's.
    parents = [c for c in df.columns if any(o.startswith(f"{c}.") for o in df.columns) and df[c].isna().all()]
    df = df.drop(columns=parents)
    for c in df.columns:
        if df[c].map(lambda v: isinstance(v, (list, dict))).any():
            df[c] = df[c].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    df = df.convert_dtypes()
    columns = [c for c in LEADING if c in df.columns]
    columns += sorted(c for c in df.columns if c not in LEADING)
    return df[columns].to_csv(index=False, lineterminator="\n")
