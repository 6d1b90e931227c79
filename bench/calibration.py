"""``bench calibrate``: measure on this card what the step-time model assumes for it.

Runs in a child process (``python -m bench.calibration``; the parent never
touches CUDA) and writes a profile, a JSON object of ``speed_figures.Figures``
fields that ``bench predict/plan --calibration FILE`` use in place of the
catalog's fractions of datasheet peaks:

- ``matmul_flops_per_second``: the best of square matmuls (``sizes``) per dtype
  (fp32 without TF32, fp16, bf16), each timed over ``repeats`` after a warm-up;
- ``hbm_bytes_per_second``: a large device-to-device copy (read + write bytes);
- ``kernel_seconds``: the time per tiny kernel in a long loop of them (an upper
  bound on the fixed cost: launch latency or host dispatch, whichever is longer);
- ``host_link_bytes_per_second``: a pinned host-to-device copy;

and, for the record only (the memory model does not read it yet),
``context_bytes``: what the process holds on the card outside torch's
allocator after CUDA initialised and ran a matmul (NVML when available).

``measure(device)`` works on ``cpu`` too, with small sizes: that is how its
logic is tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

DTYPES = ("float32", "float16", "bfloat16")


def _timed(fn, sync, repeats: int) -> float:
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def measure(
    device: str = "cuda",
    sizes: tuple[int, ...] = (2048, 4096, 8192),
    copy_bytes: int = 2**30,
    repeats: int = 10,
    tiny_ops: int = 2000,
) -> dict:
    """The profile of ``device`` (``cuda`` or ``cpu``)."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # torch's default: fp32 matmuls on CUDA cores
    mm = {}
    for name in DTYPES:
        dtype = getattr(torch, name)
        best = 0.0
        for n in sizes:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            seconds = _timed(lambda: a @ b, sync, repeats)  # noqa: B023 - used at once
            best = max(best, 2 * n**3 / seconds)
        mm[name] = best
    n = copy_bytes // 4
    src, dst = torch.empty(n, device=device), torch.empty(n, device=device)
    hbm = 2 * copy_bytes / _timed(lambda: dst.copy_(src), sync, repeats)
    tiny = torch.zeros(1, device=device)
    kernel = _timed(lambda: [tiny.add_(1) for _ in range(tiny_ops)], sync, 1) / tiny_ops
    host = torch.empty(n, pin_memory=device == "cuda")
    link = copy_bytes / _timed(lambda: dst.copy_(host, non_blocking=True), sync, repeats)
    environment: dict[str, Any] = {"torch": torch.__version__, "device": device, "sizes": list(sizes)}
    if device == "cuda":
        environment["context_bytes"] = _context_bytes(torch)
    return {
        "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "matmul_flops_per_second": mm,
        "hbm_bytes_per_second": hbm,
        "kernel_seconds": kernel,
        "host_link_bytes_per_second": link,
        "environment": environment,
    }


def _context_bytes(torch) -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        import os

        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if p.pid == os.getpid() and p.usedGpuMemory:
                return int(p.usedGpuMemory) - torch.cuda.memory_reserved()
    except Exception:  # noqa: BLE001 - NVML is optional: the figure is informational
        return None
    return None


def cmd_calibrate(a) -> int:
    import subprocess

    from bench.errors import UserError

    cmd = [sys.executable, "-m", "bench.calibration", "--device", a.device, "-o", a.output]
    if a.quick:
        cmd.append("--quick")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"calibrate: the measuring process failed on {a.device}: {tail}")
    sys.stdout.write(done.stdout)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure this card's matmul, bandwidth, kernel and PCIe figures into a profile for --calibration",
        description="Measure, in a child process, this card's matmul FLOP/s per dtype, HBM and host-link "
        "bandwidth and per-kernel cost, and write them as a profile that predict, plan and autotune "
        "read with --calibration FILE in place of the catalog's fractions of datasheet peaks.",
    )
    p.add_argument(
        "--device", default="cuda", choices=("cuda", "cpu"), help="where to measure (cpu: tests the logic only)"
    )
    p.add_argument("-o", "--output", default="calibration.json", metavar="FILE", help="the profile to write")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds, less accurate)")
    p.set_defaults(func=cmd_calibrate)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.calibration")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("-o", "--output", default="calibration.json")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    small = a.quick or a.device == "cpu"
    profile = (
        measure(a.device, sizes=(256, 512), copy_bytes=2**24, repeats=3, tiny_ops=200) if small else measure(a.device)
    )
    Path(a.output).write_text(json.dumps(profile, indent=1) + "\n")
    mm = ", ".join(f"{k} {v / 1e12:.1f}" for k, v in profile["matmul_flops_per_second"].items())
    print(
        f"{profile['gpu']}: matmul TFLOP/s {mm}; HBM {profile['hbm_bytes_per_second'] / 1e9:.0f} GB/s; "
        f"kernel {profile['kernel_seconds'] * 1e6:.1f} us; host link "
        f"{profile['host_link_bytes_per_second'] / 1e9:.1f} GB/s -> {a.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
