"""How the runner makes the ``bench.record.Record`` of a finished (or skipped) cell.

``prediction_error`` is ``(predicted - measured) / measured`` of the peak,
signed: positive means the predictor over-estimated (the safe side),
negative that it under-estimated. The measured peak is NVML's per-process
peak on a GPU and the peak host RSS on ``--device cpu``.
"""

from __future__ import annotations

import math
from typing import Any

from bench.cell import Cell
from bench.dtypes import GiB
from bench.record import Record
from bench.run.executor import Job, now
from bench.status import OK, SKIPPED


def measured_peak(measured: dict[str, Any] | None, device: str) -> int | None:
    """The peak that decides whether a cell fits, for this device."""
    if not measured:
        return None
    key = "peak_host_rss_bytes" if device == "cpu" else "peak_nvml_process_bytes"
    value = measured.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None  # missing, or NaN/infinity in a hand-edited record
    return int(value)


def prediction_error(
    status: str, predicted: dict[str, Any] | None, measured: dict[str, Any] | None, device: str
) -> float | None:
    """``(predicted - measured) / measured`` of the peak; ``None`` unless both exist and the cell ran ok."""
    if status != OK or not predicted:
        return None
    peak = measured_peak(measured, device)
    guess = predicted.get("peak_bytes")
    if not peak or not isinstance(guess, (int, float)):
        return None
    return (guess - peak) / peak


def build(
    job: Job, cell: Cell, result: dict[str, Any], predicted: dict[str, Any] | None, environment: dict[str, Any]
) -> dict[str, Any]:
    """A store record from an executor's result for ``job``."""
    measured = result.get("measured")
    if measured is not None and result.get("wall_seconds") is not None:
        measured = {**measured, "wall_seconds": result["wall_seconds"]}
    env = {**environment, **(result.get("environment") or {}), "device": job.device}
    env.setdefault("emulated_target", False)
    return Record.of(
        cell,
        matrix=job.matrix,
        status=result["status"],
        environment=env,
        measured=measured,
        predicted=predicted,
        prediction_error=prediction_error(result["status"], predicted, measured, job.device),
        error=result.get("error"),
        started_at=result.get("started_at") or now(),
        finished_at=result.get("finished_at") or now(),
    ).to_dict()


def skipped(
    cell: Cell, matrix: str, predicted: dict[str, Any], environment: dict[str, Any], device: str
) -> dict[str, Any]:
    """The record of a cell ``--skip-predicted-oom`` did not run."""
    gib = GiB
    peak, capacity = predicted.get("peak_bytes"), predicted.get("capacity_bytes")
    why = "skipped: the predictor says it does not fit"
    if isinstance(peak, (int, float)) and isinstance(capacity, (int, float)):
        why += f" ({peak / gib:.2f} GiB predicted > {capacity / gib:.2f} GiB on {predicted.get('gpu', cell.gpu)})"
    stamp = now()
    return Record.of(
        cell,
        matrix=matrix,
        status=SKIPPED,
        environment={**environment, "device": device, "emulated_target": False},
        predicted=predicted,
        error=why,
        started_at=stamp,
        finished_at=stamp,
    ).to_dict()
