"""The reference H200 measurements (``tests/data/h200-2026-11.jsonl``) in bench's cell terms.

One mapping, used by ``scripts/import_measurements.py`` (rows -> result
records) and by the predictor's tests, following the measurements' README:
``amp-bf16`` -> ``bf16``, ``amp-fp16`` -> ``fp16``, ``bf16`` -> ``pure-bf16``;
a LoRA row on a bf16 base -> ``tuning: lora, precision: bf16``; ``ckpt`` ->
``grad_ckpt``, ``ga`` -> ``grad_accum``; DeepSpeed/FSDP rows name the engine's
fp16/bf16 mode, which keeps fp32 masters: mixed precision.

The protocol left transformers' default ``use_cache`` on, so training rows get
``use_cache: true`` (the loop's held output keeps every layer's keys and values
until the next forward; ``bench run`` with ``use_cache=true`` reproduced row
a006's peak to 0.01 % on an H200). Two kinds of row have no cell: the
CUDA-context row and LoRA on an fp32 base under bf16 autocast.
"""

from __future__ import annotations

from typing import Any

PRECISIONS = {"amp-bf16": "bf16", "amp-fp16": "fp16", "bf16": "pure-bf16", "fp32": "fp32"}


def cell_fields(row: dict[str, Any], gpu: str) -> dict[str, Any] | str:
    """The raw cell of one row (for ``bench.cell.normalize``), or why the row has no cell."""
    kind = row["kind"]
    if kind == "context":
        return "CUDA context and cuBLAS workspace measurement, not a cell"
    raw: dict[str, Any] = {
        "model": row["model"],
        "gpu": gpu,
        "batch": row["batch"],
        "seq": row["seq"],
        "label": f"{row['id']}",
    }
    if kind == "infer":
        return {
            **raw,
            "task": "infer",
            "precision": row["precision"],
            "new_tokens": row["new_tokens"],
            "steps": 1,
            "warmup": 0,
        }
    raw.update(
        grad_ckpt=bool(row.get("ckpt", False)),
        grad_accum=row.get("ga", 1),
        use_cache=True,
        steps=len(row["step_times"]),
        warmup=0,
    )
    if row.get("optim"):
        raw["optimizer"] = row["optim"]
    if row.get("attn"):
        raw["attn"] = row["attn"]
    if kind in ("ds", "fsdp"):
        return {**raw, "method": row["method"], "precision": row["precision"]}
    if row["method"] == "lora":
        if row.get("base") != "bf16" or row.get("amp"):
            return "LoRA on an fp32 base under bf16 autocast has no cell equivalent"
        return {**raw, "method": "lora", "precision": "bf16", "lora_r": row.get("r", 16)}
    return {**raw, "method": row["method"], "precision": PRECISIONS[row["precision"]]}
