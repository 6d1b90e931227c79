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


def torch_dtype(name: str) -> Any:
    """The ``torch.dtype`` of a dtype name (or a precision: ``pure-bf16`` is bf16)."""
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[HALF_OF.get(name, name)]
