"""Output files and results folders that cannot be written: refused before any work, in one line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from badinput import cli, refused

from bench import destination

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "tests" / "golden" / "records"
MATRIX = "name: t\ngpu: t4\ndefaults: {model: tiny-gpt2, seq: 32, steps: 1, warmup: 0}\nsweep: {batch: [1]}\n"


@pytest.fixture(scope="module")
def read_only(tmp_path_factory):
    """A read-only filesystem (a tmpfs mounted ``ro``), where this machine lets the tests mount one."""
    where = tmp_path_factory.mktemp("ro")
    (where / "mnt").mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where / "mnt")], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a read-only tmpfs here")
    yield where / "mnt"
    subprocess.run(["umount", str(where / "mnt")], capture_output=True)


@pytest.fixture
def full_fs(tmp_path):
    """A 256 KiB tmpfs (less free space than a run needs)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def _outputs(tmp_path: Path) -> list[tuple[str, str]]:
    (tmp_path / "a-file").write_text("x")
    return [(str(tmp_path), "is a folder"), (str(tmp_path / "a-file" / "plan.md"), "is a file, not a folder")]


def test_plan_checks_its_output_before_printing(tmp_path, repo):
    for output, needle in _outputs(tmp_path):
        code, out, err = cli(["plan", str(repo / "matrices" / "smoke-cpu.yaml"), "-o", output])
        assert code == 2 and out == "" and needle in err and "Traceback" not in err, err


def test_report_checks_its_output(tmp_path):
    for output, needle in _outputs(tmp_path):
        refused(["report", str(RECORDS), "-o", output, "--format", "md"], needle)


def test_an_unwritable_output_file(tmp_path, monkeypatch, repo):
    target = tmp_path / "plan.md"
    target.write_text("old")
    real = os.access
    monkeypatch.setattr(destination.os, "access", lambda p, mode: False if Path(p) == target else real(p, mode))
    code, out, err = cli(["plan", str(repo / "matrices" / "smoke-cpu.yaml"), "-o", str(target)])
    assert code == 2 and out == "" and "cannot be written" in err, err
    assert target.read_text() == "old"


def test_a_read_only_filesystem(read_only, repo, tmp_path):
    code, out, err = cli(["plan", str(repo / "matrices" / "smoke-cpu.yaml"), "-o", str(read_only / "p.md")])
    assert code == 2 and out == "" and "read-only" in err, err
    m = tmp_path / "m.yaml"
    m.write_text(MATRIX)
    refused(["run", str(m), "--device", "cpu", "--results", str(read_only / "results")], "is not writable")


def test_results_that_is_a_file_or_under_one(tmp_path):
    m = tmp_path / "m.yaml"
    m.write_text(MATRIX)
    (tmp_path / "r").write_text("x")
    refused(["run", str(m), "--device", "cpu", "--results", str(tmp_path / "r")], "is a file; allowed: a folder")
    refused(["run", str(m), "--device", "cpu", "--results", str(tmp_path / "r" / "sub")], "is a file, not a folder")
    assert (tmp_path / "r").read_text() == "x"


def test_results_on_a_full_filesystem(full_fs, tmp_path):
    (full_fs / "filler").write_bytes(b"\0" * (200 * 1024))
    m = tmp_path / "m.yaml"
    m.write_text(MATRIX)
    refused(
        ["run", str(m), "--device", "cpu", "--results", str(full_fs / "results")],
        "bytes free",
        "allowed: at least 1,048,576 bytes free",
    )
    assert not (full_fs / "results").exists()


def test_an_unwritable_results_folder(tmp_path, monkeypatch):
    m = tmp_path / "m.yaml"
    m.write_text(MATRIX)
    results = tmp_path / "results"
    results.mkdir()
    real = os.access
    monkeypatch.setattr(destination.os, "access", lambda p, mode: False if Path(p) == results else real(p, mode))
    refused(["run", str(m), "--device", "cpu", "--results", str(results)], "is not writable")
    assert list(results.iterdir()) == []


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "soon"])
def test_run_timeout_must_be_a_finite_positive_number(tmp_path, value):
    m = tmp_path / "m.yaml"
    m.write_text(MATRIX)
    code, _, err = cli(["run", str(m), "--device", "cpu", "--timeout", value, "--results", str(tmp_path / "r")])
    assert code == 2 and "--timeout" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
