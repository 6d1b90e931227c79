"""Predicted step times against measured ones: the rows, the errors, the summary.

Two sets of real H200 runs (torch 2.11, transformers 5.17, deepspeed 0.19.8):

- the reference rows (``tests/data/h200-2026-11.jsonl``, a copy of
  ``shared/measurements``): every ``ok`` training row, measured as the median of
  its steps after the first (the first includes warm-up);
- ``results/h200-2026-11-28/``: every ``ok`` training record of ``bench run``,
  its ``step_times_seconds`` (warm-up steps are recorded apart). Those runs
  capped memory to emulate smaller cards, but computed on the H200, so they
  are predicted on the H200.

Generation is compared where a record splits prefill from decode
(``prefill_seconds``, ``decode_tokens_per_second``).

``python -m bench.predict.time_accuracy`` prints the table and the summary the
README quotes.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench import recipe, reference
from bench.cell import Cell, normalize, replace

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "data" / "h200-2026-11.jsonl"
RUNS = ROOT / "results" / "h200-2026-11-28"


@dataclass(frozen=True)
class Row:
    name: str
    cell: Cell
    measured: float
    """Seconds per optimizer step; for generation, the measured quantity named by ``what``."""
    what: str = "step_time_seconds"
    steady: float | None = None
    """A DeepSpeed ZeRO-3 record warmed up one step only: the median of its steps after the first
    measured one. ZeRO-3 records its module trace in the first step and completes it in the second
    (``PartitionedParameterCoordinator``: the prefetch order and the lru-cached release sets are
    built then), so that step pays a one-time cost. ``scripts/fit_speed.py`` fits on this; the
    table still reports against ``measured``."""


def method(cell) -> str:
    """The method family a row reports under (the cell's own method name)."""
    return cell.method


def training_rows() -> list[Row]:
    rows = []
    for line in REFERENCE.read_text().splitlines():
        r = json.loads(line)
        if r.get("status") != "ok" or r["kind"] not in ("train", "ds", "fsdp") or len(r.get("step_times", [])) < 2:
            continue
        raw = reference.cell_fields(r, "h200")
        if isinstance(raw, str):
            continue
        rows.append(Row(r["id"], normalize(raw, ""), statistics.median(r["step_times"][1:])))
    for f in sorted(RUNS.glob("*/*/*.json")):
        r = json.loads(f.read_text())
        m = r.get("measured") or {}
        if r["status"] != "ok" or r["cell"]["task"] != "train" or not m.get("step_times_seconds"):
            continue
        cell = replace(normalize({k: v for k, v in r["cell"].items() if v is not None}), gpu="h200")
        steps = m["step_times_seconds"]
        steady = None
        zero = recipe.of(cell).zero
        if (
            zero is not None
            and zero.stage == 3
            and len(m.get("warmup_step_times_seconds") or []) < 2
            and len(steps) > 1
        ):
            steady = statistics.median(steps[1:])
        rows.append(Row(f"{f.parent.name}/{f.stem}", cell, statistics.median(steps), steady=steady))
    return rows


def generation_rows() -> list[Row]:
    rows = []
    for f in sorted(RUNS.glob("*/*/*.json")):
        r = json.loads(f.read_text())
        m = r.get("measured") or {}
        if r["status"] != "ok" or r["cell"]["task"] != "infer":
            continue
        cell = replace(normalize({k: v for k, v in r["cell"].items() if v is not None}), gpu="h200")
        for what in ("prefill_seconds", "decode_tokens_per_second"):
            if m.get(what):
                rows.append(Row(f"{f.parent.name}/{f.stem}", cell, m[what], what))
    return rows


def error(row: Row, predicted: dict) -> float:
    """Relative error of the prediction, (predicted - measured) / measured."""
    return (predicted[row.what] - row.measured) / row.measured


def summary(errors: list[float]) -> dict[str, float]:
    """Median, p90 and worst absolute relative error, and the worst ratio either way."""
    a = sorted(abs(e) for e in errors)
    ratio = max(max(1 + e, 1 / (1 + e)) for e in errors)
    p90 = a[min(len(a) - 1, round(0.9 * (len(a) - 1)))]
    return {"rows": len(a), "median": statistics.median(a), "p90": p90, "worst": a[-1], "worst_ratio": ratio}


def main() -> None:
    from bench.predict.speed import speed

    by_method: dict[str, list[float]] = {}
    everything = []
    print(f"{'row':<28} {'cell':<56} {'measured':>9} {'predicted':>9} {'error':>7}")
    for row in training_rows():
        p = speed(row.cell).to_dict()
        e = error(row, p)
        by_method.setdefault(method(row.cell), []).append(e)
        everything.append(e)
        note = ""
        if row.steady is not None:
            note = f"  (after ZeRO-3's trace step {row.steady:.4f}: {100 * (p[row.what] / row.steady - 1):+.1f}%)"
        print(f"{row.name:<28} {row.cell.slug:<56} {row.measured:9.4f} {p[row.what]:9.4f} {100 * e:+6.1f}%{note}")
    print()
    for name, errs in [*sorted(by_method.items()), ("all", everything)]:
        s = summary(errs)
        print(
            f"{name:<16} rows {s['rows']:>3}  median {100 * s['median']:5.1f}%  p90 {100 * s['p90']:5.1f}%"
            f"  worst {100 * s['worst']:5.1f}% ({s['worst_ratio']:.2f}x)"
        )
    print()
    for row in generation_rows():
        p = speed(row.cell).to_dict()
        print(
            f"{row.name:<28} {row.what:<26} measured {row.measured:9.4f} predicted {p[row.what]:9.4f}"
            f" {100 * error(row, p):+6.1f}%"
        )


if __name__ == "__main__":
    main()
