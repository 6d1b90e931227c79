"""``predict(cell)``: the peak GPU memory of a cell, as a breakdown that adds up.

Pipeline: trace the real model's micro-step on meta tensors
(``model_trace``, on a cache miss only: ``shapes``), replay the whole run (load, micro-steps, optimizer steps,
the strategy's buffers) through the caching-allocator model (``program``,
``plain``/``zero``/``fsdp``/``generate``), then add what lives outside the
allocator (CUDA context, kernels, NCCL). Peak NVML process memory =
allocator reserved peak + context.

Tracing is kept cheap three ways (``shapes.trace_train``): a deep model
is traced at three blocks and its middle block replicated to the real depth
(``blocks``); batches above 2 are derived from traces at batch 1 and 2; traces
are cached on disk (``trace_cache``).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

from bench import gpus, overhead, recipe as recipes
from bench.predict import allocator, plain, sdpa, shapes
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


def program_cell(cell):
    """The cell as its replayed program sees it: the program depends on the card only
    through torch's cuBLAS workspace (``plain.cublas_workspace``), the attention kernels
    it runs (``sdpa.kernels``) and its limit, which is applied apart (``Outcome.under``).
    So every card of one workspace size and kernel class shares one replay: the cell's
    GPU is replaced by the first such card, its label and its stated memory
    (``gpu_memory``, a limit too) dropped."""
    changes = {"gpu_memory": None} if getattr(cell, "gpu_memory", None) is not None else {}
    return dataclasses.replace(cell, gpu=_workspace_card(cell.gpu), label="", **changes)


@functools.lru_cache(maxsize=64)
def _workspace_card(name: str) -> str:
    def kind(gpu) -> tuple[int, str]:
        return plain.cublas_workspace(gpu), sdpa.kernels(gpu.compute_capability)

    wanted = kind(gpus.resolve(name))
    return min(n for n in gpus.names() if kind(gpus.resolve(n)) == wanted)


def _program(cell, layers: int | None, limit: int | None) -> tuple[Outcome, int, int]:
    """(allocator outcome, host bytes, bytes outside the allocator), cached.

    ``limit``: the allocator's room on the card; near it the simulated
    allocator releases its cache and retries, as the real one does.
    """
    return _replay(program_cell(cell), layers, limit)


_REPLAYS: dict[tuple, tuple[Outcome, int, int]] = {}
"""Replays made in this process, by (program cell, layers, limit); the oldest go past ``_KEEP``."""
_KEEP = 1024


def _replay(cell, layers: int | None, limit: int | None) -> tuple[Outcome, int, int]:
    key = (cell, layers, limit)
    found = _REPLAYS.get(key)
    if found is None:
        with allocator.limited(limit):
            found = _REPLAYS[key] = _program_now(cell, layers)
        if len(_REPLAYS) > _KEEP:
            del _REPLAYS[next(iter(_REPLAYS))]
    return found


def _program_now(cell, layers: int | None) -> tuple[Outcome, int, int]:
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
    tt = shapes.trace_train(shapes.shape_key(cell, layers))
    weight_bytes = None
    if r.quantized_base == "nf4":
        from bench.predict import quant

        weight_bytes = quant.nf4_weight_bytes
    return plain.program(tt, cell, gpu, weight_bytes), overhead.HOST_BASE_BYTES, r.outside_allocator_bytes


def room(cell) -> int:
    """The allocator's room on the cell's card: its memory less what the process holds outside."""
    return gpus.of_cell(cell).memory_bytes - recipe_for(cell).outside_allocator_bytes


def _on_card(cell, limit: int) -> tuple[Outcome, int, int, bool]:
    """(outcome, host bytes, bytes outside the allocator, fits) of the cell under ``limit``.

    The run without a limit is replayed once (and shared by every card, ``program_cell``);
    it is the run under ``limit`` too when the limit never came into play, and it proves
    an OOM when more was requested at once than the limit holds. Only in between is the
    run replayed again under the limit, where releasing the cache may let it fit. A cell
    that does not fit is reported by its run without the limit (what it would take).
    """
    free = _program(cell, None, None)
    verdict = free[0].under(limit)
    if verdict is None:
        capped = _program(cell, None, limit)
        if not capped[0].oom:
            return (*capped, True)
    return (*free, bool(verdict))


def replay_reported(cell) -> tuple[Outcome, int, int]:
    """The run whose outcome ``predict(cell)`` reports, replayed now rather than taken from
    the in-process cache (the allocator's log of it is the predicted timeline)."""
    limit = room(cell)
    free = _program(cell, None, None)
    used = None
    if free[0].under(limit) is None and not _program(cell, None, limit)[0].oom:
        used = limit
    with allocator.limited(used):
        return _program_now(program_cell(cell), None)


def predict(cell, host_memory: int | None = None) -> Prediction:
    """Predict one normalized cell on its ``cell.gpu``.

    ``host_memory``: the host RAM stated for a ``split: layers`` cell; blocks that fit on
    no card are then offloaded to it as accelerate does (else they make the cell not fit)."""
    gpu = gpus.of_cell(cell)
    if recipe_for(cell).split != "none":
        from bench.predict import split

        return split.predict(cell, host_memory)
    outcome, host, outside, fits = _on_card(cell, room(cell))
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


def fits(cell) -> bool:
    """Whether the cell fits its card (``predict(cell).fits``, without the breakdown).

    With the run without a limit replayed already, as ``predict`` decides; otherwise one
    replay under the card's limit answers, stopped at its first failing allocation (where
    the run without a limit fits, the two are the same run, ``Outcome.under``)."""
    if recipe_for(cell).split != "none":
        return predict(cell).fits
    limit = room(cell)
    if (program_cell(cell), None, None) in _REPLAYS:
        return _on_card(cell, limit)[3]
    try:
        with allocator.stop_at_oom():  # the first failing allocation answers (nothing is kept)
            return not _program(cell, None, limit)[0].oom
    except allocator.OutOfMemory:
        return False


def max_batch(cell, limit: int = 1024) -> int:
    """Largest micro-batch that fits the cell's GPU (0 if batch 1 does not).

    The answer is the same for every batch of a cell, so it is searched once per cell
    at batch 1; the batches it tries are replayed once without a limit and shared with
    every cell and card that replays them (``_on_card``)."""
    return _max_batch(dataclasses.replace(cell, batch=1, label=""), limit)


@functools.lru_cache(maxsize=1024)
def _max_batch(base, limit: int) -> int:
    from bench.cell import replace

    return search_max_batch(lambda b: fits(replace(base, batch=b)), limit)


def search_max_batch(fits_at, limit: int) -> int:
    """The largest batch in 1..``limit`` that ``fits_at``, doubling then bisecting (0: none fits)."""
    if not fits_at(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits_at(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits_at(mid) else (lo, mid)
    return lo


__all__ = ["Prediction", "fits", "max_batch", "predict", "program_cell", "replay_reported", "room"]
