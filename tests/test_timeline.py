"""``bench predict --timeline FILE``: the predicted allocator replay as a CUDA memory snapshot.

Opened with pickle and PyTorch's own ``torch.cuda._memory_viz`` (its summaries
check that blocks add up to their segments); the allocated peak of the trace
equals the prediction's, and the segments add up to its reserved peak.
"""

from __future__ import annotations

import base64
import json
import pickle

import pytest
from torch.cuda import _memory_viz as viz

from bench import cell as cellmod
from bench.cli import main
from bench.predict import allocator, timeline
from bench.worker.peak import live_at_peak

ACTIONS = {"alloc", "free_requested", "free_completed", "segment_alloc", "segment_free"}


def _reserved_peak(trace) -> int:
    run = peak = 0
    for e in trace:
        run += {"segment_alloc": e["size"], "segment_free": -e["size"]}.get(e["action"], 0)
        peak = max(peak, run)
    return peak


def _check_viewer_accepts(snap) -> None:
    summary = viz.segsum(snap)  # raises when blocks do not add up to their segment
    assert f"segments: {len(snap['segments'])}" in summary
    assert viz.trace(snap).startswith("Device 0")
    plain = lambda lines: lines  # noqa: E731  (no flamegraph.pl download)
    assert "predicted:0:" in viz.memory(snap, format_flamegraph=plain)
    assert viz.segments(snap, format_flamegraph=plain)
    for html in (viz.trace_plot(snap), viz.segment_plot(snap)):
        payload = json.loads(html.split("const local_files = ", 1)[1].split("\n", 1)[0])[0]["base64"]
        assert pickle.loads(base64.b64decode(payload).rstrip(b"\x00")) == snap


def test_the_snapshot_of_a_small_replay_is_exact():
    with allocator.recording() as made:
        a = allocator.CachingAllocator()
        a.malloc("x", 1000, "weights")  # small pool: a 2 MiB segment, split
        a.malloc("y", 5 << 20, "activations")  # large pool: a 20 MiB segment, split
        a.malloc("z", 1 << 20, "gradients")  # small too: the rest of the first segment
        a.free("x")
        a.free("z")
        a.empty_cache()  # the small segment is wholly free again: released
    snap = timeline.snapshot(made[0].log)
    actions = [e["action"] for e in snap["device_traces"][0]]
    assert actions == [
        "segment_alloc",
        "alloc",
        "segment_alloc",
        "alloc",
        "alloc",
        *["free_requested", "free_completed"] * 2,
        "segment_free",
    ]
    (seg,) = snap["segments"]
    assert seg["total_size"] == 20 << 20 and seg["segment_type"] == "large" and seg["allocated_size"] == 5 << 20
    assert [(b["state"], b["size"]) for b in seg["blocks"]] == [("active_allocated", 5 << 20), ("inactive", 15 << 20)]
    assert seg["blocks"][0]["address"] == seg["address"] and seg["blocks"][0]["frames"][0]["name"] == "activations"
    small = snap["device_traces"][0][0]
    assert small["addr"] == timeline.BASE_ADDRESS and small["size"] == 2 << 20
    assert snap["device_traces"][0][-1]["addr"] == small["addr"]  # the same segment released
    assert live_at_peak(snap["device_traces"][0])["peak_bytes"] == 1024 + (5 << 20) + (1 << 20)
    _check_viewer_accepts(snap)


def test_predict_writes_the_timeline_of_its_prediction(tmp_path, capsys):
    out = tmp_path / "predicted.pickle"
    args = ["predict", "--model", "gpt2", "--precision", "bf16", "--batch", "2", "--seq", "128", "--gpu", "h200"]
    assert main([*args, "--json", "--timeline", str(out)]) == 0
    captured = capsys.readouterr()
    predicted = json.loads(captured.out)["predicted"]
    assert "pytorch.org/memory_viz" in captured.err
    snap = pickle.loads(out.read_bytes())
    assert set(snap) == {"segments", "device_traces"} and len(snap["device_traces"]) == 1
    trace = snap["device_traces"][0]
    assert {e["action"] for e in trace} <= ACTIONS and all("frames" in e and "stream" in e for e in trace)
    assert live_at_peak(trace)["peak_bytes"] == predicted["allocated_bytes"]
    assert sum(s["total_size"] for s in snap["segments"]) == predicted["reserved_bytes"] == _reserved_peak(trace)
    parts = {e["frames"][0]["name"] for e in trace if e["action"] == "alloc"}
    assert {"weights", "gradients", "optimizer_states", "activations"} <= parts
    _check_viewer_accepts(snap)


def test_a_run_that_releases_its_cache_peaks_in_the_trace():
    """ZeRO-3 empties the cache: the segments at the end may be fewer; the trace's peak is the prediction's."""
    c = cellmod.normalize(dict(model="gpt2", gpu="h200", precision="bf16", batch=2, seq=128, strategy="zero3", gpus=2))
    snap, p = timeline.of_cell(c)
    trace = snap["device_traces"][0]
    assert any(e["action"] == "segment_free" for e in trace)
    assert _reserved_peak(trace) == p.reserved_bytes and live_at_peak(trace)["peak_bytes"] == p.allocated_bytes
    assert sum(s["total_size"] for s in snap["segments"]) <= p.reserved_bytes
    viz.segsum(snap)


@pytest.mark.parametrize("bad", [["--gpu", "all"], ["--gpu", "h200", "--timeline", "/proc/nope/x.pickle"]])
def test_a_timeline_that_cannot_be_written_is_one_line(bad, capsys):
    args = ["predict", "--model", "gpt2", *bad]
    if "--timeline" not in bad:
        args += ["--timeline", "t.pickle"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--timeline" in err


def test_a_cell_that_does_not_fit_gets_the_timeline_of_what_it_would_take():
    """The prediction replays an unfitting run again without the card's limit; the timeline is that replay."""
    c = cellmod.normalize(dict(model="gpt2", gpu="rtx4090", precision="fp32", batch=64, seq=1024))
    snap, p = timeline.of_cell(c)
    assert not p.fits and p.allocated_bytes > p.capacity_bytes
    trace = snap["device_traces"][0]
    assert live_at_peak(trace)["peak_bytes"] == p.allocated_bytes and _reserved_peak(trace) == p.reserved_bytes
