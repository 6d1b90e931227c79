"""Does the installed torch have kernels for each visible card? (``python -m bench.worker.archcheck``)

Prints one JSON list, a card per entry: its index, name, compute capability,
torch's ``get_arch_list()`` and ``ok`` (``bench.torchbuild.has_kernels``).
``bench run`` runs it once before the first cell on CUDA, so a wheel without
the card's kernels (a V100 under a CUDA 12.8+ build of torch 2.11+) is one
line before anything runs, not "no kernel image is available" in every cell.
"""

from __future__ import annotations

import json
import sys

from bench import torchbuild


def report(cuda) -> list[dict]:
    """Each visible card of ``cuda`` (``torch.cuda``) against its arch list."""
    sm, ptx = torchbuild.arch_list_kernels(list(cuda.get_arch_list()))
    out = []
    for i in range(cuda.device_count()):
        major, minor = cuda.get_device_capability(i)
        cap = f"{major}.{minor}"
        out.append(
            {
                "index": i,
                "name": cuda.get_device_name(i),
                "capability": cap,
                "arch_list": list(cuda.get_arch_list()),
                "ok": torchbuild.has_kernels(sm, ptx, cap),
            }
        )
    return out


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"error": f"torch {torch.__version__} sees no CUDA device"}))
        return 0
    print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "cards": report(torch.cuda)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
