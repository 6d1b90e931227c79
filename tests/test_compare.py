"""``bench compare``: marks, thresholds, exit codes and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import UserError
from bench.report import compare as cmp
from bench.store import load_records

EXAMPLE = Path(__file__).parents[1] / "results" / "h200-example"


@pytest.fixture
def copies(tmp_path):
    """Two identical copies (A, B) of the example results."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(EXAMPLE, a)
    shutil.copytree(EXAMPLE, b)
    return a, b


def edit_one(folder: Path, change) -> str:
    """Apply ``change(record)`` to the first record under ``folder``; return its cell id."""
    path = sorted(p for p in folder.rglob("*.json") if p.name != "machine.json")[0]
    rec = json.loads(path.read_text())
    change(rec)
    path.write_text(json.dumps(rec))
    return rec["cell_id"]


def raise_peak(factor: float):
    def change(rec):
        m = rec["measured"]
        m["peak_nvml_process_bytes"] = int(m["peak_nvml_process_bytes"] * factor)

    return change


def test_identical_results_exit_0(copies, capsys):
    a, b = copies
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].endswith("no regression")
    assert len(out.strip().splitlines()) == 1  # unchanged cells are not listed without --all


def test_peak_raised_20_percent_exits_1(copies, capsys):
    a, b = copies
    cid = edit_one(b, raise_peak(1.2))
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    first = out.splitlines()[1]
    assert first.startswith("worse") and "+20.0%" in first
    assert "1 worse" in out and out.rstrip().endswith("REGRESSED")
    changes = cmp.compare(load_records([a]), load_records([b]))
    assert [c.cell_id for c in changes if c.mark == "worse"] == [cid]


def test_threshold_above_the_change_passes(copies, capsys):
    a, b = copies
    edit_one(b, raise_peak(1.2))
    assert main(["compare", str(a), str(b), "--threshold", "peak=25%"]) == 0


def test_peak_lowered_is_better_and_exits_0(copies, capsys):
    a, b = copies
    edit_one(b, raise_peak(0.8))
    assert main(["compare", str(a), str(b), "--all"]) == 0
    out = capsys.readouterr().out
    assert "1 better" in out and len(out.strip().splitlines()) == 2 + 28  # header, rows, summary


def test_new_failure_and_only_in_one(copies, capsys):
    a, b = copies

    def oom(rec):
        rec["status"], rec["measured"] = "oom", None

    edit_one(b, oom)
    victim = sorted(p for p in a.rglob("*.json") if p.name != "machine.json")[-1]
    victim.unlink()
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "1 new failure" in out and "1 only in B" in out
    assert out.splitlines()[1].startswith("new failure")


def test_marks_of_pairs():
    ok = {"status": "ok", "measured": {"peak_nvml_process_bytes": 100, "tokens_per_second": 100}}
    slow = {"status": "ok", "measured": {"peak_nvml_process_bytes": 100, "tokens_per_second": 90}}
    t = cmp.Thresholds()
    assert cmp._mark(ok, slow, t) == "worse"
    assert cmp._mark(slow, ok, t) == "better"
    assert cmp._mark({"status": "oom"}, ok, t) == "fixed"
    assert cmp._mark({"status": "oom"}, {"status": "oom"}, t) == "same"
    assert cmp._mark({"status": "skipped"}, ok, t) == "not comparable"
    assert cmp._mark(ok, {"status": "ok", "measured": None}, t) == "not comparable"


def test_parse_thresholds():
    assert cmp.parse_thresholds("peak=10%, throughput=2.5%") == cmp.Thresholds(peak=0.10, throughput=0.025)
    assert cmp.parse_thresholds("throughput=0%") == cmp.Thresholds(peak=0.05, throughput=0.0)
    assert cmp.parse_thresholds(None) == cmp.Thresholds()


@pytest.mark.parametrize(
    "spec, words",
    [
        ("peak=5", ["peak", "'5'", "peak=5%,throughput=5%"]),
        ("peak=-3%", ["peak", "'-3%'", "percentage"]),
        ("memory=5%", ["'memory'", "unknown key", "peak, throughput"]),
        ("peak5%", ["'peak5%'", "key=value"]),
        ("throughput=fast", ["throughput", "'fast'"]),
    ],
)
def test_bad_threshold_is_one_line_error(spec, words, copies, capsys):
    with pytest.raises(UserError) as e:
        cmp.parse_thresholds(spec)
    assert len(e.value.problems) == 1 and all(w in e.value.problems[0] for w in words)
    a, b = copies
    assert main(["compare", str(a), str(b), "--threshold", spec]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --threshold")


def test_duplicate_cell_in_one_side_is_a_user_error(copies, tmp_path):
    a, b = copies
    shutil.copytree(a, tmp_path / "twice" / "one")
    shutil.copytree(a, tmp_path / "twice" / "two")
    assert main(["compare", str(tmp_path / "twice"), str(b)]) == 2


def test_missing_or_empty_side(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), str(EXAMPLE)]) == 2
    assert "no result records" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nope"), str(EXAMPLE)]) == 2


@pytest.mark.parametrize("verb", ["compare", "report"])
def test_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out
