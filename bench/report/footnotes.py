"""Footnotes: the units, the measurement method and the environment under a table.

A number without its unit and its method is not a result, so every rendered
table ends with these lines: GiB = 2**30 bytes (said once, here), how the peak
was measured (NVML per-process peak, sampled), what the derived columns mean,
and the environment the records were measured in (every distinct value of the
GPU, driver, CUDA and library versions, so a mixed report shows that it is mixed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bench.report import hardware

ENVIRONMENT_KEYS = (
    (("gpu_name", "gpu", "device_name"), "GPU"),
    (("driver",), "driver"),
    (("cuda", "cuda_version"), "CUDA"),
    (("torch", "torch_version"), "torch"),
    (("transformers", "transformers_version"), "transformers"),
    (("peft", "peft_version"), "peft"),
    (("deepspeed", "deepspeed_version"), "deepspeed"),
    (("bitsandbytes", "bitsandbytes_version"), "bitsandbytes"),
    (("python", "python_version"), "Python"),
    (("PYTORCH_CUDA_ALLOC_CONF",), "PYTORCH_CUDA_ALLOC_CONF"),
    (("git_commit",), "bench commit"),
)
"""Environment keys shown, each with its aliases, in this order."""


def _distinct(values: Iterable[Any]) -> list[str]:
    return sorted({str(v) for v in values if v is not None and not isinstance(v, (dict, list))})


def environment_line(records: list[Mapping[str, Any]]) -> str | None:
    """``Environment: GPU NVIDIA H200; driver 580.159.04; ...`` or ``None`` if nothing is known."""
    envs = [r.get("environment") or {} for r in records]
    parts = []
    for aliases, title in ENVIRONMENT_KEYS:
        values = _distinct(next((e[k] for k in aliases if e.get(k) is not None), None) for e in envs)
        if values:
            parts.append(f"{title} {', '.join(values)}")
    return f"Environment: {'; '.join(parts)}." if parts else None


def _sampling(records: list[Mapping[str, Any]]) -> str:
    key = "nvml_sample_interval_seconds"
    intervals = _distinct((r.get("environment") or {}).get(key, (r.get("measured") or {}).get(key)) for r in records)
    text = "sampled during the measured steps"
    if intervals:
        text = f"sampled every {', '.join(f'{float(s) * 1000:g}' for s in intervals)} ms during the measured steps"
    modes = _distinct((r.get("measured") or {}).get("nvml_mode") for r in records)
    if "device-delta" in modes:
        text += (
            "; where the driver could not attribute memory to the process (nvml_mode device-delta), "
            "device-wide used memory minus its level before the cell"
        )
    return text


def _sources(records: list[Mapping[str, Any]]) -> str | None:
    """Where imported records came from (``environment.provenance``), with their notes."""
    sources: dict[str, int] = {}
    notes: set[str] = set()
    for r in records:
        provenance = (r.get("environment") or {}).get("provenance") or {}
        if provenance.get("source"):
            sources[provenance["source"]] = sources.get(provenance["source"], 0) + 1
        if provenance.get("note"):
            notes.add(str(provenance["note"]).rstrip("."))
    if not sources:
        return None
    line = "Source: " + "; ".join(f"{s} ({n} rows)" for s, n in sorted(sources.items()))
    return line + "".join(f". {n[:1].upper()}{n[1:]}" for n in sorted(notes)) + "."


def footnotes(records: list[Mapping[str, Any]], mode: str) -> tuple[str, ...]:
    """The lines under a table of ``records`` in ``mode`` (``measured`` or ``plan``)."""
    notes = ["GiB = 2**30 bytes."]
    if mode == "plan":
        notes += [
            "Predicted: bench's memory prediction of the peak per GPU (its parts: `bench predict`).",
            "% of GPU: predicted peak over the GPU's memory. Fits: no allocation fails on that card (near its limit the allocator releases its cache first, as PyTorch's does).",
        ]
        notes += _host(records)
        return tuple(notes)
    counts: dict[str, int] = {}
    for r in records:
        counts[r.get("status") or "unknown"] = counts.get(r.get("status") or "unknown", 0) + 1
    gpu_rows = [r for r in records if not hardware.is_cpu(r)]
    if gpu_rows or not records:
        notes += [
            "Peak VRAM: peak of NVML's per-process used memory (CUDA context, allocator cache and all: "
            f"what decides whether a job fits), {_sampling(gpu_rows)}; per GPU for multi-GPU cells; "
            "'>' marks the memory held when an OOM cell failed.",
            "% of GPU: peak over the GPU's memory. Predicted: bench's memory prediction; "
            "Error = (predicted - measured) / measured.",
        ]
    notes += [
        "Tokens/s: training tokens (batch x context length x gradient accumulation) per median step time; "
        "for inference, generated tokens per second."
        + (
            " MFU: model FLOPs per second (6N rule) over the GPU's dense peak for the precision."
            if gpu_rows or not records
            else ""
        ),
        "Cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + " (failed cells are kept as rows).",
    ]
    for line in (_emulated(records), _cpu(records), _freshness(records), environment_line(records), _sources(records)):
        if line:
            notes.append(line)
    return tuple(notes)


def _host(records: list[Mapping[str, Any]]) -> list[str]:
    """A plan's stated host: what Fits host compares, and what an offload costs."""
    preds = [r.get("predicted") or {} for r in records]
    stated = sorted({p["host_memory_bytes"] for p in preds if p.get("host_memory_bytes")})
    out = []
    if stated:
        sizes = ", ".join(f"{round(n / 2**30, 1):g} GiB" for n in stated)
        out.append(
            f"Fits host: host RAM per node (its ranks' host memory; a split cell's offloaded weights) "
            f"within the stated host RAM ({sizes}, the matrix's host_memory or --host-memory)."
        )
    if any(p.get("host_offload") for p in preds):
        out.append(
            "On host: a split cell's weights that fit on no card, offloaded to the host as accelerate does "
            "(share of the model's weights); they run on card 0 with their weights copied over PCIe at every "
            "forward. Offload slowdown: generate() time over the same without those copies (the seconds they add, "
            "counted in Step (s))."
        )
    return out


