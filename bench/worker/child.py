"""The child that measures one cell: ``python -m bench.worker.child JOB.json OUT.json``.

One cell, one fresh process: the CUDA context, allocator state and library
globals of one cell never leak into the next. The worker starts the memory
sampler before CUDA is initialised (so NVML's baseline is clean), caps the
process at the target GPU's memory when emulating it, trains or generates
(``bench.methods.training`` / ``bench.methods.generation``), and writes ``OUT.json``::

    {"status": "ok" | "oom" | "error", "measured": {...}, "environment": {...}, "error": str | None}

With ``memory_snapshot`` in the job (``bench run --memory-snapshot``) the
CUDA allocator's history over the run is dumped to that file
(``bench.worker.peak.MemorySnapshot``; rank ``r > 0`` of a multi-rank cell
writes ``...rank<r>.memory.pickle`` beside it) and ``measured.memory_snapshot``
names it; on the CPU nothing is taken and ``measured.memory_snapshot_note`` says so.

An OOM (``torch.OutOfMemoryError``) is caught and reported with the peaks
reached so far (exit code ``bench.status.EXIT_OOM``); any other exception prints its
traceback to stderr (exit code 1). Under ``torchrun`` every rank measures its
own GPU and rank 0 writes the per-key maximum of the peaks. The worker exits
as soon as its parent is gone, so a killed runner leaves no orphans.

Test hook: ``BENCH_WORKER_INJECT=ACTION[@TEXT]`` (only for cells whose slug
contains ``TEXT``) makes the worker raise ``torch.OutOfMemoryError`` right
before its first step (``oom``), or, as soon as it starts, raise
``RuntimeError`` (``error``), kill itself with SIGKILL (``sigkill``), or start
a ``sleep`` grandchild and hang (``hang``). It exists for the runner's tests
and has no other use.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.methods import ranks
from bench.status import ERROR, EXIT_OOM, OK, OOM, is_oom_text
from bench.worker import nvml
from bench.worker.peak import MemorySnapshot

INJECT_ENV = "BENCH_WORKER_INJECT"
PEAK_KEYS = (
    "peak_nvml_process_bytes",
    "peak_nvml_device_bytes",
    "peak_torch_allocated_bytes",
    "peak_torch_reserved_bytes",
    "peak_host_rss_bytes",
    "alloc_retries",
    "ooms",
)


RUNNER_PID_ENV = "BENCH_RUNNER_PID"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def watch_parent(interval_s: float = 0.5) -> None:
    """Exit at once when the parent or the runner dies (the runner was killed).

    The runner's pid (``BENCH_RUNNER_PID``) matters under torchrun, where the
    parent is torchrun itself and would outlive a killed runner.
    """
    parent = os.getppid()
    runner = int(os.environ.get(RUNNER_PID_ENV, "0") or 0)

    def loop() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent or (runner > 0 and _gone(runner)):
                os._exit(137)

    threading.Thread(target=loop, name="bench-parent-watch", daemon=True).start()


def injected(slug: str, at_start: bool, env: dict[str, str] | None = None) -> Callable[[], None] | None:
    """The test hook's action for this cell at this point, or ``None`` (see the module docstring)."""
    spec = (os.environ if env is None else env).get(INJECT_ENV, "")
    action, _, only = spec.partition("@")
    if not action or (only and only not in slug) or (action == "oom") == at_start:
        return None

    def fire() -> None:
        if action == "oom":
            import torch

            raise torch.OutOfMemoryError(f"injected by {INJECT_ENV}=oom (test hook)")
        if action == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "hang":
            child = subprocess.Popen(["sleep", "600"])
            print(f"{INJECT_ENV}=hang: grandchild pid {child.pid}", file=sys.stderr, flush=True)
            while True:
                time.sleep(1)
        raise RuntimeError(f"injected by {INJECT_ENV}={action} (test hook)")

    return fire


def cap_memory(cell: Any, enabled: bool) -> dict[str, Any]:
    """On a card larger than the target, cap torch at the target's capacity minus
    what the process holds outside the allocator (the recipe's, which the
    predictor adds to its peak)."""
    import torch

    from bench import gpus, recipe

    index = ranks.local_rank()
    total = torch.cuda.get_device_properties(index).total_memory
    target = gpus.of_cell(cell).memory_bytes
    if not enabled or target >= total:
        return {"emulated_target": False}
    overhead = recipe.of(cell).outside_allocator_bytes
    fraction = max(0.0, (target - overhead) / total)
    cards = recipe.of(cell).devices  # split: every card of the process is the target card
    for card in range(index, index + cards):
        torch.cuda.set_per_process_memory_fraction(fraction, card)
    return {
        "emulated_target": True,
        "memory_fraction": fraction,
        "target_memory_bytes": target,
        "overhead_estimate_bytes": overhead,
    }


def torch_peaks(device: str) -> dict[str, Any]:
    import torch

    if device != "cuda" or not torch.cuda.is_initialized():
        return {
            "peak_torch_allocated_bytes": None,
            "peak_torch_reserved_bytes": None,
            "alloc_retries": None,
            "ooms": None,
        }
    stats = torch.cuda.memory_stats()
    return {
        "peak_torch_allocated_bytes": torch.cuda.max_memory_allocated(),
        "peak_torch_reserved_bytes": torch.cuda.max_memory_reserved(),
        "alloc_retries": stats.get("num_alloc_retries", 0),
        "ooms": stats.get("num_ooms", 0),
    }


