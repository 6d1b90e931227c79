"""The runner's pure parts: bisection, outcome classification, records, progress, commands."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cell import normalize
from bench.errors import UserError
from bench.run import maxbatch, outcome, progress, record, runner
from bench.run.executor import Job, worker_command, worker_env
from bench.run.machine import GpuInfo
from bench.status import EXIT_OOM
from bench.worker import flops


def fits_up_to(limit):
    return lambda b: b <= limit


def search(s: maxbatch.BatchSearch, fits) -> list[int]:
    ran = []
    while (b := s.next()) is not None:
        ran.append(b)
        s.record(b, fits(b))
    return ran


@pytest.mark.parametrize("limit", [0, 1, 3, 8, 12, 13, 16, 40])
def test_listed_batches_bisect_to_the_largest_that_fits(limit):
    listed = [1, 2, 4, 8, 12, 16, 24, 32]
    s = maxbatch.BatchSearch(start=8, candidates=listed)
    ran = search(s, fits_up_to(limit))
    assert s.best == max([b for b in listed if b <= limit], default=None)
    assert len(ran) <= 4  # ceil(log2(8)) + 1
    assert ran[0] == 8  # starts where the predictor said


@pytest.mark.parametrize("limit,start", [(37, 8), (37, 37), (37, 100), (1, 64), (0, 5), (5000, 1)])
def test_open_search_doubles_then_bisects(limit, start):
    s = maxbatch.BatchSearch(start=start)
    ran = search(s, fits_up_to(limit))
    assert s.best == (limit or None)
    assert len(ran) <= 2 * max(limit, start, 2).bit_length() + 2
    assert len(set(ran)) == len(ran)


def test_a_good_prediction_costs_two_runs():
    s = maxbatch.BatchSearch(start=12, candidates=[1, 2, 4, 8, 12, 16])
    assert search(s, fits_up_to(12)) == [12, 16]
    assert s.summary() == "12 (ran 12 ok, 16 no)"


def test_groups_differ_only_in_batch():
    cells = [
        normalize({"model": "gpt2", "gpu": "a100-80gb", "batch": b, "method": m})
        for m in ("full", "lora")
        for b in (4, 1, 2)
    ]
    groups = maxbatch.groups(cells)
    assert [[c.batch for c in g] for g in groups.values()] == [[1, 2, 4], [1, 2, 4]]


def test_classify():
    ok = {"status": "ok", "measured": {"x": 1}, "environment": {"gpu_name": "g"}, "error": None}
    assert outcome.classify(0, "", ok)["status"] == "ok"
    oom = outcome.classify(EXIT_OOM, "tb", {**ok, "status": "oom", "error": "OutOfMemoryError: x"})
    assert oom["status"] == "oom" and oom["measured"] == {"x": 1} and "tb" in oom["error"]
    killed = outcome.classify(-signal.SIGKILL, "last words", None)
    assert killed["status"] == "oom" and "SIGKILL" in killed["error"]
    rank_oom = outcome.classify(1, "[rank1]: torch.OutOfMemoryError: CUDA out of memory.", None)
    assert rank_oom["status"] == "oom"
    err = outcome.classify(1, "Traceback ...\nValueError: bad", None)
    assert err["status"] == "error" and err["error"].endswith("ValueError: bad")
    assert outcome.classify(-signal.SIGSEGV, "", None)["error"].startswith("killed by signal 11")
    teardown = outcome.classify(-signal.SIGSEGV, "crash at exit", ok)
    assert teardown["status"] == "ok" and "then exited with -11" in teardown["error"]
    hung = outcome.timed_out(5, "tail", ok)
    assert hung["status"] == "ok" and hung["error"].startswith("timeout after 5 s")
    stuck = outcome.timed_out(5, "tail", None)
    assert stuck["status"] == "timeout" and stuck["error"].endswith("tail")


def test_tail_keeps_the_last_lines(tmp_path):
    log = tmp_path / "log"
    log.write_text("\n".join(f"line {i}" for i in range(1000)))
    text = outcome.tail(log, lines=3)
    assert text == "line 997\nline 998\nline 999"
    assert outcome.tail(tmp_path / "missing") == ""


CELL = normalize({"model": "tiny-gpt2", "gpu": "a100-80gb", "batch": 2, "seq": 32})


def job(**kw) -> Job:
    return Job(
        **{"cell": CELL.to_dict(), "cell_id": CELL.cell_id, "slug": CELL.slug, "matrix": "m", "device": "cpu", **kw}
    )


def test_prediction_error_is_signed_relative_to_the_measurement():
    measured = {"peak_host_rss_bytes": 100, "peak_nvml_process_bytes": 200}
    assert record.prediction_error("ok", {"peak_bytes": 150}, measured, "cpu") == pytest.approx(0.5)
    assert record.prediction_error("ok", {"peak_bytes": 150}, measured, "cuda") == pytest.approx(-0.25)
    assert record.prediction_error("oom", {"peak_bytes": 150}, measured, "cuda") is None
    assert record.prediction_error("ok", None, measured, "cuda") is None


def test_record_has_the_store_fields():
    result = {
        "status": "ok",
        "measured": {"peak_host_rss_bytes": 10},
        "environment": {"torch_version": "x"},
        "error": None,
        "started_at": "a",
        "finished_at": "b",
        "wall_seconds": 1.5,
    }
    rec = record.build(job(), CELL, result, {"peak_bytes": 20}, {"hostname": "h"})
    assert set(rec) == {
        "cell_id",
        "slug",
        "label",
        "matrix",
        "cell",
        "status",
        "environment",
        "measured",
        "predicted",
        "prediction_error",
        "error",
        "started_at",
        "finished_at",
    }
    assert rec["environment"] == {"hostname": "h", "torch_version": "x", "device": "cpu", "emulated_target": False}
    assert rec["prediction_error"] == 1.0 and rec["measured"]["wall_seconds"] == 1.5


def test_progress_line():
    rec = {
        "status": "ok",
        "slug": "s",
        "measured": {"peak_nvml_process_bytes": 3 * 2**30, "tokens_per_second": 1234.4, "wall_seconds": 2.0},
        "environment": {"device": "cuda"},
        "prediction_error": -0.05,
        "error": None,
    }
    assert progress.line(rec, 3, 12) == "[ 3/12]  ok        s  peak 3.00 GiB  1234 tok/s  pred -5.0%  2.0 s"
    cpu = {**rec, "environment": {"device": "cpu"}, "measured": {"peak_host_rss_bytes": 2**30}}
    assert progress.line(cpu, 3, 12) == "[ 3/12]  ok        s  peak 1.00 GiB host"  # no GPU prediction error
    bad = {**rec, "status": "error", "measured": None, "error": "Traceback\nValueError: bad\n"}
    assert progress.line(bad, 4, 12).endswith("(ValueError: bad)")


def test_worker_command_uses_torchrun_for_several_ranks(tmp_path):
    one = worker_command(job(), tmp_path / "j", tmp_path / "o", python="py")
    assert one == ["py", "-m", "bench.worker.child", str(tmp_path / "j"), str(tmp_path / "o")]
    four = worker_command(job(gpus=4), tmp_path / "j", tmp_path / "o", python="py")
    assert four[:5] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]


def test_worker_env_pins_gpus_or_hides_them():
    assert worker_env(job(device="cuda"), [2, 3], base={})["CUDA_VISIBLE_DEVICES"] == "2,3"
    cpu = worker_env(job(), None, base={"CUDA_VISIBLE_DEVICES": "0"})
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and cpu["DS_ACCELERATOR"] == "cpu"


def test_visible_gpu_ids():
    found = [GpuInfo(0, "a", "GPU-a"), GpuInfo(1, "b", "GPU-b"), GpuInfo(2, "c", "GPU-c")]
    assert runner.visible_gpu_ids(found, {}) == [0, 1, 2]
    assert runner.visible_gpu_ids(found, {"CUDA_VISIBLE_DEVICES": "2,GPU-a,7"}) == [2, 0]


def test_flops_formulas():
    full = normalize({"model": "gpt2", "gpu": "a100-80gb", "batch": 2, "seq": 100, "grad_accum": 3})
    assert flops.flops_per_step(full, 1000, 1000, False) == 6 * 1000 * 2 * 100 * 3
    lora = normalize({"model": "gpt2", "gpu": "a100-80gb", "batch": 2, "seq": 100, "method": "lora"})
    assert flops.flops_per_step(lora, 1010, 10, False) == (4 * 1000 + 6 * 10) * 200
    gen = normalize({"model": "gpt2", "gpu": "a100-80gb", "batch": 2, "seq": 100, "task": "infer", "new_tokens": 28})
    assert flops.flops_per_step(gen, 1000, 0, False) == 2 * 1000 * 2 * 128
    timing = {
        "step_times_seconds": [2.0, 1.0, 3.0],
        "parameters": 10**12,
        "trainable_parameters": 10**12,
        "tokens_per_step": 600,
        "samples_per_step": 6,
    }
    t = flops.throughput(full, timing, False, "cuda", peak=3600.0)
    assert t["step_time_median_seconds"] == 2.0 and t["tokens_per_second"] == 300
    assert t["tflops_achieved"] == pytest.approx(1800.0) and t["mfu"] == pytest.approx(0.5)
    assert flops.throughput(full, timing, False, "cpu")["mfu"] is None


def test_the_parent_side_never_imports_torch():
    code = (
        "import sys, argparse\n"
        "import bench.run.cli, bench.run.runner, bench.run.executor, bench.run.record\n"
        "import bench.run.progress, bench.run.machine, bench.run.maxbatch, bench.run.prediction\n"
        "p = argparse.ArgumentParser(); bench.run.cli.register(p.add_subparsers())\n"
        "bench.run.machine.gpus(); bench.run.machine.environment('cpu')\n"
        "bad = [m for m in ('torch', 'transformers', 'deepspeed', 'peft') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_pick_device():
    assert runner.pick_device("cpu", []) == "cpu"
    assert runner.pick_device(None, [0]) == "cuda"
    for wanted in (None, "cuda"):
        with pytest.raises(UserError, match="no CUDA GPU found; use --device cpu"):
            runner.pick_device(wanted, [])


def test_live_at_peak_replays_the_allocator_trace():
    """The replay finds the moment of most allocated bytes and groups what was alive then."""
    from bench.worker.peak import live_at_peak

    tf = {"filename": "/x/site-packages/transformers/models/gpt2/modeling_gpt2.py", "line": 10, "name": "forward"}
    op = {"filename": "/x/site-packages/torch/nn/functional.py", "line": 5, "name": "dropout"}
    ev = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": [op, tf]},
        {"action": "alloc", "addr": 2, "size": 300, "frames": [tf]},
        {"action": "free_requested", "addr": 1, "size": 100},
        {"action": "alloc", "addr": 3, "size": 50, "frames": [op, tf]},
        {"action": "free_completed", "addr": 1, "size": 100},  # freed only now: peak 450 with 1, 2, 3 alive
        {"action": "alloc", "addr": 4, "size": 20, "frames": []},
        {"action": "free_completed", "addr": 2, "size": 300},
    ]
    r = live_at_peak(ev)
    assert r["peak_bytes"] == 450 and r["blocks"] == 3
    g = {x["where"]: (x["count"], x["bytes"]) for x in r["groups"]}
    assert g == {
        "torch/nn/functional.py:5 dropout <- transformers/models/gpt2/modeling_gpt2.py:10 forward": (2, 150),
        "transformers/models/gpt2/modeling_gpt2.py:10 forward": (1, 300),
    }
    # a trace without free_completed counts a block free at free_requested
    r2 = live_at_peak([e for e in ev if e["action"] != "free_completed"])
    assert r2["peak_bytes"] == 400
