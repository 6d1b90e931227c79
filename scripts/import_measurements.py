"""Turn the H200 reference measurements (JSON lines) into bench result records.

Usage::

    python scripts/import_measurements.py MEASUREMENTS.jsonl [--out results/h200-example]
                                          [--gpu h200] [--with-predictions]

Every training, DeepSpeed, FSDP and generation row becomes one record in the
store layout under ``--out``::

    results/h200-example/<gpu>/h200-2026-11/<cell_id>.json    (matrix = the file's stem)
    results/h200-example/<gpu>/machine.json

so ``bench report results/h200-example`` and ``bench compare`` read them like
any run. Cells come from ``bench.reference.cell_fields`` (the measurements'
README mapping, ``use_cache`` on as in the protocol); ``steps`` = the steps timed
(the peak covers all of them), ``warmup`` = 0. Rows without a cell are skipped
(and named on the output).

Measured values: ``peak_nvml_process_bytes`` = ``nvml_peak_proc``,
``peak_torch_allocated_bytes`` = ``peak_alloc``, ``peak_torch_reserved_bytes`` =
``peak_reserved``; the device-wide NVML peak is left null (another process
shared the GPU). Training: ``step_time_median_seconds`` = median of the step
times after the first, ``tokens_per_second`` = batch x seq x ga / that median.
Generation: one ``generate()`` is the step; tokens/s counts generated tokens.
``tflops_achieved`` and ``mfu`` follow ``bench.worker.flops`` (model FLOPs from the
counted parameters, over the catalog GPU's dense peak), as ``bench run`` records them.
Every record names its source row in ``environment.provenance``.

``--with-predictions`` fills ``predicted`` with ``bench.predict.predict(cell).to_dict()``
and ``prediction_error`` = (predicted - measured) / measured.
Records this script wrote before in the same folder are replaced.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cell as cellmod  # noqa: E402
from bench.record import Record  # noqa: E402
from bench.reference import cell_fields  # noqa: E402
from bench.store import Store, load_record  # noqa: E402

DRIVER = "580.159.04"  # not in the rows; stated in the measurements' README
DEEPSPEED = "0.19.8"  # idem
SAMPLE_INTERVAL_SECONDS = 0.02  # NVML sampling period, idem
TIMING_NOTE = "step times are rough: a second measuring process shared the GPU part of the time"  # idem


def _mfu(m: dict[str, Any], cell: cellmod.Cell) -> None:
    """Fill ``tflops_achieved`` and ``mfu`` the way the runner does (left null if it cannot)."""
    try:
        from bench.worker import flops
    except ImportError:
        return
    if not m.get("n_params") or not m.get("step_time_median_seconds"):
        return
    trainable = m.get("n_trainable_params") or m["n_params"]
    work = flops.flops_per_step(cell, m["n_params"], trainable, encoder_decoder=False)
    m["tflops_achieved"] = work / m["step_time_median_seconds"] / 1e12
    peak, _card = flops.peak_tflops(cell)
    m["mfu"] = m["tflops_achieved"] / peak if peak else None


def measured(row: dict[str, Any], cell: cellmod.Cell) -> dict[str, Any]:
    """The record's ``measured`` block for one row (raw units, unit in the key)."""
    m: dict[str, Any] = {
        "peak_nvml_process_bytes": row.get("nvml_peak_proc"),
        "peak_nvml_device_bytes": None,
        "peak_torch_allocated_bytes": row.get("peak_alloc"),
        "peak_torch_reserved_bytes": row.get("peak_reserved"),
        "peak_host_rss_bytes": None,
        "after_load_allocated_bytes": row.get("after_load_alloc"),
        "n_params": row.get("n_params"),
        "n_trainable_params": row.get("n_trainable") or row.get("n_params"),
        "tflops_achieved": None,
        "mfu": None,
    }
    if cell.task == "infer":
        seconds = row["gen_time"]
        m.update(
            step_times_seconds=[seconds],
            step_time_median_seconds=seconds,
            tokens_per_second=cell.batch * cell.new_tokens / seconds,
            samples_per_second=cell.batch / seconds,
        )
        _mfu(m, cell)
        return m
    times = row["step_times"]
    median = statistics.median(times[1:] or times)
    m.update(
        step_times_seconds=times,
        step_time_median_seconds=median,
        tokens_per_second=cell.batch * cell.seq * cell.grad_accum / median,
        samples_per_second=cell.batch * cell.grad_accum / median,
    )
    _mfu(m, cell)
    return m


