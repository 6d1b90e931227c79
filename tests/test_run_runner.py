"""The runner's loop with a fake executor: resume, --force, --find-max-batch, --skip-predicted-oom."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from bench.cell import normalize
from bench.run import prediction, runner
from bench.run.executor import Job, now
from bench.store import Store

MATRIX = """name: fake
gpu: a100-80gb
defaults: {model: tiny-gpt2, seq: 16, steps: 1}
sweep: {method: [full, lora], batch: [1, 2, 4, 8, 16, 32]}
"""


class FakeExecutor:
    """Runs nothing: a cell "fits" when batch <= limit; remembers what it was asked to run."""

    def __init__(self, limit: int = 8) -> None:
        self.limit = limit
        self.ran: list[Job] = []

    def run(self, jobs: list[Job], on_done: Callable[[Job, dict[str, Any]], None]) -> None:
        for job in jobs:
            self.ran.append(job)
            ok = job.cell["batch"] <= self.limit
            on_done(
                job,
                {
                    "status": "ok" if ok else "oom",
                    "error": None if ok else "OutOfMemoryError",
                    "measured": {"peak_host_rss_bytes": 1000 * job.cell["batch"]},
                    "environment": {},
                    "started_at": now(),
                    "finished_at": now(),
                },
            )


@pytest.fixture
def no_predictor(monkeypatch):
    monkeypatch.setattr(prediction, "predict", lambda cells: ({c.cell_id: None for c in cells}, "disabled in tests"))


def make(path, tmp_path, executor, **kw) -> runner.Runner:
    opts = runner.RunOptions(matrix=str(path), device="cpu", results=str(tmp_path / "results"), **kw)
    return runner.Runner(opts, executor=executor, out=io.StringIO(), err=io.StringIO())


def test_every_cell_once_then_resume_runs_nothing(write_matrix, tmp_path, no_predictor):
    path = write_matrix(MATRIX)
    fake = FakeExecutor()
    r = make(path, tmp_path, fake)
    assert r.run() == 0
    assert len(fake.ran) == 12
    store = Store(tmp_path / "results")
    statuses = store.statuses("a100-80gb", "fake")
    assert sorted(statuses.values()).count("oom") == 4
    assert json.loads((tmp_path / "results" / "a100-80gb" / "machine.json").read_text())["device"] == "cpu"
    again = FakeExecutor()
    assert make(path, tmp_path, again).run() == 0
    assert again.ran == []
    forced = FakeExecutor()
    make(path, tmp_path, forced, force=True).run()
    assert len(forced.ran) == 12


def test_find_max_batch_bisects_each_group(write_matrix, tmp_path, no_predictor):
    fake = FakeExecutor(limit=8)
    r = make(write_matrix(MATRIX), tmp_path, fake, find_max_batch=True)
    r.run()
    per_method: dict[str, list[int]] = {}
    for job in fake.ran:
        per_method.setdefault(job.cell["tuning"], []).append(job.cell["batch"])
    assert set(per_method) == {"full", "lora"}
    for batches in per_method.values():
        assert len(batches) <= 4 and 8 in batches and 16 in batches
    out = r.out.getvalue()
    assert out.count("max batch") == 2 and "tiny-gpt2-train-full-fp32-b?-s16: 8 (ran" in out
    # a re-run answers from the store
    again = FakeExecutor(limit=8)
    make(write_matrix(MATRIX), tmp_path, again, find_max_batch=True).run()
    assert again.ran == []


def test_find_max_batch_starts_from_the_prediction(write_matrix, tmp_path, monkeypatch):
    def predict(cells):
        return {c.cell_id: {"peak_bytes": 1, "fits": c.batch <= 16} for c in cells}, None

    monkeypatch.setattr(prediction, "predict", predict)
    fake = FakeExecutor(limit=16)
    make(write_matrix(MATRIX.replace("[full, lora]", "[full]")), tmp_path, fake, find_max_batch=True).run()
    assert [j.cell["batch"] for j in fake.ran] == [16, 32]


def test_open_ended_search_with_one_listed_batch(write_matrix, tmp_path, no_predictor):
    text = MATRIX.replace("[full, lora]", "[full]").replace("[1, 2, 4, 8, 16, 32]", "[4]")
    fake = FakeExecutor(limit=13)
    r = make(write_matrix(text), tmp_path, fake, find_max_batch=True)
    r.run()
    assert "b?-s16: 13 (ran" in r.out.getvalue()
    assert len(fake.ran) <= 8


def test_skip_predicted_oom_records_skipped(write_matrix, tmp_path, monkeypatch):
    def predict(cells):
        return {
            c.cell_id: {
                "peak_bytes": c.batch * 2**30,
                "capacity_bytes": 4 * 2**30,
                "gpu": "a100-80gb",
                "fits": c.batch <= 4,
            }
            for c in cells
        }, None

    monkeypatch.setattr(prediction, "predict", predict)
    fake = FakeExecutor(limit=100)
    r = make(write_matrix(MATRIX), tmp_path, fake, skip_predicted_oom=True)
    assert r.run() == 0
    assert len(fake.ran) == 6
    recs = Store(tmp_path / "results").iter_records()
    skipped = [x for x in recs if x["status"] == "skipped"]
    assert len(skipped) == 6 and all(x["cell"]["batch"] > 4 for x in skipped)
    assert "GiB predicted > 4.00 GiB" in skipped[0]["error"]
    ran = Store(tmp_path / "results").read(
        "a100-80gb",
        "fake",
        normalize({"model": "tiny-gpt2", "gpu": "a100-80gb", "seq": 16, "steps": 1, "batch": 2}).cell_id,
    )
    assert ran["prediction_error"] == pytest.approx((2 * 2**30 - 2000) / 2000)
    # --retry-failed reruns skipped cells; with the flag off they stay skipped
    again = FakeExecutor(limit=100)
    make(write_matrix(MATRIX), tmp_path, again, retry_failed=True).run()
    assert len(again.ran) == 6


def test_a_crashing_predictor_costs_predictions_not_measurements(write_matrix, tmp_path, monkeypatch):
    def predict(cells):
        raise ValueError("predictor bug")

    monkeypatch.setattr(prediction, "predict", predict)
    fake = FakeExecutor()
    r = make(write_matrix(MATRIX), tmp_path, fake)
    assert r.run() == 0 and len(fake.ran) == 12
    assert "the predictor failed: ValueError: predictor bug" in r.err.getvalue()
    assert all(x["predicted"] is None for x in Store(tmp_path / "results").iter_records())
