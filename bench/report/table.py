"""The table model: result records -> rows of text, the one source of every exporter.

``build(records, mode)`` is a pure function of the records (and the catalog
facts it is given): it picks the columns for the mode, formats each record
into one row, sorts the rows deterministically and writes the footnotes. The
Markdown and HTML exporters only lay the result out.

Modes:

- ``measured`` (``bench report``): what was measured beside what was
  predicted. OOM, timeout, error and skipped cells stay in as rows.
- ``plan`` (``bench plan``): predicted columns only (Predicted GiB, % of GPU,
  Fits); records need only ``cell`` and ``predicted``. With a stated host
  (``predicted.host_fits``) a ``Fits host`` column follows the host RAM, and
  where a ``split: layers`` cell offloads weights to it (``predicted.host_offload``)
  ``On host (GiB)`` and ``Offload slowdown`` columns.

Speed columns join where some record has them: ``Step (s)`` and ``Tokens/s``
when predictions carry ``step_time_seconds`` (``bench.predict.speed``),
``Time`` and ``Cost`` when they carry a ``run`` (``bench.predict.cost``), and
in ``measured`` mode ``Predicted tokens/s`` beside the measured tokens/s.

Rows are grouped by model (smallest published size first, then name) and
within a model ordered by GPU, task, tuning, strategy, offload, rank count,
precision, context length, batch, accumulation, checkpointing, then cell id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bench import cell as cellmod
from bench.report import hardware, labels
from bench.report.catalog import DEFAULT, Catalog
from bench.report.footnotes import footnotes

MODES = ("measured", "plan")


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    numeric: bool = False
    """Right-aligned when rendered."""


_SHAPE = (
    Column("model", "Model"),
    Column("params", "Params", True),
    Column("context", "Context length", True),
    Column("method", "Method"),
    Column("gpu", "GPU"),
    Column("precision", "Precision"),
    Column("batch", "Batch size per GPU", True),
    Column("grad_accum", "Gradient accumulation", True),
    Column("grad_ckpt", "Grad ckpt"),
)
COLUMNS = {
    "measured": _SHAPE
    + (
        Column("peak", "Peak VRAM per GPU (GiB)", True),
        Column("share", "% of GPU", True),
        Column("predicted", "Predicted (GiB)", True),
        Column("error", "Error", True),
        Column("tokens", "Tokens/s", True),
        Column("mfu", "MFU", True),
        Column("status", "Status"),
    ),
    "plan": _SHAPE
    + (
        Column("predicted", "Predicted per GPU (GiB)", True),
        Column("share", "% of GPU", True),
        Column("fits", "Fits"),
        Column("host", "Host RAM per node (GiB)", True),
    ),
}


SPEED = {
    "plan": (Column("step", "Step (s)", True), Column("ptokens", "Tokens/s", True)),
    "measured": (Column("ptokens", "Predicted tokens/s", True),),
}
RUN = (Column("time", "Time", True), Column("cost", "Cost (USD)", True))
MAX_BATCH = Column("max_batch", "Max batch", True)
HOST_FITS = Column("host_fits", "Fits host")
HOST_OFFLOAD = (Column("on_host", "On host (GiB)", True), Column("slowdown", "Offload slowdown", True))
CPU_ONLY_DROPPED = ("gpu", "share", "predicted", "error", "ptokens", "mfu")
"""Columns a report of CPU runs alone leaves out: no GPU, and a GPU prediction is not comparable with host RSS."""


def columns_for(records: list[Mapping[str, Any]], mode: str) -> tuple[Column, ...]:
    """The mode's columns, with the speed, run and max-batch columns where some record has them.

    A ``measured`` report of CPU runs only (``bench run --device cpu``) has no
    GPU columns, and its peak column says it is host RSS.
    """
    preds = [r.get("predicted") or {} for r in records]
    cols = COLUMNS[mode]
    if mode == "plan" and any(p.get("host_fits") is not None for p in preds):
        cols = cols + (HOST_FITS,)
    if mode == "plan" and any(p.get("host_offload") for p in preds):
        cols = cols + HOST_OFFLOAD
    if any(p.get("step_time_seconds") is not None for p in preds):
        cols = cols[:-1] + SPEED[mode] + cols[-1:] if mode == "measured" else cols + SPEED[mode]
    if mode == "plan" and any(p.get("run") for p in preds):
        cols = cols + RUN
    if mode == "plan" and any(p.get("max_batch") is not None for p in preds):
        cols = cols + (MAX_BATCH,)
    if mode == "measured" and records and all(hardware.is_cpu(r) for r in records):
        titles = {"peak": "Peak host RSS (GiB)", "batch": "Batch size"}
        cols = tuple(
            Column(c.key, titles.get(c.key, c.title), c.numeric) for c in cols if c.key not in CPU_ONLY_DROPPED
        )
    return cols


def _speed_values(p: Mapping[str, Any]) -> dict[str, str]:
    step, run = p.get("step_time_seconds"), p.get("run") or {}
    usd = run.get("usd")
    return {
        "step": f"{step:.3f}" if step is not None else labels.MISSING,
        "ptokens": labels.count(p.get("tokens_per_second")),
        "time": labels.duration(run.get("seconds")) if run else labels.MISSING,
        "cost": f"{usd:,.2f}" if usd is not None else labels.MISSING,
    }


def _offload_values(p: Mapping[str, Any]) -> dict[str, str]:
    """A split cell's weights on the host (and their share) and the slowdown their copies cost."""
    offload = p.get("host_offload") or {}
    if not offload:
        return {"on_host": labels.MISSING, "slowdown": labels.MISSING}
    share = offload.get("share")
    on_host = labels.gib(offload.get("bytes")) + (f" ({100 * share:.0f}%)" if share is not None else "")
    seconds, step = offload.get("seconds"), p.get("step_time_seconds")
    slowdown = labels.MISSING
    if seconds is not None and step and step > seconds:
        slowdown = f"x{step / (step - seconds):.1f} (+{seconds:.2f} s)"
    return {"on_host": on_host, "slowdown": slowdown}