def environment(ctx_env: dict[str, Any], row: dict[str, Any], source: str) -> dict[str, Any]:
    return {
        "gpu_name": ctx_env.get("gpu"),
        "gpu_memory_bytes": ctx_env.get("gpu_total_bytes"),
        "driver": DRIVER,
        "cuda": ctx_env.get("cuda"),
        "torch": ctx_env.get("torch"),
        "transformers": ctx_env.get("transformers"),
        "peft": ctx_env.get("peft"),
        "deepspeed": DEEPSPEED,
        "device": "cuda:0",
        "attn_implementation": row.get("attn_impl"),
        "nvml_sample_interval_seconds": SAMPLE_INTERVAL_SECONDS,
        "provenance": {"source": source, "row_id": row["id"], "note": TIMING_NOTE},
    }


def predicted(cell: cellmod.Cell, peak: int | None) -> tuple[dict[str, Any], float | None]:
    from bench.predict import predict  # only with --with-predictions

    p = predict(cell).to_dict()
    error = (p["peak_bytes"] - peak) / peak if peak and p.get("peak_bytes") is not None else None
    return p, error


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="the measurements file (JSON lines)")
    ap.add_argument("--out", type=Path, default=Path("results/h200-example"), help="store root [%(default)s]")
    ap.add_argument("--gpu", default="h200", help="GPU catalog name of the cells [%(default)s]")
    ap.add_argument("--with-predictions", action="store_true", help="fill predicted via bench.predict.predict")
    args = ap.parse_args(argv)
    if args.with_predictions:
        try:
            from bench.predict import predict  # noqa: F401
        except ImportError:
            print("error: --with-predictions needs bench.predict.predict, which this checkout lacks", file=sys.stderr)
            return 2

    rows = [json.loads(line) for line in args.source.read_text().splitlines() if line.strip()]
    ctx_env = next((r.get("env") or {} for r in rows if r["kind"] == "context"), {})
    source = f"shared measurements {args.source.name}"
    matrix = args.source.stem
    records, skipped = [], []
    for row in rows:
        raw = cell_fields(row, args.gpu)
        if isinstance(raw, str):
            skipped.append(f"skipped row {row['id']}: {raw}")
            continue
        cell = cellmod.normalize(raw, where=f"row {row['id']}: ")
        m = measured(row, cell)
        pred, error = None, None
        if args.with_predictions:
            try:
                pred, error = predicted(cell, m["peak_nvml_process_bytes"])
            except Exception as e:  # one cell the predictor cannot do yet must not stop the rest
                skipped.append(f"no prediction for row {row['id']} ({cell.slug}): {type(e).__name__}: {e}")
        records.append(
            Record.of(
                cell,
                matrix=matrix,
                status=row["status"],
                environment=environment(ctx_env, row, source),
                measured=m,
                predicted=pred,
                prediction_error=error,
            ).to_dict()
        )

    # Everything is converted before the folder changes: a failure leaves the old records.
    store = Store(args.out)
    folder = store.folder(args.gpu, matrix)
    for old in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if load_record(old).get("environment", {}).get("provenance", {}).get("source") == source:
            old.unlink()
    for record in records:
        store.write(record)
    store.write_machine(
        args.gpu,
        {
            k: v
            for k, v in environment(ctx_env, {"id": None}, source).items()
            if k not in ("attn_implementation", "provenance")
        },
    )
    print(f"wrote {len(records)} records to {folder}/")
    for line in skipped:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
