"""The result record of one cell: the one type the runner writes and the reports read.

A record describes itself: the schema version, the normalized cell, the
environment it ran in, the measurement and the prediction beside it. It is
plain data on disk (``bench.store`` persists ``Record.to_dict()``); the runner
(``bench.run.record``), ``bench plan`` (``bench.report.render.plan_record``)
and the importer of reference measurements (``scripts/import_measurements.py``)
all build one through ``Record``, so every record has the same keys.

``measured`` keys carry their unit (``peak_nvml_process_bytes``,
``tokens_per_second``); ``prediction_error`` is ``(predicted - measured) /
measured`` of the peak, signed (positive: the predictor over-estimated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1
"""Bumped when a key changes meaning; the store refuses other versions with the fix."""


@dataclass(frozen=True, kw_only=True)
class Record:
    """One cell's result (or, in a plan, its prediction alone)."""

    cell_id: str
    slug: str
    label: str
    matrix: str | None
    """The matrix name the cell came from; ``None`` for a single predicted cell."""
    cell: dict[str, Any]
    """The normalized cell (``Cell.to_dict()``)."""
    status: str | None
    """A ``bench.status`` value; ``None`` in a plan (nothing ran)."""
    environment: dict[str, Any] | None = None
    measured: dict[str, Any] | None = None
    predicted: dict[str, Any] | None = None
    """``Prediction.to_dict()``, or ``None`` where the predictor was not available."""
    prediction_error: float | None = None
    error: str | None = None
    """Why a cell did not end ``ok`` (the tail of the child's output)."""
    started_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def of(cls, cell: Any, **fields: Any) -> Record:
        """A record for a normalized ``bench.cell.Cell`` (its id, slug, label and fields filled in)."""
        return cls(cell_id=cell.cell_id, slug=cell.slug, label=cell.label, cell=cell.to_dict(), **fields)

    def to_dict(self, with_times: bool = True) -> dict[str, Any]:
        """The record as stored (``schema_version`` is added by the store)."""
        d = {
            "cell_id": self.cell_id,
            "slug": self.slug,
            "label": self.label,
            "matrix": self.matrix,
            "cell": self.cell,
            "status": self.status,
            "environment": self.environment,
            "measured": self.measured,
            "predicted": self.predicted,
            "prediction_error": self.prediction_error,
            "error": self.error,
        }
        if with_times:
            d.update(started_at=self.started_at, finished_at=self.finished_at)
        return d
