"""What the machine is: GPUs, driver, host, library versions, git commit.

Read in the parent without importing torch: GPUs come from NVML (or
``nvidia-smi -L`` when pynvml cannot load the library), library versions from
package metadata. ``describe()`` is written once per run as
``results/<gpu>/machine.json``; ``environment()`` is the part every record
repeats (the worker adds what only the child knows, such as the CUDA runtime).
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.worker import nvml as nvmlmod

LIBRARIES = ("torch", "transformers", "accelerate", "peft", "deepspeed", "bitsandbytes", "nvidia-ml-py")
"""Recorded as ``<name>_version``; accelerate runs the HF Trainer loop's AMP, DDP and DeepSpeed."""
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device as NVML (or nvidia-smi) names it."""

    index: int
    name: str
    uuid: str | None = None
    memory_bytes: int | None = None


def _nvidia_smi() -> list[GpuInfo]:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    found = []
    for line in out.stdout.splitlines():
        m = re.match(r"GPU (\d+): (.+?)(?: \(UUID: (\S+)\))?$", line.strip())
        if m:
            found.append(GpuInfo(index=int(m.group(1)), name=m.group(2), uuid=m.group(3)))
    return found


def gpus(nvml: Any | None = None) -> list[GpuInfo]:
    """Every CUDA device on this host; empty when there is none."""
    nv = nvml if nvml is not None else nvmlmod.load()
    if nv is None:
        return _nvidia_smi()
    found = []
    try:
        for i in range(nv.nvmlDeviceGetCount()):
            facts = nvmlmod.device_facts(nv, nv.nvmlDeviceGetHandleByIndex(i))
            found.append(
                GpuInfo(index=i, name=facts["gpu_name"], uuid=facts["gpu_uuid"], memory_bytes=facts["gpu_memory_bytes"])
            )
    except nv.NVMLError:
        return _nvidia_smi()
    return found


def driver(nvml: Any | None = None) -> str | None:
    nv = nvml if nvml is not None else nvmlmod.load()
    if nv is None:
        return None
    try:
        v = nv.nvmlSystemGetDriverVersion()
    except nv.NVMLError:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries that move memory."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """``git describe --always --dirty`` of the bench checkout, if it is one."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _host_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, Any]:
    """The parent-side part of every record's ``environment``."""
    return {
        "hostname": socket.gethostname(),
        "device": device,
        "git_commit": git_commit(),
        "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        **{f"{k.replace('-', '_')}_version": v for k, v in versions().items()},
    }


def describe(device: str, found: list[GpuInfo]) -> dict[str, Any]:
    """``machine.json``: the host, its GPUs and the software stack."""
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "host_memory_bytes": _host_memory_bytes(),
        "device": device,
        "gpus": [asdict(g) for g in found],
        "driver": driver() if found else None,
        "git_commit": git_commit(),
        "versions": versions(),
    }
