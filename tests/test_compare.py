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


def timed(tokens_per_second: float, step_times: list[float], peak: int = 100) -> dict:
    return {
        "status": "ok",
        "measured": {
            "peak_nvml_process_bytes": peak,
            "tokens_per_second": tokens_per_second,
            "step_times_seconds": step_times,
        },
    }


def steady(seconds: float, n: int = 10, jitter: float = 0.002) -> list[float]:
    """``n`` step times around ``seconds``, alternating +-``jitter`` (relative)."""
    return [seconds * (1 + jitter * (-1) ** i) for i in range(n)]


def test_marks_of_pairs():
    ok = timed(100, steady(1.0))
    slow = timed(90, steady(1 / 0.9))
    t = cmp.Thresholds()
    assert cmp._mark(ok, slow, t) == "worse"
    assert cmp._mark(slow, ok, t) == "better"
    assert cmp._mark({"status": "oom"}, ok, t) == "fixed"
    assert cmp._mark({"status": "oom"}, {"status": "oom"}, t) == "same"
    assert cmp._mark({"status": "skipped"}, ok, t) == "not comparable"
    assert cmp._mark(ok, {"status": "ok", "measured": None}, t) == "not comparable"


def test_throughput_from_too_few_steps_is_not_judged():
    a, b = timed(100, [1.0, 1.0]), timed(50, [2.0, 2.0])
    mark, note = cmp._judge(a, b, cmp.Thresholds())
    assert mark == "same" and "2 measured steps < 5" in note
    assert cmp._mark(a, b, cmp.Thresholds(min_steps=2)) == "worse"
    # the peak is still judged from any number of steps
    assert cmp._mark(a, timed(50, [2.0, 2.0], peak=130), cmp.Thresholds()) == "worse"


def test_throughput_change_within_the_noise_is_not_called():
    noisy_a = timed(100, steady(1.0, jitter=0.3))
    noisy_b = timed(92, steady(1 / 0.92, jitter=0.3))
    mark, note = cmp._judge(noisy_a, noisy_b, cmp.Thresholds())
    assert mark == "same" and "noise" in note
    noise = cmp.throughput_noise(steady(1.0, jitter=0.3), steady(1 / 0.92, jitter=0.3))
    assert 0.08 < noise < 0.5  # 30 % spread over 10 steps: a 2-sigma bound of about 34 %
    # the same 8 % drop from steady steps is a regression
    assert cmp._mark(timed(100, steady(1.0)), timed(92, steady(1 / 0.92)), cmp.Thresholds()) == "worse"


def test_min_steps_flag(copies, capsys):
    a, b = copies

    def slower(rec):
        rec["measured"]["tokens_per_second"] *= 0.5

    edit_one(b, slower)
    assert main(["compare", str(a), str(b)]) == 0  # the example records have 2-3 measured steps
    assert "not judged" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--min-steps", "2"]) == 1
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--min-steps", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --min-steps: 0")


@pytest.mark.slow
def test_two_real_cpu_smoke_runs_compare_clean(tmp_path):
    """The shipped smoke matrix run twice by the real runner: nothing regressed, exit 0."""
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    for side in ("a", "b"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench",
                "run",
                str(root / "matrices" / "smoke-cpu.yaml"),
                "--device",
                "cpu",
                "--results",
                str(tmp_path / side),
            ],
            check=True,
            capture_output=True,
            cwd=root,
            timeout=900,
        )
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--all"],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    ok = [r for r in load_records([tmp_path / "a"]) if r.get("status") == "ok"]
    assert len(ok) >= 10
    assert lines[-1].endswith("no regression") and f"{len(ok)} same" in lines[-1]
    assert sum("tok/s not judged" in line for line in lines) == len(ok)


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
