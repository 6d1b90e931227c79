"""The GPU catalog: memory, compute capability and datasheet peaks per card.

Shipped as ``bench/data/gpus.json``. ``memory_bytes`` is the total a driver
reports for the card (not the marketing GB); ``tflops`` are dense peaks
(no sparsity), ``fp16``/``bf16`` on tensor cores.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources

from bench.errors import UserError, allowed

PRECISIONS = ("fp32", "fp16", "bf16", "pure-bf16")


@dataclass(frozen=True)
class GPU:
    name: str
    marketing_name: str
    nvml_names: tuple
    memory_bytes: int
    compute_capability: str
    bf16: bool
    tflops: dict = field(hash=False)
    """Dense peaks: ``fp32`` (CUDA cores), ``fp16`` and ``bf16`` (tensor cores; ``bf16`` None if unsupported)."""
    bandwidth_gbps: float
    source: str
    note: str | None = None
    fp8: bool = False
    """FP8 tensor cores (compute capability 8.9 and newer)."""
    pcie_gbps: float = 16.0
    """Host link, GB/s each way (PCIe generation x16 as specified): offload transfers."""
    nvlink_gbps: float | None = None
    """GPU-to-GPU NVLink, GB/s total; ``None``: GPUs talk over PCIe."""
    link_note: str | None = None
    usd_per_hour: float | None = None
    """Indicative on-demand price of one GPU-hour (``price_source``, ``price_date``)."""
    price_source: str | None = None
    price_date: str | None = None
    ray_accelerator_types: tuple = ()
    """Ray ``accelerator_type`` labels of this card, most precise first; the last is the one
    Ray derives from the NVML name (``bench run --executor ray --require-gpu-type``)."""

    def peak_tflops(self, precision: str) -> float:
        """Peak for a training precision; mixed fp16/bf16 runs at the half-precision tensor peak."""
        if precision not in PRECISIONS:
            raise UserError(allowed("precision", precision, PRECISIONS))
        key = "bf16" if precision == "pure-bf16" else precision
        value = self.tflops.get(key)
        if value is None:
            raise UserError(f"precision: {precision!r} is not supported on {self.name} (no bf16); allowed: fp32, fp16")
        return float(value)

    @property
    def supports_flash_attention(self) -> bool:
        """FlashAttention 2 needs compute capability 8.0 or newer."""
        major, minor = (int(x) for x in self.compute_capability.split("."))
        return (major, minor) >= (8, 0)

    @property
    def family(self) -> str:
        """The model token NVML names carry: ``a100`` for ``a100-80gb``, ``rtx3090`` ..."""
        return re.sub(r"-\d+gb$", "", self.name)


@functools.cache
def _document() -> dict:
    return json.loads((resources.files("bench") / "data" / "gpus.json").read_text(encoding="utf-8"))


def speed_figures() -> dict:
    """The catalog's ``speed`` block: efficiency figures shared by every card (``bench.predict.step_time``)."""
    return dict(_document()["speed"])


@functools.cache
def _catalog() -> dict[str, GPU]:
    doc = _document()
    gpus = {}
    for raw in doc["gpus"]:
        gpu = GPU(
            **{
                **raw,
                "nvml_names": tuple(raw["nvml_names"]),
                "ray_accelerator_types": tuple(raw.get("ray_accelerator_types", ())),
            }
        )
        gpus[gpu.name] = gpu
    return gpus


def names() -> list[str]:
    return sorted(_catalog())


@functools.cache
def _keys() -> dict[str, str]:
    keys: dict[str, str] = {}
    for gpu in _catalog().values():
        for key in (gpu.name, gpu.marketing_name, *gpu.nvml_names):
            keys.setdefault(key.lower(), gpu.name)
    return keys


def _squash(text: str) -> str:
    """A spelling without vendor words, case, spaces or punctuation: ``RTX 4090`` -> ``rtx4090``."""
    text = re.sub(r"\b(nvidia|geforce|tesla)\b", "", str(text).lower())
    return re.sub(r"[^a-z0-9]", "", text)


