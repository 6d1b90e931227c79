"""What is alive at a cell's peak, by the code that allocated it (CUDA only).

``python -m bench.worker.peak model=gpt2-medium tuning=lora precision=bf16 batch=4``
trains the cell as ``bench run`` does (``bench.methods.training.train``), records
the CUDA caching allocator's history (``torch.cuda.memory._record_memory_history``)
over ``warmup + steps`` optimizer steps, replays the allocation trace to the
moment the allocated bytes peaked, and prints the blocks alive then, grouped by
the innermost model-code frame that allocated them (transformers, PEFT,
DeepSpeed, bench) and the op's own frame. It answers "why is the peak what it
is" when a prediction and a measurement disagree.

It also writes the allocator snapshot itself (``--snapshot FILE``, by default
``<slug>.memory.pickle`` beside ``--json``'s file or in the current folder),
the file pytorch.org/memory_viz opens, and names it in the JSON result
(``memory_snapshot``), so that it can be put beside the predicted timeline of
``bench predict --timeline``.

``MemorySnapshot`` is that recording (``torch.cuda.memory._record_memory_history``
before the step, ``_dump_snapshot`` after it); the child of ``bench run
--memory-snapshot`` uses it too, into the record's folder. Off CUDA it takes
nothing and says so (``memory_snapshot: null`` with ``memory_snapshot_note``).
``live_at_peak`` is the replay, on a snapshot's ``device_traces`` (testable
without a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MODEL_CODE = ("/transformers/", "/peft/", "/deepspeed/", "/bench/")
"""Frames that name the model code responsible for an allocation."""


def _where(frames: list[dict[str, Any]]) -> str:
    """``op frame <- model frame`` for an allocation's Python stack (innermost first)."""
    if not frames:
        return "?"
    op = frames[0]
    model = next((f for f in frames if any(m in f.get("filename", "") for m in MODEL_CODE)), None)
    return _frame(op) if model is None or model is op else f"{_frame(op)} <- {_frame(model)}"


def _frame(f: dict[str, Any]) -> str:
    return f"{_short(f.get('filename', '?'))}:{f.get('line', '?')} {f.get('name', '?')}"


def _short(filename: str) -> str:
    for m in MODEL_CODE + ("/torch/",):
        if m in filename:
            return m.strip("/") + "/" + filename.split(m, 1)[1]
    return filename.rsplit("/", 1)[-1]


def live_at_peak(events: Iterable[dict[str, Any]], top: int = 30) -> dict[str, Any]:
    """Replay one device's trace; the peak of allocated bytes and what was alive then.

    ``alloc`` adds a block, ``free_completed`` removes it (``free_requested``
    too when the trace has no ``free_completed``, as with the default
    ``torch.cuda.memory._record_memory_history``). Blocks allocated before the
    recording began are not in the trace; ``peak_bytes`` counts traced blocks only.
    """
    events = list(events)
    free_action = "free_completed" if any(e.get("action") == "free_completed" for e in events) else "free_requested"
    live: dict[int, tuple[int, str]] = {}
    total = peak = 0
    peak_live: dict[int, tuple[int, str]] = {}
    for e in events:
        action = e.get("action")
        if action == "alloc":
            live[e["addr"]] = (int(e["size"]), _where(e.get("frames") or []))
            total += int(e["size"])
            if total > peak:
                peak, peak_live = total, dict(live)
        elif action == free_action and e["addr"] in live:
            total -= live.pop(e["addr"])[0]
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for size, where in peak_live.values():
        groups[where][0] += 1
        groups[where][1] += size
    ordered = sorted(groups.items(), key=lambda kv: -kv[1][1])
    return {
        "peak_bytes": peak,
        "blocks": len(peak_live),
        "groups": [{"where": w, "count": c, "bytes": b} for w, (c, b) in ordered[:top]],
        "other_bytes": sum(b for _, (_, b) in ordered[top:]),
    }


MAX_ENTRIES = 2_000_000
"""Allocator events the history keeps (a ring buffer: the last ones win)."""


