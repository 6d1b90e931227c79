"""Units and dtypes, defined once: GiB, MiB, the dtype names bench uses, their sizes.

A dtype is named by a string everywhere (``fp32``, ``fp16``, ``bf16``), so
the torch-free parts (recipe, parent, reports) can speak of it;
``torch_dtype`` turns a name into the ``torch.dtype`` on the torch side only.
"""

from __future__ import annotations

from typing import Any

GiB = 2**30
"""Gibibyte: every GiB bench prints is 2**30 bytes."""
MiB = 2**20

BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
"""Bytes per element of each dtype name."""

HALF_OF = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "pure-bf16": "bf16"}
"""A cell precision -> the dtype its weights are computed in (``fp32`` stays fp32)."""


_UNITS = {
    "": 1,
    "b": 1,
    "kib": 2**10,
    "mib": MiB,
    "gib": GiB,
    "tib": 2**40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}


def parse_size(text: str, key: str) -> int:
    """``"256GiB"``, ``"1.5TiB"``, ``"512GB"`` or a byte count -> bytes; ``UserError`` naming ``key`` otherwise."""
    import re

    from bench.errors import UserError

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise UserError(f"{key}: {str(text)[:40]!r} is not allowed; allowed: a size such as 256GiB, 1.5TiB or 512GB")
    return int(float(m.group(1)) * _UNITS[unit])


def torch_dtype(name: str) -> Any:
    """The ``torch.dtype`` of a dtype name (or a precision: ``pure-bf16`` is bf16)."""
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[HALF_OF.get(name, name)]
