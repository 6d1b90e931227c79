"""Broken records: ``report`` and ``compare`` leave them out with one warning, or refuse in one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from badinput import cli, refused

from bench import recordshape

ROOT = Path(__file__).resolve().parent.parent
GOOD = json.loads((ROOT / "tests" / "golden" / "records" / "gpt2-train-full-bf16-b4-s1024.json").read_text())


def _write(folder: Path, name: str, record) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"cell": None}, "cell: None is not allowed"),
        ({"cell": "gpt2"}, "cell: 'gpt2' is not allowed"),
        ({"measured": [1, 2]}, "measured: [1, 2] is not allowed"),
        ({"measured": {**GOOD["measured"], "tokens_per_second": "fast"}}, "measured.tokens_per_second: 'fast'"),
        ({"measured": {**GOOD["measured"], "peak_nvml_process_bytes": [1]}}, "measured.peak_nvml_process_bytes"),
        ({"status": "exploded"}, "status: 'exploded' is not allowed; allowed: ok, oom"),
        ({"cell": {**GOOD["cell"], "seq": "long"}}, "cell.seq: 'long' is not allowed"),
        ({"cell": {**GOOD["cell"], "gpus": None}}, "cell.gpus: None is not allowed"),
        ({"predicted": {**GOOD["predicted"], "peak_bytes": "big"}}, "predicted.peak_bytes"),
        ({"environment": {"nvml_sample_interval_seconds": "often"}}, "environment.nvml_sample_interval_seconds"),
        ({"environment": {"gpu_name": ["a"]}}, "environment.gpu_name"),
        ({"prediction_error": "small"}, "prediction_error: 'small'"),
    ],
)
def test_report_and_compare_leave_out_a_broken_record(tmp_path, change, needle):
    folder = tmp_path / "r"
    _write(folder, "good.json", GOOD)
    bad = _write(folder, "bad.json", {**GOOD, "cell_id": "0123456789", **change})
    html = ["report", str(folder), "--format", "html", "-o", str(tmp_path / "r.html")]
    for argv in (
        ["report", str(folder)],
        ["report", str(folder), "--format", "csv"],
        *([html] if "measured" in change else []),
        ["compare", str(folder), str(folder)],
    ):
        code, out, err = cli(argv)
        assert code == 0, (argv, err)
        warnings = err.strip().splitlines()
        assert warnings[0] == f"warning: {bad}: left out: " + warnings[0].split(": left out: ", 1)[1]
        assert needle in warnings[0] and "Traceback" not in err, err
    assert recordshape.problems(GOOD) == []


def test_only_broken_records_is_an_error(tmp_path):
    folder = tmp_path / "r"
    _write(folder, "bad.json", {**GOOD, "status": "exploded"})
    refused(["report", str(folder)], "no result records", lines=1)


@pytest.mark.parametrize(
    "content, needle",
    [
        ({**GOOD, "cell_id": ["a"]}, "cell_id ['a'] is not text"),
        ({k: v for k, v in GOOD.items() if k != "cell_id"}, "no cell_id"),
        ('{"cell_id":' * 100_000 + "1" + "}" * 100_000, "nested too deep"),
        ("[" * 50 + "]" * 50, "nested more than"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_records_that_are_no_records_are_refused(tmp_path, content, needle):
    folder = tmp_path / "r"
    folder.mkdir()
    path = folder / "x.json"
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(
        content if isinstance(content, str) else json.dumps(content)
    )
    for argv in (["report", str(folder)], ["compare", str(folder), str(folder)]):
        refused(argv, needle)


def test_an_unreadable_subfolder_is_an_error_not_a_gap(tmp_path, monkeypatch):
    folder = tmp_path / "r"
    _write(folder, "good.json", GOOD)
    (folder / "locked").mkdir()
    real = os.scandir

    def scandir(path="."):
        if Path(path) == folder / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    refused(["report", str(folder)], "locked' cannot be read (Permission denied)")


def test_compare_on_the_cpu_uses_the_host_peak(tmp_path):
    cpu = {
        **GOOD,
        "environment": {**GOOD["environment"], "device": "cpu"},
        "measured": {**GOOD["measured"], "peak_nvml_process_bytes": None, "peak_host_rss_bytes": 2**30},
    }
    _write(tmp_path / "a", "c.json", cpu)
    _write(tmp_path / "b", "c.json", {**cpu, "measured": {**cpu["measured"], "peak_host_rss_bytes": 3 * 2**30}})
    code, out, err = cli(["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert code == 1 and "worse" in out and "+200.0%" in out, out + err


def test_golden_and_example_records_are_sound():
    for folder in (ROOT / "tests" / "golden" / "records", ROOT / "results"):
        for f in folder.rglob("*.json"):
            if f.name != "machine.json":
                assert recordshape.problems(json.loads(f.read_text())) == [], f


def test_a_symlink_loop_is_read_once(tmp_path):
    folder = tmp_path / "r"
    _write(folder, "good.json", GOOD)
    os.symlink(folder, folder / "loop")
    code, out, err = cli(["compare", str(folder), str(folder)])
    assert code == 0, err
    shutil.rmtree(folder)


def test_per_rank_breakdowns_are_read_and_bad_ones_named():
    """A multi-rank record keeps one resident breakdown per rank (the Trainer's ZeRO-3 cells write them)."""
    rank = {"weights": 1212352, "gradients": 404096, "optimizer_states": 1212296}
    good = {**GOOD, "measured": {**GOOD["measured"], "resident_bytes_per_rank": [rank, rank]}}
    assert recordshape.problems(good) == []
    bad = {**GOOD, "measured": {**GOOD["measured"], "resident_bytes_per_rank": [rank, {"weights": "x"}]}}
    assert [p for p in recordshape.problems(bad) if "allowed: a list of objects of numbers" in p]
