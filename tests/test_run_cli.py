"""``bench run`` on bad input: one line per problem, exit code 2, the store untouched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.run import machine

ROOT = Path(__file__).resolve().parent.parent
TINY = "name: t\ngpu: a100-80gb\ndefaults: {model: tiny-gpt2, batch: 1, seq: 16, steps: 1}\nsweep: {method: [full]}\n"
NO_GPU_LINE = (
    "error: no CUDA GPU found; use --device cpu to run on the CPU, or `bench plan MATRIX` to predict without a GPU"
)
needs_no_gpu = pytest.mark.skipif(bool(machine.gpus()), reason="this host has a GPU")


def test_unknown_matrix_key_is_one_line_and_exit_2(write_matrix, tmp_path):
    path = write_matrix(TINY + "sweeep: {batch: [1]}\n")
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(path), "--device", "cpu", "--results", str(results)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown key 'sweeep'")
    assert "Traceback" not in proc.stderr
    assert not results.exists()


def test_unknown_cell_field_in_an_override(write_matrix, tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["run", str(write_matrix(TINY)), "bacth=4", "--device", "cpu", "--results", str(results)])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: override bacth: unknown key")
    assert not results.exists()


@needs_no_gpu
@pytest.mark.parametrize("flags", [[], ["--device", "cuda"]], ids=["default", "cuda"])
def test_no_gpu_without_device_cpu(write_matrix, tmp_path, flags):
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(write_matrix(TINY)), "--results", str(results), *flags],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == NO_GPU_LINE
    assert not results.exists()


def test_bad_timeout_is_rejected_by_the_parser(write_matrix, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", str(write_matrix(TINY)), "--timeout", "0"])
    assert e.value.code == 2
    assert "must be > 0 seconds" in capsys.readouterr().err


def test_missing_matrix_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml"), "--device", "cpu", "--results", str(tmp_path / "r")]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["m.yaml", "batch=4", "seq=[1,2]", "--device", "cpu"],
        ["m.yaml", "--device", "cpu", "batch=4", "seq=[1,2]"],
        ["m.yaml", "batch=4", "--device", "cpu", "seq=[1,2]"],
    ],
    ids=["before", "after", "around"],
)
def test_overrides_go_before_or_after_the_options(argv):
    from bench.cli import build_parser

    args = build_parser().parse_args(["run", *argv])
    assert args.matrix == "m.yaml" and args.device == "cpu"
    assert args.overrides == ["batch=4", "seq=[1,2]"]
    assert args.emulate_target is True and args.timeout == 1800.0 and args.results == "results"
