"""The predictor against every row of the reference measurements (H200).

Each row of ``tests/data/h200-2026-11.jsonl`` that has a cell
equivalent (see that folder's README) is predicted and compared with its
measured peak NVML process memory. The limits are the predictor's contract:
median absolute error <= 5 %, no row above 15 %.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from bench.cell import normalize
from bench.predict import predict
from bench.reference import cell_fields

ROWS = Path(__file__).resolve().parents[1] / "tests" / "data" / "h200-2026-11.jsonl"


def row_cell(r: dict):
    """The bench cell of a measurement row (``bench.reference``), or None where it has none."""
    raw = cell_fields(r, "h200")
    return None if isinstance(raw, str) else normalize(raw)


def rows():
    return [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def errors():
    out = {}
    for r in rows():
        c = row_cell(r)
        if c is None or r["status"] != "ok":
            continue
        p = predict(c)
        out[r["id"]] = (p.peak_bytes - r["nvml_peak_proc"]) / r["nvml_peak_proc"]
    return out


def test_every_ok_row_is_predicted_or_says_why_not(errors):
    """A row without a prediction must carry the mapping's reason (``bench.reference``),
    so a row the predictor silently drops fails here."""
    unexplained = []
    for r in rows():
        if r.get("status") != "ok" or r["id"] in errors:
            continue
        why = cell_fields(r, "h200")
        if not (isinstance(why, str) and why.strip()):
            unexplained.append(r["id"])
    assert not unexplained, unexplained
    assert len(errors) >= 25 and all(abs(e) < 10 for e in errors.values())


def test_median_error_at_most_5_percent(errors):
    table = "\n".join(f"{k}: {v:+.1%}" for k, v in sorted(errors.items()))
    assert statistics.median(abs(e) for e in errors.values()) <= 0.05, table


def test_no_row_off_by_more_than_15_percent(errors):
    bad = {k: f"{v:+.1%}" for k, v in errors.items() if abs(v) > 0.15}
    assert not bad, bad