@dataclass(frozen=True)
class Row:
    group: str
    """The model the row belongs to (rows of one group are adjacent)."""
    cells: tuple[str, ...]
    """One text per column, in column order."""
    record: Mapping[str, Any]


@dataclass(frozen=True)
class Table:
    mode: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...]

    @property
    def groups(self) -> list[tuple[str, list[Row]]]:
        """Rows split into consecutive per-model groups."""
        out: list[tuple[str, list[Row]]] = []
        for row in self.rows:
            if not out or out[-1][0] != row.group:
                out.append((row.group, []))
            out[-1][1].append(row)
        return out


def _index(choices: tuple[str, ...], value: Any) -> int:
    return choices.index(value) if value in choices else len(choices)


def sort_key(record: Mapping[str, Any], catalog: Catalog = DEFAULT) -> tuple:
    """The deterministic order of rows (see the module docstring)."""
    c = record["cell"]
    n = catalog.params_of(record)
    return (
        n is None,
        n or 0,
        c["model"],
        c["gpu"],
        _index(cellmod.TASKS, c.get("task", "train")),
        _index(cellmod.TUNINGS, c.get("tuning")),
        _index(cellmod.STRATEGIES, c.get("strategy")),
        _index(cellmod.OFFLOADS, c.get("offload")),
        c.get("gpus", 1),
        _index(cellmod.PRECISIONS, c.get("precision")),
        c.get("seq", 0),
        c.get("batch", 0),
        c.get("grad_accum", 1),
        bool(c.get("grad_ckpt")),
        c.get("optimizer") or "",
        c.get("attn") or "",
        record.get("cell_id", ""),
    )


def _peak(record: Mapping[str, Any]) -> str:
    text = labels.gib(hardware.measured_peak(record))
    # An OOM's peak is what was held when it failed: the cell needed more.
    return f">{text}" if record.get("status") == "oom" and text != labels.MISSING else text


def _values(record: Mapping[str, Any], mode: str, catalog: Catalog) -> dict[str, str]:
    c = record["cell"]
    m = record.get("measured") or {}
    p = record.get("predicted") or {}
    infer = c.get("task", "train") == "infer"
    capacity = catalog.capacity_of(record)
    v = {
        "model": labels.model(c["model"]),
        "params": labels.params(catalog.params_of(record)),
        "context": labels.context(c),
        "method": labels.method(c),
        "gpu": hardware.gpu_label(record, catalog),
        "precision": labels.precision(c),
        "batch": str(c.get("batch", labels.MISSING)),
        "grad_accum": labels.MISSING if infer else str(c.get("grad_accum", 1)),
        "grad_ckpt": labels.MISSING if infer else labels.yes_no(c.get("grad_ckpt")),
        "predicted": labels.gib(p.get("peak_bytes")),
        "fits": labels.yes_no(p.get("fits")),
        "max_batch": labels.MISSING if p.get("max_batch") is None else str(p["max_batch"]),
        **_speed_values(p),
    }
    if mode == "plan":
        peak = p.get("peak_bytes")
        v["share"] = labels.percent(peak / capacity if peak is not None and capacity else None)
        v["host"] = labels.gib(p.get("host_node_bytes") or p.get("host_bytes"))
        v["host_fits"] = labels.yes_no(p.get("host_fits"))
        v.update(_offload_values(p))
        return v
    peak = hardware.measured_peak(record)
    host = hardware.speed_suffix(record)  # an emulated run's speed is the host card's
    tokens, mfu = m.get("tokens_per_second"), m.get("mfu")
    v.update(
        peak=_peak(record),
        share=labels.percent(peak / capacity if peak is not None and capacity else None),
        error=labels.percent(record.get("prediction_error"), signed=True),
        tokens=labels.count(tokens) + (host if tokens is not None else ""),
        mfu=labels.percent(mfu) + (host if mfu is not None else ""),
        status=labels.status(record.get("status")),
    )
    if hardware.is_cpu(record):  # host RSS: no share of a GPU, no GPU prediction to compare
        v.update(share=labels.MISSING, predicted=labels.MISSING, error=labels.MISSING, ptokens=labels.MISSING)
    elif record.get("prediction_stale") and p:
        for key in ("predicted", "error"):
            if v[key] != labels.MISSING:
                v[key] += " (stale)"
    return v


def build(records: Iterable[Mapping[str, Any]], mode: str = "measured", catalog: Catalog = DEFAULT) -> Table:
    """The table of ``records`` in ``mode`` (``measured`` or ``plan``); pure."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} not in {MODES}")
    records = ordered(records, catalog)
    columns = columns_for(records, mode)
    rows = []
    for r in records:
        values = _values(r, mode, catalog)
        rows.append(Row(group=r["cell"]["model"], cells=tuple(values[col.key] for col in columns), record=r))
    return Table(mode=mode, columns=columns, rows=tuple(rows), notes=footnotes(records, mode))


def ordered(records: Iterable[Mapping[str, Any]], catalog: Catalog = DEFAULT) -> list[Mapping[str, Any]]:
    """``records`` in table order (what the plots and CSV export iterate)."""
    return sorted(records, key=lambda r: sort_key(r, catalog))
