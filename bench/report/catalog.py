"""What a report needs from the model and GPU catalogs, behind one small value.

A report shows each model's published parameter count and each row's share of
its GPU's memory; both come from ``bench.models`` and ``bench.gpus``. Tables
take a ``Catalog`` so that tests (and golden files) can pin those facts, and so
that a record whose model or GPU the catalog does not know still renders: the
lookup answers ``None`` and the record's own numbers are used instead
(``measured.n_params``, ``predicted.capacity_bytes``, the environment's
``gpu_memory_bytes``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bench.errors import UserError


def _catalog_params(model: str) -> int | None:
    try:
        from bench import hub, models

        if hub.looks_like_repo_id(model.strip()) and not models.is_catalogued(model):
            return None  # a hub model outside the catalog: no published count, and no network call from a report
        return models.resolve(model).published_params
    except (ImportError, UserError, KeyError, ValueError):
        return None


def _catalog_gpu(gpu: str) -> Any | None:
    try:
        from bench import gpus

        return gpus.resolve(gpu)
    except (ImportError, UserError, KeyError, ValueError):
        return None


def _catalog_capacity(gpu: str) -> int | None:
    spec = _catalog_gpu(gpu)
    return getattr(spec, "memory_bytes", None)


def _catalog_gpu_label(gpu: str) -> str:
    """The marketing name without the vendor (``H200 SXM 141GB``), else the catalog name."""
    name = getattr(_catalog_gpu(gpu), "marketing_name", None) or gpu
    for vendor in ("NVIDIA ", "Tesla "):
        name = name.removeprefix(vendor)
    return name


@dataclass(frozen=True)
class Catalog:
    """Lookups by catalog name; each answers ``None`` (label: the name) when unknown."""

    params: Callable[[str], int | None] = _catalog_params
    """Published parameter count of a model."""
    capacity: Callable[[str], int | None] = _catalog_capacity
    """Memory of one GPU in bytes."""
    gpu_label: Callable[[str], str] = _catalog_gpu_label
    """How the GPU is named in a table (``H200 141GB``)."""

    def params_of(self, record: Mapping[str, Any]) -> int | None:
        """Catalog count, else the count the run made (``measured.n_params``)."""
        n = self.params(record["cell"]["model"])
        if n:
            return n
        return (record.get("measured") or {}).get("n_params")

    def capacity_of(self, record: Mapping[str, Any]) -> int | None:
        """Catalog capacity of the cell's GPU, else what the prediction or run recorded."""
        n = self.capacity(record["cell"]["gpu"])
        if n:
            return n
        n = (record.get("predicted") or {}).get("capacity_bytes")
        if n:
            return n
        return (record.get("environment") or {}).get("gpu_memory_bytes")


DEFAULT = Catalog()
