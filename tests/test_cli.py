"""``bench validate``: a count on success, every problem and exit 2 on a broken matrix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import matrix
from bench.cli import main

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "matrices").glob("*.yaml"))


def test_matrices_are_shipped():
    assert {p.name for p in SHIPPED} >= {"v100.yaml", "a100-80gb.yaml", "rtx4090.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_matrix_validates(path, capsys):
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"valid, {len(matrix.load(path).cells)} cells" in out


def test_v100_stays_a_plannable_size_without_bf16():
    m = matrix.load(ROOT / "matrices" / "v100.yaml")
    assert m.gpu == "v100-16gb"
    assert 150 <= len(m.cells) <= 250
    assert {c.precision for c in m.cells} == {"fp16", "fp32"}
    assert {c.method for c in m.cells} == {"full", "lora", "zero2-offload", "zero3-offload"}
    assert {c.model for c in m.cells} == {
        "gpt2",
        "gpt2-medium",
        "gpt2-large",
        "gpt2-xl",
        "gpt-neo-1.3b",
        "gpt-neo-2.7b",
        "opt-1.3b",
        "llama-3.2-1b",
        "qwen2.5-1.5b",
    }
    assert {c.batch for c in m.cells} == {1, 2, 4, 8, 12, 16}
    assert {c.seq for c in m.cells} == {512, 1024}


def test_validate_prints_the_count_and_results_folder(capsys):
    assert main(["validate", str(ROOT / "matrices" / "v100.yaml"), "batch=[1,2]", "gpu=a100-80gb"]) == 0
    out = capsys.readouterr().out.strip()
    n = len(matrix.load(ROOT / "matrices" / "v100.yaml", ["batch=[1,2]", "gpu=a100-80gb"]).cells)
    assert out.endswith(f"valid, {n} cells for a100-80gb (results/a100-80gb/v100/)")


BROKEN_LINES = [
    "exclude[0]: unknown key 'modle' (did you mean model?); allowed: method, model, gpu,",
    "18 cells (cell 1-16, include[0], include[1]): unknown key 'batchsize' (did you mean batch?); allowed: method,",
    "8 cells (cell 2, 4, 6, 8, 10, 12, 14, 16): batch: 0 is not allowed; allowed: an integer >= 1",
    "4 cells (cell 3-4, 7-8): precision: 'bf16' is not supported on v100-16gb (no bf16); allowed: fp32, fp16",
    "8 cells (cell 5-8, 13-16): method: 'zero2-ofload' is not allowed (did you mean zero2-offload",
    "8 cells (cell 9-16): model: 'gpt5-xl' is not in the catalog; closest: gpt2-xl,",
    "include[0] (long-gpt2): seq: 2048 exceeds gpt2's 1024 positions; allowed: <= 1024",
    "include[1] (wrong-stage): ds_config matrices/configs/ds_gpt2xl.json: zero_optimization.stage 2 contradicts the cell's strategy 'zero3'; allowed: 3",
    "include[1] (wrong-stage): ds_config matrices/configs/ds_gpt2xl.json: offload 'optimizer' (optimizer=True, param=False) contradicts the cell's offload 'all'",
]


def test_a_broken_matrix_lists_every_problem_and_exits_2():
    done = subprocess.run(
        [sys.executable, "-m", "bench", "validate", "tests/data/broken.yaml"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert all(line.startswith("error: ") for line in lines)
    assert len(lines) == len(BROKEN_LINES)
    for expected in BROKEN_LINES:
        assert sum(line.startswith(f"error: {expected}") for line in lines) == 1, expected


@pytest.mark.parametrize(
    "args, message",
    [
        (["tests/data/missing.yaml"], "error: matrix: 'tests/data/missing.yaml' cannot be read"),
        (["matrices/v100.yaml", "batch"], "error: override 'batch' is not key=value"),
        (["matrices/v100.yaml", "gpu=v200"], "error: gpu: 'v200' is not in the catalog (did you mean"),
        (
            ["matrices/a100-80gb.yaml", "gpu=t4"],
            "error: 192 cells (cell 1-192): precision: 'bf16' is not supported on t4",
        ),
    ],
)
def test_user_mistakes_exit_2_with_one_line_each(args, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["validate", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert "Traceback" not in err