def runtime_environment(device: str, sampler: nvml.Sampler) -> dict[str, Any]:
    """What only the child knows: the CUDA runtime and the card it runs on."""
    import torch

    env: dict[str, Any] = {
        "device": device,
        "torch_version": torch.__version__,
        "cuda": torch.version.cuda,
        "world_size": ranks.world_size(),
    }
    if device == "cuda" and sampler.nvml is not None:
        try:
            env.update(nvml.device_facts(sampler.nvml, sampler.handle))
        except sampler.nvml.NVMLError:
            pass
    elif device == "cuda" and torch.cuda.is_available():
        env["gpu_name"] = torch.cuda.get_device_name(ranks.local_rank())
    return env


def combine_ranks(measured: dict[str, Any]) -> dict[str, Any]:
    """Rank 0's record with every peak replaced by the maximum over ranks."""
    import torch.distributed as dist

    if ranks.world_size() == 1 or not dist.is_initialized():
        return measured
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, measured)
    out = dict(measured)
    for key in PEAK_KEYS:
        values = [m.get(key) for m in everyone if m and m.get(key) is not None]
        out[key] = max(values) if values else None
    for key in (
        "peak_nvml_process_bytes",
        "peak_torch_allocated_bytes",
        "peak_torch_reserved_bytes",
        "peak_host_rss_bytes",
        "resident_bytes",
    ):
        out[f"{key}_per_rank"] = [m.get(key) for m in everyone]
    return out


def snapshot_path(path: str | None, rank: int) -> Path | None:
    """Where this rank writes the allocator snapshot: the job's file on rank 0, ``<stem>.rank<r>...`` beside it."""
    if path is None or rank == 0:
        return Path(path) if path is not None else None
    p = Path(path)
    head, _, tail = p.name.partition(".")
    return p.with_name(f"{head}.rank{rank}.{tail}")


def per_card(first: dict[str, Any], rest: list[dict[str, Any]], measured: dict[str, Any]) -> dict[str, Any]:
    """A ``split: layers`` cell's peaks: NVML of every card in ``*_per_rank`` (card order) and
    every peak the maximum over the cards, the bottleneck's, as the prediction gives it."""
    out: dict[str, Any] = {}
    nvml_cards = [first.get("peak_nvml_process_bytes")] + [r.get("peak_nvml_process_bytes") for r in rest]
    out["peak_nvml_process_bytes_per_rank"] = nvml_cards
    known = [v for v in nvml_cards if v is not None]
    out["peak_nvml_process_bytes"] = max(known) if known else None
    for key in ("peak_torch_allocated_bytes", "peak_torch_reserved_bytes"):
        values = [v for v in measured.get(f"{key}_per_rank") or [] if v is not None]
        if values:
            out[key] = max(values)
    return out


def measure(job: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any], str | None]:
    """Run the job's cell; returns (status, measured, environment, error)."""
    from bench import cell as cellmod, models

    cell = cellmod.normalize(job["cell"])
    device = job["device"]
    sampler = nvml.Sampler(device=device, index=nvml.device_index(ranks.local_rank())).start()
    from bench import recipe as recipes

    cards = recipes.of(cell).devices if device == "cuda" else 1
    others = [nvml.Sampler(device=device, index=nvml.device_index(i)).start() for i in range(1, cards)]
    import torch

    from bench.methods import generation, training
    from bench.worker import flops

    env: dict[str, Any] = {"emulated_target": False}
    status, error, timing = OK, None, {}
    spec = models.resolve(cell.model)
    recorder = MemorySnapshot(snapshot_path(job.get("memory_snapshot"), ranks.rank()), device)
    try:
        if device == "cuda":
            torch.cuda.set_device(ranks.local_rank())
            env.update(cap_memory(cell, job.get("emulate_target", True)))
        recorder.start()
        run = training.train if cell.trains else generation.infer
        timing = run(cell, spec, device, injected(job["slug"], at_start=False))
    except torch.OutOfMemoryError as e:
        status, error = OOM, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        traceback.print_exc()
    except Exception as e:  # recorded with its traceback; an OOM under another name is still an OOM
        error = f"{type(e).__name__}: {e}"
        status = OOM if is_oom_text(error) else ERROR
        traceback.print_exc()
    snapshot = recorder.stop()
    if snapshot.get("memory_snapshot_note"):
        print(f"memory snapshot {snapshot['memory_snapshot_note']}", file=sys.stderr)
    peaks = sampler.stop()
    env.update(runtime_environment(device, sampler))
    measured: dict[str, Any] = {**peaks, **torch_peaks(device), **timing, **snapshot}
    if others:  # split: one process over several cards; the per-rank fields hold one entry per card
        measured.update(per_card(peaks, [o.stop() for o in others], measured))
    if status == OK:
        peak = None
        if device == "cuda":
            peak, env["mfu_peak_gpu"] = flops.peak_tflops(cell, env.get("gpu_name"), env.get("gpu_memory_bytes"))
        measured.update(flops.throughput(cell, timing, spec.is_encoder_decoder, device, peak))
        measured = combine_ranks(measured)
    return status, measured, env, error


def write_out(path: Path, out: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.worker.child JOB.json OUT.json", file=sys.stderr)
        return 2
    job = json.loads(Path(args[0]).read_text())
    hook = injected(job["slug"], at_start=True)
    if hook is not None:
        hook()
    ranks.single_rank_env()
    watch_parent()
    status, measured, env, error = measure(job)
    if ranks.rank() == 0:
        write_out(Path(args[1]), {"status": status, "measured": measured, "environment": env, "error": error})
    from bench.methods import parallel

    parallel.shutdown()
    return {OK: 0, OOM: EXIT_OOM}.get(status, 1)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the result is written: skip library teardown (atexit, NCCL) that can hang