CUSTOM = "custom"
"""A card known by its memory alone (cell field ``gpu_memory``, ``--gpu-memory``)."""


def generic(memory_bytes: int = 0) -> GPU:
    """The profile of a ``custom`` card: its memory and nothing else. No datasheet peaks,
    so no speed is predicted for it; the CUDA context and workspaces are those of any card
    before compute capability 9 (4 MiB cuBLAS workspaces)."""
    return GPU(
        name=CUSTOM,
        marketing_name="a card given by its memory (gpu_memory)",
        nvml_names=(),
        memory_bytes=memory_bytes,
        compute_capability="8.0",
        bf16=True,
        tflops={"fp32": None, "fp16": None, "bf16": None},
        bandwidth_gbps=0.0,
        source="gpu_memory of the cell: memory only",
    )


def of_cell(cell) -> GPU:
    """The card a cell targets: the catalog card (or the generic ``custom`` one) with the
    cell's ``gpu_memory`` in place of its memory when given."""
    gpu = resolve(cell.gpu)
    memory = getattr(cell, "gpu_memory", None)
    return dataclasses.replace(gpu, memory_bytes=memory) if memory is not None else gpu


def resolve(name: str) -> GPU:
    """A catalog name, marketing name or NVML name in any case, or a common spelling
    (``4090``, ``RTX 4090``, ``rtx-4090``, ``a6000``, ``H100 SXM``, the start of a marketing
    name); an ambiguous one (``a100``: 40 or 80 GB) names
    the cards it could be, an unknown one the closest names."""
    if str(name).strip().lower() == CUSTOM:
        return generic()
    found = _keys().get(str(name).strip().lower())
    if found is not None:
        return _catalog()[found]
    q = _squash(name)
    exact = {v for k, v in _keys().items() if q and _squash(k) == q}
    partial = exact or {
        g.name
        for g in _catalog().values()
        if q
        and len(q) >= 3
        and (
            _squash(g.name).startswith(q)
            or _squash(g.marketing_name).startswith(q)  # "H100 SXM" -> NVIDIA H100 SXM5 80GB
            or (q[0].isdigit() or q[0] == "a")
            and q in _squash(g.name)
        )
    }
    if len(partial) > 1:  # "3080" is the RTX 3080, not the 3080 Ti
        tight = {n for n in partial if _squash(n) in (q, "rtx" + q) or _squash(n).endswith(q)}
        partial = tight if len(tight) == 1 else partial
    if len(partial) == 1:
        return _catalog()[partial.pop()]
    if partial:
        raise UserError(f"gpu: {name!r} is ambiguous; allowed: {' or '.join(sorted(partial))}")
    close = difflib.get_close_matches(str(name).lower(), names(), n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise UserError(f"gpu: {name!r} is not in the catalog{hint}; allowed: {', '.join(names())}")


def _family_pattern(family: str) -> re.Pattern:
    m = re.match(r"([a-z]*)(\d*)(.*)", family)
    assert m is not None  # every pattern part may be empty
    letters, digits, rest = m.groups()
    body = re.escape(letters) + (r"\s*" + digits if digits else "") + re.escape(rest)
    return re.compile(rf"(?<![a-z0-9]){body}(?![a-z0-9])")


def from_nvml_name(nvml_name: str, memory_bytes: int | None = None) -> GPU | None:
    """The catalog card best matching a detected one, or None when no catalog card fits."""
    key = nvml_name.strip().lower()
    exact = _keys().get(key)
    if exact is not None:
        return _catalog()[exact]
    candidates = [g for g in _catalog().values() if _family_pattern(g.family).search(key)]
    if not candidates:
        return None
    if memory_bytes is None:
        size = re.search(r"(\d+)\s*gb", key)
        memory_bytes = int(size.group(1)) * 10**9 if size else None
    if memory_bytes is None:
        return min(candidates, key=lambda g: g.memory_bytes)  # the smaller card: the safe side for planning
    return min(candidates, key=lambda g: abs(g.memory_bytes - memory_bytes))
