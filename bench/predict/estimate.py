"""``predict(cell)``: the peak GPU memory of a cell, as a breakdown that adds up.

Pipeline: trace the real model's micro-step on meta tensors
(``model_trace``), replay the whole run (load, micro-steps, optimizer steps,
the strategy's buffers) through the caching-allocator model (``program``,
``plain``/``zero``/``fsdp``/``generate``), then add what lives outside the
allocator (CUDA context, kernels, NCCL). Peak NVML process memory =
allocator reserved peak + context.

Tracing is kept cheap three ways (``model_trace.trace_train``): a deep model
is traced at three blocks and its middle block replicated to the real depth
(``blocks``); batches above 2 are derived from traces at batch 1 and 2; traces
are cached on disk (``trace_cache``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from bench import gpus, overhead, recipe as recipes
from bench.predict import allocator, model_trace, plain
from bench.predict.program import CONTEXT, PARTS, RESERVE, Outcome
from bench.recipe import Recipe


@dataclass(frozen=True)
class Prediction:
    peak_bytes: int
    """Peak NVML per-process memory: what decides an OOM."""
    allocated_bytes: int
    """Peak ``torch.cuda.max_memory_allocated``."""
    reserved_bytes: int
    host_bytes: int
    gpu: str
    capacity_bytes: int
    fits: bool
    """No allocation fails on this card, counting the cache the allocator releases when full."""
    allocator_retries: int = 0
    """Times the allocator had to release its cache to stay within the card."""
    breakdown: dict[str, int] = field(default_factory=dict)
    resident_bytes: dict[str, int] = field(default_factory=dict)
    """Per part, what one rank keeps allocated between optimizer steps (``Outcome.resident``)."""
    ranks: int = 1
    """GPUs the cell runs on; every figure above is per GPU (the largest rank)."""
    host_node_bytes: int = 0
    """Host RAM of the ranks that share one node (``host_bytes`` x ranks per node)."""
    notes: tuple[str, ...] = ()
    devices: int = 1
    """Cards of one process (``split: layers``); every figure above is then the bottleneck card's."""
    cards: tuple[dict, ...] = ()
    """``split: layers``: each card's peak, breakdown and modules (``split.Card``)."""
    placement: dict[str, int | str] = field(default_factory=dict)
    """``split: layers``: module -> card index, ``cpu`` (offloaded) or ``disk`` (fits nowhere)."""
    bottleneck: int | None = None
    """``split: layers``: the card with the largest peak."""

    @property
    def headroom_bytes(self) -> int:
        return self.capacity_bytes - self.peak_bytes

    def to_dict(self) -> dict:
        return {
            "peak_bytes": self.peak_bytes,
            "allocated_bytes": self.allocated_bytes,
            "reserved_bytes": self.reserved_bytes,
            "host_bytes": self.host_bytes,
            "fits": self.fits,
            "gpu": self.gpu,
            "capacity_bytes": self.capacity_bytes,
            "headroom_bytes": self.headroom_bytes,
            "allocator_retries": self.allocator_retries,
            "breakdown": dict(self.breakdown),
            "resident_bytes": dict(self.resident_bytes),
            "ranks": self.ranks,
            "host_node_bytes": self.host_node_bytes,
            "notes": list(self.notes),
            **(
                {
                    "devices": self.devices,
                    "bottleneck_card": self.bottleneck,
                    "cards": [dict(c) for c in self.cards],
                    "placement": dict(self.placement),
                }
                if self.cards
                else {}
            ),
        }


GPUS_PER_NODE = 8
"""Ranks that share a node's host RAM (DGX/HGX nodes hold 8 GPUs; fewer ranks share one node)."""


def recipe_for(cell) -> Recipe:
    """The recipe the predictor models (the runner's child reads the same object)."""
    return recipes.of(cell)


def _program(cell, layers: int | None, limit: int | None) -> tuple[Outcome, int, int]:
    """(allocator outcome, host bytes, bytes outside the allocator), cached.

    ``limit``: the allocator's room on the card; near it the simulated
    allocator releases its cache and retries, as the real one does.
    """
    with allocator.limited(limit):
        return _program_cached(cell, layers, limit)


@functools.lru_cache(maxsize=512)
def _program_cached(cell, layers: int | None, limit: int | None) -> tuple[Outcome, int, int]:
    gpu = gpus.of_cell(cell)
    r = recipe_for(cell)
    if not cell.trains:
        from bench.predict import generate

        return generate.program(cell, gpu, layers)
    if r.deepspeed:
        from bench.predict import zero

        return zero.program(cell, gpu)
    if r.fsdp:
        from bench.predict import fsdp

        return fsdp.program(cell, gpu)
    tt = model_trace.trace_train(model_trace.shape_key(cell, layers))
    weight_bytes = None
    if r.quantized_base == "nf4":
        from bench.predict import quant

        weight_bytes = quant.nf4_weight_bytes
    return plain.program(tt, cell, gpu, weight_bytes), overhead.HOST_BASE_BYTES, r.outside_allocator_bytes


def predict(cell, host_memory: int | None = None) -> Prediction:
    """Predict one normalized cell on its ``cell.gpu``.

    ``host_memory``: the host RAM stated for a ``split: layers`` cell; blocks that fit on
    no card are then offloaded to it as accelerate does (else they make the cell not fit)."""
    gpu = gpus.of_cell(cell)
    if recipe_for(cell).split != "none":
        from bench.predict import split

        return split.predict(cell, host_memory)
    outcome, host, outside = _program(cell, None, gpu.memory_bytes - recipe_for(cell).outside_allocator_bytes)
    fits = not outcome.oom
    if not fits:  # what it would take: the same run without the card's limit
        outcome, host, outside = _program(cell, None, None)
    reserved = max(outcome.peak_reserved, outcome.peak_allocated)
    parts = {p: int(outcome.at_peak.get(p, 0)) for p in PARTS}
    parts[RESERVE] = 0
    parts[RESERVE] = reserved - sum(parts.values())  # cached/fragmented + whatever the peak moment did not hold
    parts[CONTEXT] += outside
    peak = sum(parts.values())
    per_node = min(cell.gpus, GPUS_PER_NODE)
    return Prediction(
        peak_bytes=peak,
        allocated_bytes=outcome.peak_allocated,
        reserved_bytes=reserved,
        host_bytes=host,
        gpu=gpu.name,
        capacity_bytes=gpu.memory_bytes,
        fits=fits,
        allocator_retries=outcome.retries,
        breakdown={k: v for k, v in parts.items()},
        resident_bytes=dict(outcome.resident),
        ranks=cell.gpus,
        host_node_bytes=host * per_node,
    )


def max_batch(cell, limit: int = 1024) -> int:
    """Largest micro-batch that fits the cell's GPU (0 if batch 1 does not)."""
    from bench.cell import replace

    fits = lambda b: predict(replace(cell, batch=b)).fits  # noqa: E731
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


__all__ = ["Prediction", "predict", "max_batch"]
