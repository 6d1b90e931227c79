"""Which CUDA build of torch has kernels for every card of this host.

A CUDA binary (``sm_XY``) runs on a card of the same major version and an
equal or higher minor one (``sm_86`` on an RTX 4090's 8.9); PTX
(``compute_XY``) is compiled by the driver for any card of ``X.Y`` or newer.
PyTorch's wheels differ in what they carry (``bench/data/torch_builds.json``,
from its release matrix): since 2.11 only the CUDA 12.6 build has Volta
(7.0) kernels, and only CUDA 12.8 and newer have Blackwell's (10.0, 12.0).
A build also needs a driver of the same CUDA major version or newer (minor
version compatibility within a major).

``scripts/torch_build.py`` asks ``nvidia-smi`` and prints the pip arguments
``make install`` uses; ``bench run`` checks the installed torch against each
visible card (``bench.worker.archcheck``) with ``has_kernels``. Both decide
here. No imports beyond the standard library: it runs before bench is installed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

BUILDS_FILE = Path(__file__).resolve().parent / "data" / "torch_builds.json"


def version(text: str) -> tuple[int, int]:
    """``"10.0"`` -> ``(10, 0)``: capabilities and CUDA versions compare as numbers."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    if not m:
        raise ValueError(f"not a version: {text!r}")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class Build:
    cuda: str
    index_url: str
    sm: tuple[str, ...]
    ptx: tuple[str, ...]


def builds() -> list[Build]:
    doc = json.loads(BUILDS_FILE.read_text())
    return [Build(b["cuda"], b["index_url"], tuple(b["sm"]), tuple(b["ptx"])) for b in doc["builds"]]


def has_kernels(sm: tuple[str, ...] | list[str], ptx: tuple[str, ...] | list[str], capability: str) -> bool:
    """Whether binaries ``sm`` or PTX ``ptx`` (versions ``"8.6"``) run on a card of ``capability``."""
    major, minor = version(capability)
    if any(version(a)[0] == major and version(a)[1] <= minor for a in sm):
        return True
    return any(version(a) <= (major, minor) for a in ptx)


def arch_list_kernels(arch_list: list[str]) -> tuple[list[str], list[str]]:
    """``torch.cuda.get_arch_list()`` (``sm_86``, ``compute_90``) as (binary, PTX) versions."""
    sm: list[str] = []
    ptx: list[str] = []
    for a in arch_list:
        m = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", a)
        if m:
            (sm if m.group(1) == "sm" else ptx).append(f"{m.group(2)}.{m.group(3)}")
    return sm, ptx


def choose(capabilities: list[str], driver_cuda: str | None) -> Build:
    """The newest build with kernels for every card that this driver runs; ValueError saying why none."""
    if not capabilities:
        raise ValueError("nvidia-smi lists no GPU")
    usable = [b for b in builds() if driver_cuda is None or version(b.cuda)[0] <= version(driver_cuda)[0]]
    if not usable:
        raise ValueError(
            f"the driver supports CUDA {driver_cuda}; torch's builds need CUDA 12 or newer: update the driver"
        )
    fitting = [b for b in usable if all(has_kernels(b.sm, b.ptx, c) for c in capabilities)]
    if fitting:
        return max(fitting, key=lambda b: version(b.cuda))
    cards = ", ".join(sorted(set(capabilities), key=version))
    per_card = {
        c: [b.cuda for b in usable if has_kernels(b.sm, b.ptx, c)] for c in sorted(set(capabilities), key=version)
    }
    detail = "; ".join(f"{c}: {', '.join('CUDA ' + x for x in v) or 'none'}" for c, v in per_card.items())
    raise ValueError(
        f"no torch build has kernels for every card here (compute capabilities {cards}; builds per card: {detail}): "
        "use one kind of card per host, or install a torch built from source with TORCH_CUDA_ARCH_LIST"
    )


def parse_nvidia_smi(compute_caps: str, header: str) -> tuple[list[str], str | None]:
    """(capabilities, driver CUDA version) from ``nvidia-smi --query-gpu=compute_cap --format=csv,noheader``
    and plain ``nvidia-smi`` (its ``CUDA Version: 12.4`` banner)."""
    caps = [line.strip() for line in compute_caps.splitlines() if line.strip()]
    for c in caps:
        version(c)
    m = re.search(r"CUDA Version:\s*(\d+\.\d+)", header)
    return caps, m.group(1) if m else None
