"""The predicted allocation timeline as a CUDA memory snapshot (``bench predict --timeline FILE``).

``torch.cuda.memory._dump_snapshot`` pickles a dict that pytorch.org/memory_viz
and ``torch.cuda._memory_viz`` open: ``segments`` (the caching allocator's
state when the snapshot was taken: each ``cudaMalloc``'d segment and its
blocks) and ``device_traces`` (what the allocator did, in order: ``alloc``,
``free_requested``, ``free_completed``, ``segment_alloc``, ``segment_free``).
``snapshot(log)`` writes the same dict from the allocator model's log of one
predicted run (``bench.predict.allocator.recording``), so a predicted and a
measured timeline (``python -m bench.worker.peak``, ``bench run
--memory-snapshot``) can be opened side by side in PyTorch's own viewer.

What differs from a real snapshot, by construction:

- ``frames`` are one frame naming the prediction's part the block belongs to
  (``predicted:0:activations``), not a Python stack: the trace runs on meta
  tensors and keeps tags, not stacks.
- ``time_us`` is the event's position in the run (the predictor has no clock).
- addresses are laid out from ``BASE_ADDRESS`` segment after segment (the
  model's own addresses are spaced far apart so that no two segments touch).
- a free is ``free_requested`` then ``free_completed`` at once (the model has
  no cross-stream frees in flight), and ``size`` is the block's size (the
  request rounded as the allocator rounds it), so allocated bytes in the trace
  add up to what ``torch.cuda.memory_allocated`` would say.

``segments`` is the state at the end of the run; summed, it equals the
predicted reserved peak unless the run released cached segments
(``segment_free`` events: ZeRO's ``empty_cache``, a retry near the card's limit).
"""

from __future__ import annotations

import bisect
from typing import Any

from bench.predict import allocator
from bench.predict.allocator import SMALL_BUFFER, LogEntry

BASE_ADDRESS = 0x7F00_0000_0000
"""Where the first segment starts (a typical CUDA device address; stays below 2**53 for the viewer)."""
ALIGN = 2 << 20


def _frames(tag: str | None) -> list[dict[str, Any]]:
    return [{"filename": "predicted", "line": 0, "name": tag or "untagged"}]


def snapshot(log: list[LogEntry]) -> dict[str, Any]:
    """The snapshot dict of one allocator's log (see the module docstring)."""
    starts: list[int] = []  # the model's addresses of the live segments, sorted
    segs: dict[int, tuple[int, int, int]] = {}  # model address -> (address, size, stream)
    live: dict[int, tuple[int, int, str | None]] = {}  # address -> (size, requested, tag)
    trace: list[dict[str, Any]] = []
    next_addr = BASE_ADDRESS
    for t, (action, addr, size, stream, requested, tag) in enumerate(log):
        if action == "segment_alloc":
            bisect.insort(starts, addr)
            segs[addr] = (next_addr, size, stream)
            new, next_addr = next_addr, next_addr + (size + ALIGN - 1) // ALIGN * ALIGN
        elif action == "segment_free":
            new = segs.pop(addr)[0]
            starts.remove(addr)
        else:
            start = starts[bisect.bisect_right(starts, addr) - 1]
            new = segs[start][0] + addr - start
        event = {"addr": new, "size": size, "stream": stream, "time_us": t}
        if action == "alloc":
            live[new] = (size, requested, tag)
            trace.append({"action": "alloc", **event, "frames": _frames(tag)})
        elif action == "free":
            frames = _frames(live.pop(new)[2])
            trace.append({"action": "free_requested", **event, "frames": frames})
            trace.append({"action": "free_completed", **event, "frames": frames})
        else:
            trace.append({"action": action, **event, "frames": []})
    return {"segments": _segments(segs.values(), live), "device_traces": [trace]}


def _segments(segs, live: dict[int, tuple[int, int, str | None]]) -> list[dict[str, Any]]:
    """The live segments with their blocks: allocated ones, and the free gaps between them (the
    allocator merges free neighbours, so each gap is one cached block)."""
    out = []
    addrs = sorted(live)
    for address, total, stream in sorted(segs):
        lo, hi = bisect.bisect_left(addrs, address), bisect.bisect_left(addrs, address + total)
        blocks: list[dict[str, Any]] = []
        at = address
        for a in addrs[lo:hi]:
            size, requested, tag = live[a]
            if a > at:
                blocks.append(_free_block(at, a - at))
            blocks.append(
                {
                    "address": a,
                    "size": size,
                    "requested_size": requested,
                    "state": "active_allocated",
                    "frames": _frames(tag),
                }
            )
            at = a + size
        if at < address + total:
            blocks.append(_free_block(at, address + total - at))
        used = sum(b["size"] for b in blocks if b["state"] == "active_allocated")
        out.append(
            {
                "device": 0,
                "address": address,
                "total_size": total,
                "allocated_size": used,
                "active_size": used,
                "requested_size": sum(b["requested_size"] for b in blocks),
                "stream": stream,
                "segment_type": "small" if total == SMALL_BUFFER else "large",
                "segment_pool_id": (0, 0),
                "is_expandable": False,
                "frames": [],
                "blocks": blocks,
            }
        )
    return out


def _free_block(address: int, size: int) -> dict[str, Any]:
    return {"address": address, "size": size, "requested_size": 0, "state": "inactive", "frames": []}


def of_cell(cell) -> tuple[dict[str, Any], Any]:
    """``(snapshot, prediction)`` of one cell: the run ``predict(cell)`` reports, replayed
    afresh with the allocator's log on (``estimate.replay_reported``)."""
    from bench.predict import estimate

    prediction = estimate.predict(cell)
    with allocator.recording() as made:
        estimate.replay_reported(cell)
    if not made or made[-1].log is None:
        raise RuntimeError("the prediction made no allocator to log")
    return snapshot(made[-1].log), prediction
