"""Print the pip arguments that install a torch with kernels for every card of this host.

Reads ``nvidia-smi`` (each card's compute capability and the driver's CUDA
version) and decides with ``bench.torchbuild``; ``make install`` runs it on a
GPU host. Exit 2 with one line when no build fits.

    python scripts/torch_build.py        # e.g. --index-url https://download.pytorch.org/whl/cu126 torch
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import torchbuild  # noqa: E402


def _smi(*args: str) -> str:
    out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ValueError(f"nvidia-smi {' '.join(args)} failed: {(out.stderr or out.stdout).strip()[:200]}")
    return out.stdout


def main() -> int:
    try:
        caps, driver = torchbuild.parse_nvidia_smi(_smi("--query-gpu=compute_cap", "--format=csv,noheader"), _smi())
        build = torchbuild.choose(caps, driver)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        print(f"error: torch build: {e}", file=sys.stderr)
        return 2
    print(
        f"torch build: CUDA {build.cuda} for compute capabilities {', '.join(caps)} (driver CUDA {driver})",
        file=sys.stderr,
    )
    print(f"--index-url {build.index_url} torch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
