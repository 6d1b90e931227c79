"""Which torch build a GPU host gets, and the refusal when the installed one lacks a card's kernels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import torchbuild
from bench.errors import UserError
from bench.run import archcheck as parent_check, machine
from bench.worker import archcheck

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "sm, ptx, cap, ok",
    [
        (["8.0", "8.6"], [], "8.9", True),  # sm_86 binaries run on Ada (same major, higher minor)
        (["8.6"], [], "8.0", False),  # not on a lower minor
        (["9.0"], [], "10.0", False),  # not across majors: "10.0" > "9.0" as numbers
        (["7.5", "9.0"], ["12.0"], "12.1", True),  # PTX compiles for newer cards
        (["7.5", "8.0", "8.6", "9.0", "10.0", "12.0"], [], "7.0", False),  # CUDA 12.8 builds of torch 2.11: no Volta
    ],
)
def test_has_kernels(sm, ptx, cap, ok):
    assert torchbuild.has_kernels(sm, ptx, cap) is ok


@pytest.mark.parametrize(
    "caps, driver, cuda",
    [
        (["7.0"], "13.0", "12.6"),  # V100: only the 12.6 build has sm_70
        (["7.0", "7.0", "7.0", "7.0"], "12.2", "12.6"),
        (["9.0"], "13.0", "13.0"),
        (["9.0"], "12.4", "12.8"),  # a CUDA 12 driver runs any CUDA 12 build
        (["12.0"], "12.8", "12.8"),  # RTX 5090: Blackwell needs 12.8 or newer
        (["7.5", "8.9"], None, "13.0"),
    ],
)
def test_choose(caps, driver, cuda):
    assert torchbuild.choose(caps, driver).cuda == cuda


def test_no_build_for_mixed_volta_and_blackwell_says_why():
    with pytest.raises(ValueError, match=r"7\.0: CUDA 12\.6; 12\.0: CUDA 13\.0, CUDA 12\.8"):
        torchbuild.choose(["7.0", "12.0"], "13.0")
    with pytest.raises(ValueError, match="update the driver"):
        torchbuild.choose(["8.0"], "11.8")


def test_arch_list_parsing():
    sm, ptx = torchbuild.arch_list_kernels(["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"])
    assert sm == ["7.5", "8.0", "8.6", "9.0", "10.0", "12.0"] and ptx == ["12.0"]


def _fake_nvidia_smi(folder: Path, caps: list[str], cuda: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    lines = "\\n".join(caps)
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        f'  --query-gpu=compute_cap) printf "{lines}\\n" ;;\n'
        '  -L) echo "GPU 0: Fake GPU (UUID: GPU-0)" ;;\n'
        f'  *) echo "| NVIDIA-SMI 580.00   Driver Version: 580.00   CUDA Version: {cuda} |" ;;\n'
        "esac\n"
    )
    smi.chmod(0o755)


def _script(tmp_path: Path, caps: list[str], cuda: str) -> subprocess.CompletedProcess:
    _fake_nvidia_smi(tmp_path / "bin", caps, cuda)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "torch_build.py")], capture_output=True, text=True, env=env
    )


def test_script_reads_a_fake_nvidia_smi(tmp_path):
    out = _script(tmp_path, ["7.0", "7.0"], "13.0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["--index-url", "https://download.pytorch.org/whl/cu126", "torch"]
    out = _script(tmp_path, ["7.0", "12.0"], "13.0")
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: torch build: no torch build")


def test_make_install_on_a_gpu_host_installs_the_chosen_build(tmp_path):
    """The Makefile's own recipe, run with a fake nvidia-smi and a venv whose python logs pip calls."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "pip.log"
    shim = venv / "bin" / "python"
    shim.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then shift 2; echo "$@" >> {log}; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    shim.chmod(0o755)
    _fake_nvidia_smi(tmp_path / "bin", ["7.0"], "12.4")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    out = subprocess.run(
        ["make", "-B", f"VENV={venv}", "install"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert "install --quiet --index-url https://download.pytorch.org/whl/cu126 torch" in calls
    assert calls[-1] == "install --quiet -e .[test,ray]"
    assert not any("torch==" in c for c in calls)  # not the CPU build


class _Cuda:
    def __init__(self, caps, arch_list):
        self.caps, self.arch_list = caps, arch_list

    def get_arch_list(self):
        return self.arch_list

    def device_count(self):
        return len(self.caps)

    def get_device_capability(self, i):
        return self.caps[i]

    def get_device_name(self, i):
        return f"card{i}"


CU128 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


def test_worker_report_and_parent_refusal():
    ok = archcheck.report(_Cuda([(9, 0), (8, 9)], CU128))
    assert [c["ok"] for c in ok] == [True, True]
    assert parent_check.problem({"torch": "2.11.0", "cuda": "12.8", "cards": ok}) is None
    volta = archcheck.report(_Cuda([(7, 0)], CU128))
    line = parent_check.problem({"torch": "2.11.0", "cuda": "12.8", "cards": volta})
    assert "GPU 0 card0 (compute capability 7.0" in line and "whl/cu126" in line and "\n" not in line


@pytest.mark.skipif(bool(machine.gpus()), reason="this host has a GPU")
def test_parent_check_on_a_host_without_cuda_is_one_line():
    """The real child on this CPU-only host: torch sees no CUDA device."""
    with pytest.raises(UserError, match="sees no CUDA device"):
        parent_check.check()