def _emulated(records: list[Mapping[str, Any]]) -> str | None:
    """Which rows ran on a larger card capped at the target's memory, and what that means."""
    emulated = [r for r in records if hardware.emulation(r)]
    if not emulated:
        return None
    hosts = ", ".join(sorted({hardware.emulation(r).host for r in emulated}))  # type: ignore[union-attr]
    return (
        f"Emulated: {len(emulated)} rows ran on {hosts} with torch capped at the target card's memory "
        "(torch.cuda.set_per_process_memory_fraction); their memory answers whether the cell fits the target, "
        f"but their Tokens/s and MFU are the host card's (marked 'on {hosts}'), not the target's; "
        "Predicted tokens/s is the target card's."
    )


def _cpu(records: list[Mapping[str, Any]]) -> str | None:
    n = sum(hardware.is_cpu(r) for r in records)
    if not n:
        return None
    return (
        f"CPU runs: {n} rows ran with `bench run --device cpu`; their peak is the process's peak host RSS "
        "(no GPU), and the GPU memory prediction is not compared with it (no Predicted, Error or % of GPU)."
    )


def _freshness(records: list[Mapping[str, Any]]) -> str | None:
    stale = sum(bool(r.get("prediction_stale")) for r in records)
    fresh = sum(bool(r.get("prediction_refreshed")) for r in records)
    parts = []
    if fresh:
        parts.append(
            f"{fresh} predictions were made by an older predictor and predicted afresh for this report "
            "(Error is against the fresh prediction)"
        )
    if stale:
        parts.append(
            f"{stale} predictions were made by another predictor version and not predicted afresh "
            "(marked stale; `bench report` without --no-repredict predicts them again)"
        )
    return "Predictions: " + "; ".join(parts) + "." if parts else None
