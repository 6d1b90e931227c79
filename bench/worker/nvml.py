"""The memory sampler: NVML every ~10 ms on a GPU, host RSS on the CPU.

NVML sees what ``torch.cuda.max_memory_reserved`` does not: the CUDA context,
cuBLAS/NCCL workspaces and any other library's allocations. That is the number
that decides whether a cell fits, so the sampler records it under three modes
(``measured["nvml_mode"]``):

- ``process``: the summed ``usedGpuMemory`` of the cell's process tree, from
  ``nvmlDeviceGetComputeRunningProcesses`` (the default on a bare host);
- ``device-delta``: device-used minus the device-used taken before the cell
  started. Used when the driver cannot attribute memory to our pids (inside a
  container the driver reports host pids, or ``usedGpuMemory`` is missing).
  Another process on the same GPU pollutes it, hence the flag;
- ``unavailable``: no NVML (pynvml missing, no driver library): GPU peaks are
  ``None`` and only torch's own counters are left.

On ``--device cpu`` the mode is ``host-rss`` and the GPU peaks are ``None``.
The host RSS of the process tree is sampled in every mode
(``peak_host_rss_bytes``), as CPU offload moves memory there.

``nvml`` is injectable: anything with pynvml's functions and ``NVMLError`` works,
which is how the sampler's logic is tested without a GPU.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from bench.worker import procmem

MODES = ("process", "device-delta", "unavailable", "host-rss")
INTERVAL_S = 0.010
HOST_INTERVAL_S = 0.100
"""On ``--device cpu`` the kernel keeps this process's peak RSS itself (VmHWM,
read at ``stop()``), so sampling only has to catch child processes: ten times
less often, ten times fewer wake-ups competing with torch's threads."""
TREE_REFRESH_SAMPLES = 25
"""Re-read the process tree every this many samples (children rarely appear)."""


def load() -> Any | None:
    """pynvml, initialised, or ``None`` when the module or the library is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    return pynvml


def device_index(local_rank: int = 0, env: dict[str, str] | None = None) -> int | str:
    """The NVML index (or UUID) of the CUDA device a rank uses.

    NVML counts every GPU in PCI order; CUDA counts the ones in
    ``CUDA_VISIBLE_DEVICES``. The executor sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
    so that integer entries are NVML indices.
    """
    env = os.environ if env is None else env  # type: ignore[assignment]
    visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]  # type: ignore[union-attr]
    if not visible:
        return local_rank
    entry = visible[min(local_rank, len(visible) - 1)]
    return int(entry) if entry.isdigit() else entry


def handle(nvml: Any, index: int | str) -> Any:
    """An NVML device handle by index or UUID."""
    if isinstance(index, str):
        return nvml.nvmlDeviceGetHandleByUUID(index)
    return nvml.nvmlDeviceGetHandleByIndex(index)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def device_facts(nvml: Any, h: Any) -> dict[str, Any]:
    """Name, UUID, total memory and driver of one device, for records."""
    return {
        "gpu_name": _text(nvml.nvmlDeviceGetName(h)),
        "gpu_uuid": _text(nvml.nvmlDeviceGetUUID(h)),
        "gpu_memory_bytes": int(nvml.nvmlDeviceGetMemoryInfo(h).total),
        "driver": _text(nvml.nvmlSystemGetDriverVersion()),
    }


class Sampler:
    """Peak memory of one cell, sampled on a daemon thread.

    Contract: ``start()`` takes the device baseline (call it before CUDA is
    initialised) and starts sampling; ``stop()`` returns the ``measured`` keys
    below and may be called once. ``sample()`` takes one reading by hand (tests).

    Returned keys: ``peak_nvml_process_bytes``, ``peak_nvml_device_bytes``,
    ``nvml_baseline_device_bytes``, ``nvml_mode``, ``peak_host_rss_bytes``,
    ``memory_samples``.
    """

    def __init__(
        self,
        *,
        device: str = "cuda",
        index: int | str = 0,
        interval_s: float | None = None,
        nvml: Any | None = None,
        root_pid: int | None = None,
        pids: Callable[[], set[int]] | None = None,
    ) -> None:
        self.device = device
        self.interval_s = (
            interval_s if interval_s is not None else (INTERVAL_S if device == "cuda" else HOST_INTERVAL_S)
        )
        self.root_pid = os.getpid() if root_pid is None else root_pid
        self._pids_fn = pids or (lambda: procmem.tree(self.root_pid))
        self._pids: set[int] = {self.root_pid}
        # host RSS is read every HOST_INTERVAL_S even when NVML is read faster
        self._rss_every = max(1, round(HOST_INTERVAL_S / self.interval_s))
        self.nvml = None
        self.handle = None
        if device == "cuda":
            self.nvml = nvml if nvml is not None else load()
            if self.nvml is not None:
                try:
                    self.handle = handle(self.nvml, index)
                except self.nvml.NVMLError:
                    self.nvml = None
        self.baseline_device: int | None = None
        self.peak_device: int | None = None
        self.peak_process: int | None = None
        self.peak_rss = 0
        self.attributed = False
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _device_used(self) -> int | None:
        try:
            return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)  # type: ignore[union-attr]
        except self.nvml.NVMLError:  # type: ignore[union-attr]
            return None

    def sample(self) -> None:
        """One reading of every quantity; NVML errors skip that quantity."""
        if self.samples % TREE_REFRESH_SAMPLES == 0:
            self._pids = self._pids_fn() | {self.root_pid}
        if self.samples % self._rss_every == 0:
            self.peak_rss = max(self.peak_rss, procmem.rss_bytes(self._pids))
        self.samples += 1
        if self.nvml is None:
            return
        used = self._device_used()
        if used is not None:
            self.peak_device = used if self.peak_device is None else max(self.peak_device, used)
        try:
            procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except self.nvml.NVMLError:
            return
        mine = [p.pid for p in procs if p.pid in self._pids]
        amounts = [getattr(p, "usedGpuMemory", None) for p in procs if p.pid in self._pids]
        if mine and all(isinstance(a, int) for a in amounts):
            self.attributed = True
            total = sum(amounts)  # type: ignore[arg-type]
            self.peak_process = total if self.peak_process is None else max(self.peak_process, total)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self, threaded: bool = True) -> Sampler:
        """Take the baseline and the first reading; sample on a thread unless ``threaded=False``."""
        if self.nvml is not None:
            self.baseline_device = self._device_used()
        self.sample()
        if threaded:
            self._thread = threading.Thread(target=self._loop, name="bench-memory-sampler", daemon=True)
            self._thread.start()
        return self

    @property
    def mode(self) -> str:
        if self.device != "cuda":
            return "host-rss"
        if self.nvml is None:
            return "unavailable"
        return "process" if self.attributed else "device-delta"

    def stop(self) -> dict[str, Any]:
        """Stop sampling (after one last reading) and return the peaks."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        mode = self.mode
        process: int | None = None
        if mode == "process":
            process = self.peak_process
        elif mode == "device-delta" and self.peak_device is not None:
            process = self.peak_device - (self.baseline_device or 0)
        peak_rss = self.peak_rss
        if self.root_pid == os.getpid():
            peak_rss = max(peak_rss, procmem.peak_rss_bytes())
        return {
            "peak_nvml_process_bytes": process,
            "peak_nvml_device_bytes": self.peak_device,
            "nvml_baseline_device_bytes": self.baseline_device,
            "nvml_mode": mode,
            "peak_host_rss_bytes": peak_rss,
            "memory_samples": self.samples,
        }

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self._stop.is_set():
            self.stop()