class MemorySnapshot:
    """The CUDA caching allocator's history over a block of code, dumped to ``path``.

    ``start()`` before the step, ``stop()`` after it (also after an OOM: the
    history up to the failure is the useful part). ``stop()`` returns the
    fields the measurement records: ``memory_snapshot`` (the file's name, in
    the folder of the record that names it) or ``None`` with
    ``memory_snapshot_note`` saying why; nothing when no ``path`` was asked for.
    """

    def __init__(self, path: str | Path | None, device: str, max_entries: int = MAX_ENTRIES):
        self.path = Path(path) if path is not None else None
        self.device = device
        self.max_entries = max_entries
        self.recording = False

    def start(self) -> None:
        if self.path is None or self.device != "cuda":
            return
        import torch

        torch.cuda.memory._record_memory_history(max_entries=self.max_entries, stacks="python")
        self.recording = True

    def stop(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        if not self.recording:
            why = (
                f"not taken: the allocator history is CUDA's and this cell ran on {self.device}"
                if self.device != "cuda"
                else "not taken: the cell failed before its first step"
            )
            return {"memory_snapshot": None, "memory_snapshot_note": why}
        import torch

        from bench.store import temp_prefix

        tmp = self.path.with_name(f"{temp_prefix()}{self.path.name}")  # a killed writer's leftover: bench.run.leftovers
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.cuda.memory._dump_snapshot(str(tmp))
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return {"memory_snapshot": None, "memory_snapshot_note": f"not written: {e.strerror or e}"}
        finally:
            torch.cuda.memory._record_memory_history(enabled=None)
            self.recording = False
        return {"memory_snapshot": self.path.name}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.worker.peak", description=__doc__.split("\n\n")[0])
    p.add_argument("fields", nargs="+", metavar="key=value", help="the cell (gpu defaults to h100-80gb)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.add_argument(
        "--snapshot",
        metavar="FILE",
        help="where the allocator snapshot goes [<slug>.memory.pickle beside --json, else here]",
    )
    a = p.parse_args(argv)

    import torch

    from bench import models
    from bench.cell import normalize
    from bench.errors import UserError
    from bench.matrix import parse_overrides
    from bench.methods import training

    try:
        cell = normalize({"gpu": "h100-80gb", **dict(parse_overrides(a.fields))})
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(
            "error: python -m bench.worker.peak needs a CUDA GPU (the allocator history is CUDA's); "
            "no memory snapshot was taken",
            file=sys.stderr,
        )
        return 2
    folder = Path(a.json).parent if a.json else Path(".")
    recorder = MemorySnapshot(a.snapshot or folder / f"{cell.slug}.memory.pickle", "cuda")
    recorder.start()
    try:
        training.train(cell, models.resolve(cell.model), "cuda")
    finally:
        written = recorder.stop()
    if written.get("memory_snapshot") is None:
        print(f"error: memory snapshot {written['memory_snapshot_note']}", file=sys.stderr)
        return 1
    assert recorder.path is not None
    with open(recorder.path, "rb") as f:
        snap = pickle.load(f)  # the analysis reads the file it wrote
    result = live_at_peak(snap["device_traces"][0], top=a.top)
    result.update(
        cell=cell.slug,
        max_memory_allocated=torch.cuda.max_memory_allocated(),
        memory_snapshot=written["memory_snapshot"] if recorder.path.parent == folder else str(recorder.path),
    )
    print(
        f"{cell.slug}: max_memory_allocated {result['max_memory_allocated'] / 2**30:.3f} GiB, "
        f"traced peak {result['peak_bytes'] / 2**30:.3f} GiB in {result['blocks']} blocks"
    )
    for g in result["groups"]:
        print(f"  {g['bytes'] / 2**20:10.1f} MiB  {g['count']:5d}  {g['where']}")
    print(f"  {result['other_bytes'] / 2**20:10.1f} MiB         (the rest)")
    print(f"  allocator snapshot: {recorder.path} (open it in pytorch.org/memory_viz)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
