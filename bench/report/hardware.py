"""What hardware a record was measured on, as a report must say it.

Three cases, read from the record's ``environment`` (written by the runner,
``bench.run.record.build`` and ``bench.worker.child.cap_memory``):

- a GPU run on the matrix's card: the cell's GPU is the card that ran it;
- an **emulated** run (``emulated_target: true``): a larger host card (the
  environment's ``gpu_name``, e.g. an H200) capped with
  ``torch.cuda.set_per_process_memory_fraction`` at the target's memory
  (``target_memory_bytes``). Its memory figures answer "does it fit on the
  target"; its speed (tokens/s, MFU) is the host card's, not the target's;
- a **CPU** run (``device: cpu``, ``bench run --device cpu``): the peak is
  the host process's RSS; there is no GPU, and a GPU prediction is not
  comparable with it.

Each helper takes a record and answers for that record alone, so a report
mixing the three says which row is which.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.report.catalog import DEFAULT, Catalog

Record = Mapping[str, Any]


def _env(record: Record) -> Mapping[str, Any]:
    return record.get("environment") or {}


def is_cpu(record: Record) -> bool:
    """Measured by ``bench run --device cpu`` (the peak is host RSS)."""
    device = str(_env(record).get("device") or "")
    return device == "cpu" or device.startswith("cpu:")


def device(record: Record) -> str:
    """``cpu`` or ``cuda``: the key ``bench.run.record.measured_peak`` reads."""
    return "cpu" if is_cpu(record) else "cuda"


@dataclass(frozen=True)
class Emulation:
    """A run on a larger card capped at the target's memory."""

    host: str
    """The card that ran it (``H200``)."""
    cap_bytes: int | None
    """The target's memory the run was capped at (``target_memory_bytes``)."""


def emulation(record: Record) -> Emulation | None:
    """How the run was emulated, or ``None`` when it ran on its own card (or the CPU)."""
    env = _env(record)
    if not env.get("emulated_target") or is_cpu(record):
        return None
    host = str(env.get("gpu_name") or "a larger GPU")
    for vendor in ("NVIDIA ", "Tesla "):
        host = host.removeprefix(vendor)
    cap = env.get("target_memory_bytes")
    return Emulation(host=host, cap_bytes=int(cap) if isinstance(cap, (int, float)) else None)


def gpu_label(record: Record, catalog: Catalog = DEFAULT) -> str:
    """The GPU as a table names it: ``RTX 4090 24GB (emulated on H200, capped at 23.99 GiB)``, ``CPU``."""
    if is_cpu(record):
        return "CPU (host RSS)"
    name = catalog.gpu_label(record["cell"]["gpu"])
    emu = emulation(record)
    if emu is None:
        return name
    cap = f", capped at {emu.cap_bytes / 2**30:.2f} GiB" if emu.cap_bytes else ""
    return f"{name} (emulated on {emu.host}{cap})"


def panel_label(record: Record, catalog: Catalog = DEFAULT) -> str:
    """Short hardware name for a plot panel: ``RTX 4090 24GB, emulated on H200``."""
    if is_cpu(record):
        return "CPU"
    name = catalog.gpu_label(record["cell"]["gpu"])
    emu = emulation(record)
    return f"{name}, emulated on {emu.host}" if emu else name


def speed_suffix(record: Record) -> str:
    """Appended to a measured speed that is the host card's, not the target's: `` (on H200)``."""
    emu = emulation(record)
    return f" (on {emu.host})" if emu else ""


def measured_peak(record: Record) -> float | None:
    """The peak that decides a fit on the record's device: NVML per process, host RSS on the CPU."""
    from bench.run.record import measured_peak as peak

    value = peak(record.get("measured"), device(record))
    return None if value is None else float(value)
