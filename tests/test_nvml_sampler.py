"""The memory sampler's logic against a fake NVML: the three GPU modes and the CPU one."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from bench.worker import nvml, procmem


class FakeNVMLError(Exception):
    pass


class FakeNVML:
    """pynvml's surface as the sampler uses it; tests script ``used`` and ``procs``."""

    NVMLError = FakeNVMLError

    def __init__(self, used: int = 1000, procs: list | None = None, procs_error: bool = False) -> None:
        self.used = used
        self.procs = procs or []
        self.procs_error = procs_error

    def nvmlDeviceGetHandleByIndex(self, i):
        if i != 0:
            raise FakeNVMLError("no such device")
        return "h0"

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return "h0"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=self.used, total=80 * 2**30, free=0)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        if self.procs_error:
            raise FakeNVMLError("not supported")
        return self.procs

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA A100-SXM4-80GB"

    def nvmlDeviceGetUUID(self, h):
        return "GPU-1234"

    def nvmlSystemGetDriverVersion(self):
        return "580.1"


def proc(pid: int, used: int | None) -> SimpleNamespace:
    return SimpleNamespace(pid=pid, usedGpuMemory=used)


ME = os.getpid()


def manual(fake: FakeNVML, pids: set[int] | None = None) -> nvml.Sampler:
    """A started sampler whose readings the test takes by hand (no thread)."""
    s = nvml.Sampler(device="cuda", nvml=fake, root_pid=ME, pids=lambda: pids or {ME})
    return s.start(threaded=False)


def test_process_mode_sums_the_cells_process_tree_only():
    fake = FakeNVML(used=500)
    s = manual(fake, pids={ME, 4242})
    fake.procs = [proc(ME, 100), proc(4242, 50), proc(9999, 10_000)]  # 9999: someone else
    fake.used = 10_650
    s.sample()
    fake.procs = [proc(ME, 300), proc(4242, 50), proc(9999, 10_000)]
    fake.used = 10_850
    s.sample()
    fake.procs = [proc(ME, 120)]
    s.sample()
    out = s.stop()
    assert out["nvml_mode"] == "process"
    assert out["peak_nvml_process_bytes"] == 350
    assert out["peak_nvml_device_bytes"] == 10_850


def test_device_delta_when_the_driver_reports_other_pids():
    """In a container NVML lists host pids: none is ours, so fall back to device minus baseline."""
    fake = FakeNVML(used=2000, procs=[proc(123456, 777)])
    s = manual(fake)
    fake.used = 5000
    s.sample()
    fake.used = 4000
    out = s.stop()
    assert out["nvml_mode"] == "device-delta"
    assert out["nvml_baseline_device_bytes"] == 2000
    assert out["peak_nvml_process_bytes"] == 3000
    assert out["peak_nvml_device_bytes"] == 5000


@pytest.mark.parametrize(
    "fake",
    [FakeNVML(procs_error=True), FakeNVML(procs=[proc(ME, None)])],
    ids=["process-list-not-supported", "used-memory-not-available"],
)
def test_device_delta_when_processes_cannot_be_attributed(fake):
    s = manual(fake)
    fake.used += 64
    out = s.stop()
    assert out["nvml_mode"] == "device-delta"
    assert out["peak_nvml_process_bytes"] == 64


def test_missing_library_is_unavailable_not_a_crash(monkeypatch):
    monkeypatch.setattr(nvml, "load", lambda: None)
    out = nvml.Sampler(device="cuda").start().stop()
    assert out["nvml_mode"] == "unavailable"
    assert out["peak_nvml_process_bytes"] is None and out["peak_nvml_device_bytes"] is None
    assert out["peak_host_rss_bytes"] > 0


def test_load_without_pynvml_returns_none(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pynvml(name, *a, **k):
        if name == "pynvml":
            raise ImportError("no pynvml")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    assert nvml.load() is None


def test_nvml_errors_mid_run_skip_the_reading():
    fake = FakeNVML(used=100, procs=[proc(ME, 40)])
    s = manual(fake)
    fake.nvmlDeviceGetMemoryInfo = lambda h: (_ for _ in ()).throw(FakeNVMLError("gone"))
    s.sample()
    out = s.stop()
    assert out["nvml_mode"] == "process" and out["peak_nvml_process_bytes"] == 40


def test_thread_samples_about_every_10_ms():
    fake = FakeNVML(used=100)
    s = nvml.Sampler(device="cuda", nvml=fake, root_pid=ME).start()
    time.sleep(0.3)
    out = s.stop()
    assert 5 <= out["memory_samples"] <= 40  # ~30 at 10 ms; a loaded machine samples less


def test_cpu_mode_samples_host_rss_of_the_tree():
    s = nvml.Sampler(device="cpu").start()
    blob = bytearray(64 * 2**20)  # 64 MiB, touched
    for i in range(0, len(blob), 4096):
        blob[i] = 1
    time.sleep(0.05)
    out = s.stop()
    assert out["nvml_mode"] == "host-rss"
    assert out["peak_nvml_process_bytes"] is None
    assert out["peak_host_rss_bytes"] >= procmem.rss_bytes() - 2**20
    del blob


def test_device_index_follows_cuda_visible_devices():
    assert nvml.device_index(0, {}) == 0
    assert nvml.device_index(1, {"CUDA_VISIBLE_DEVICES": "4,6"}) == 6
    assert nvml.device_index(0, {"CUDA_VISIBLE_DEVICES": "GPU-abc"}) == "GPU-abc"


def test_device_facts_decode_bytes():
    fake = FakeNVML()
    facts = nvml.device_facts(fake, "h0")
    assert facts == {
        "gpu_name": "NVIDIA A100-SXM4-80GB",
        "gpu_uuid": "GPU-1234",
        "gpu_memory_bytes": 80 * 2**30,
        "driver": "580.1",
    }


def test_process_tree_finds_children():
    import subprocess

    child = subprocess.Popen(["sleep", "5"])
    try:
        deadline = time.time() + 2
        while child.pid not in procmem.tree(ME) and time.time() < deadline:
            time.sleep(0.01)
        assert child.pid in procmem.tree(ME)
        assert procmem.rss_bytes({ME, child.pid}) > procmem.rss_bytes({ME})
    finally:
        child.kill()
        child.wait()
