"""Generation with the blocks split over several cards (``split: layers``): where each module
goes, and every card's peak.

**Placement.** As ``from_pretrained(device_map="balanced" | "sequential")`` does it:
accelerate's own ``infer_auto_device_map`` (after ``get_balanced_memory`` for
``balanced``) on the model built on the meta device, ``no_split_module_classes`` = the
model's ``_no_split_modules``, module sizes in the weights' dtype (quantized linears at
1 byte (int8) or half a byte (4-bit) per weight, as transformers' bitsandbytes
quantizer's ``adjust_target_dtype`` asks, the modules left unquantized at the compute
dtype via ``special_dtypes``). The room given to accelerate for card ``c`` is its memory
less what the card needs beside the counted weights (``reserve``): the CUDA context, the
cuBLAS workspaces, its layers' KV cache, the activations passing through, the
quantization state accelerate does not count. That reserve comes from this module's own
per-card prediction, so placement and prediction are iterated to a fixed point (at most
``ROUNDS``; the prediction is always made for the placement returned). A stated host
(``host_memory``) adds accelerate's ``"cpu"`` entry: blocks that fit on no card are
offloaded to it; without one they go to ``"disk"`` and the cell does not fit.

**Per-card memory.** The real model's prefill and decode forwards are traced on meta
(``generate.trace``) with hooks that do what accelerate's ``AlignDevicesHook`` does on
the GPUs (``device_hooks.Devices``): every module of the map runs on its card, and a tensor argument
that lives on another card is copied to it (the hidden states at a boundary, the
position embeddings and masks at every block of a card other than theirs); the root's
output comes back to card 0 (``io_same_device``); the cache is never moved
(``_skip_keys_device_placement``). An offloaded module executes on card 0 (accelerate's
main device), each of its leaf modules' weights copied there for its forward only. Each
traced event is thereby on one card; each card's program (its weights, its events, the
context on every card, ``generate()``'s ids and logits on card 0) is replayed through
the allocator model on its own.

**Time.** One card is busy at a time: the cards run the same kernels the single-card
model would (``speed``), plus the copies between cards over PCIe and, for offloaded
modules, their weights over PCIe at every forward (``transfer_seconds``).

A cache hit of the prediction needs the cell and ``host_memory``; the placement is a
function of the two.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field

from bench import gpus, models, overhead, recipe as recipes
from bench.dtypes import torch_dtype
from bench.predict import allocator, generate, plain
from bench.predict.device_hooks import Devices, owner
from bench.predict.program import CONTEXT, PARTS, RESERVE, WEIGHTS

ROUNDS = 4
"""Placement/prediction rounds before the last placement is kept."""


@dataclass(frozen=True)
class Card:
    """One card of a split cell."""

    index: int
    peak_bytes: int
    allocated_bytes: int
    breakdown: dict[str, int]
    fits: bool
    modules: tuple[str, ...]
    """The modules of the device map placed on this card, in model order."""
    reserve_bytes: int
    """What the card needs beside the weights accelerate counts (the room it was not given)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"modules": list(self.modules)}


@dataclass(frozen=True)
class Placement:
    device_map: dict[str, int | str]
    """Module name -> card index, ``"cpu"`` (offloaded to the host) or ``"disk"`` (fits nowhere)."""
    max_memory: dict[int | str, int]
    """What accelerate was given per card (and host), after balancing."""
    cards: tuple[Card, ...] = ()
    offloaded_bytes: int = 0
    """Weights kept on the host and streamed to card 0 at every forward."""
    copy_bytes: dict[str, int] = field(default_factory=dict)
    """Bytes copied between devices by the hooks in the prefill and in one decode forward."""
    weight_bytes: int = 0
    """All the model's stored weights, wherever they are placed."""

    @property
    def on_disk(self) -> list[str]:
        return [m for m, d in self.device_map.items() if d == "disk"]

    @property
    def on_host(self) -> list[str]:
        return [m for m, d in self.device_map.items() if d == "cpu"]


def _meta_model(cell):
    spec = models.resolve(cell.model)
    attn = cell.attn or models.default_attn(spec)
    return models.build(
        spec,
        device="meta",
        dtype=torch_dtype(recipes.of(cell).build_dtype),
        attn="sdpa" if attn == "flash_attention_2" else attn,
    )


def _sizes(model, q) -> tuple[object, dict]:
    """(dtype, special_dtypes) for accelerate's size count, as transformers' bnb quantizers set them."""
    import torch

    dtype = next(model.parameters()).dtype
    if q is None:
        return dtype, {}
    from accelerate.utils import CustomDtype

    from bench.predict import infer_quant

    quantized = {f"{n}.weight" for n in infer_quant.quantized_modules(model)}
    special = {n: dtype for n, _ in model.named_parameters() if n not in quantized}
    return (torch.int8 if q.kind == "int8" else CustomDtype.INT4), special


def device_map(cell, reserve: list[int], host_memory: int | None) -> tuple[dict, dict]:
    """accelerate's placement of the cell's model with ``reserve[c]`` kept free on card ``c``."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    r = recipes.of(cell)
    capacity = gpus.of_cell(cell).memory_bytes
    model = _meta_model(cell)
    dtype, special = _sizes(model, r.quantization)
    budget: dict[int | str, int] = {c: max(0, capacity - reserve[c]) for c in range(r.devices)}
    if host_memory is not None:
        budget["cpu"] = host_memory
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    quiet = logging.getLogger("accelerate.utils.modeling")
    level, quiet.level = quiet.level, logging.ERROR  # "Device N is not available": the cards are not here
    try:
        if r.split_balance == "balanced" and r.devices > 1:
            budget = get_balanced_memory(
                model, budget, no_split_module_classes=no_split, dtype=dtype, special_dtypes=special
            )
        placed = infer_auto_device_map(
            model, budget, no_split_module_classes=no_split, dtype=dtype, special_dtypes=special
        )
    finally:
        quiet.level = level
    return dict(placed), {k: int(v) for k, v in budget.items()}


@functools.lru_cache(maxsize=64)
def placement(cell, host_memory: int | None = None) -> Placement:
    """The placement of a split cell and every card's prediction (module docstring).
    The child of ``bench run`` asks here for the map it dispatches the model with."""
    r = recipes.of(cell)
    gpu = gpus.of_cell(cell)
    n = r.devices
    reserve = [r.outside_allocator_bytes + 2 * plain.cublas_workspace(gpu)] * n
    seen: list[dict] = []
    result = None
    for _ in range(ROUNDS):
        placed, budget = device_map(cell, reserve, host_memory)
        result = _predict_cards(cell, gpu, placed, budget)
        if placed in seen:
            break
        seen.append(placed)
        reserve = [c.reserve_bytes for c in result.cards]
    assert result is not None
    return result


def _predict_cards(cell, gpu, placed: dict, budget: dict) -> Placement:
    r = recipes.of(cell)
    q = r.quantization
    model = _meta_model(cell)
    dtype, special = _sizes(model, q)
    from accelerate.utils import compute_module_sizes

    counted = compute_module_sizes(model, dtype=dtype, special_dtypes=special)
    del model

    from bench.predict import infer_quant

    def stored(name, numel, nbytes, shape) -> list[int]:
        return infer_quant.weight_bytes([(name, numel, nbytes, shape)], q) if q else [nbytes]

    instruments: list = []
    if q is not None:
        instruments.append(infer_quant.Workspaces(q))
    sizes: dict[int, int] = {}

    def param_bytes(p) -> int:
        return sizes.get(id(p), p.numel() * p.element_size())

    devices = Devices(placed, param_bytes)
    instruments.append(devices)
    t = generate.trace(cell, None, tuple(instruments))
    weights: dict[int | str, list[int]] = {}
    for name, numel, nbytes, shape in t["named"]:
        weights.setdefault(owner(name, placed), []).extend(stored(name, numel, nbytes, shape))
    buffers: dict[int | str, int] = {}
    for name, nbytes in t["named_buffers"]:
        where = owner(name, placed)
        buffers[where if isinstance(where, int) else Devices.MAIN] = (
            buffers.get(where if isinstance(where, int) else Devices.MAIN, 0) + nbytes
        )
    limit = gpu.memory_bytes - r.outside_allocator_bytes
    cards = []
    for c in range(r.devices):
        with allocator.limited(limit):
            outcome = generate.replay(cell, gpu, t, weights.get(c, []), card=c, buffers=buffers.get(c, 0)).outcome()
        fits = not outcome.oom
        if not fits:
            outcome = generate.replay(cell, gpu, t, weights.get(c, []), card=c, buffers=buffers.get(c, 0)).outcome()
        reserved = max(outcome.peak_reserved, outcome.peak_allocated)
        parts = {p: int(outcome.at_peak.get(p, 0)) for p in PARTS}
        parts[RESERVE] = 0
        parts[RESERVE] = reserved - sum(parts.values())
        parts[CONTEXT] += r.outside_allocator_bytes
        peak = sum(parts.values())
        mods = tuple(m for m, d in placed.items() if d == c)
        accounted = sum(int(counted.get(m, 0)) for m in mods)
        cards.append(Card(c, peak, outcome.peak_allocated, parts, fits, mods, max(0, peak - accounted)))
    per_forward = {"prefill": 0, "decode": 0}
    for fwd, nbytes in devices.copies:
        if fwd == 0:
            per_forward["prefill"] += nbytes
        elif fwd == 1:
            per_forward["decode"] += nbytes
    offloaded = sum(weights.get("cpu", []))  # on "disk" nothing runs: the cell does not fit
    total = sum(sum(w) for w in weights.values())
    return Placement(placed, budget, tuple(cards), offloaded, per_forward, weight_bytes=total)


def predict(cell, host_memory: int | None = None):
    """The ``Prediction`` of a split cell: the bottleneck card's peak and breakdown, every card beside it."""
    from bench.predict.estimate import Prediction

    r = recipes.of(cell)
    gpu = gpus.of_cell(cell)
    pl = placement(cell, host_memory)
    worst = max(pl.cards, key=lambda c: c.peak_bytes)
    notes = []
    fits = all(c.fits for c in pl.cards) and not pl.on_disk
    if pl.on_disk:
        notes.append(
            f"{len(pl.on_disk)} modules fit on no card ({', '.join(pl.on_disk[:3])}{', ...' if len(pl.on_disk) > 3 else ''}): "
            "give --host-memory to offload them to the CPU as accelerate does"
        )
    if pl.on_host:
        notes.append(
            f"{len(pl.on_host)} modules offloaded to the host ({pl.offloaded_bytes / 2**30:.2f} GiB of weights), "
            "run on card 0 with their weights copied over PCIe at every forward"
        )
    if pl.on_host and r.quantization is not None:
        notes.append(
            "quantized modules offloaded to the host stay unquantized there (llm_int8_enable_fp32_cpu_offload); "
            "their host bytes and copies are counted at the compute dtype, not fp32"
        )
    host = overhead.HOST_BASE_BYTES + pl.offloaded_bytes
    return Prediction(
        peak_bytes=worst.peak_bytes,
        allocated_bytes=worst.allocated_bytes,
        reserved_bytes=worst.peak_bytes - r.outside_allocator_bytes,
        host_bytes=host,
        gpu=gpu.name,
        capacity_bytes=gpu.memory_bytes,
        fits=fits,
        breakdown=dict(worst.breakdown),
        resident_bytes={WEIGHTS: sum(c.breakdown[WEIGHTS] for c in pl.cards)},
        ranks=1,
        host_node_bytes=host,
        notes=tuple(notes),
        cards=tuple(c.to_dict() for c in pl.cards),
        placement=dict(pl.device_map),
        bottleneck=worst.index,
        devices=r.devices,
    )


def transfer_seconds(cell, link: float, host_memory: int | None = None) -> dict[str, float]:
    """Seconds per prefill and per decode forward spent copying between devices over PCIe at
    ``link`` bytes/s (the card's host link at the catalog's achieved fraction): the hooks'
    copies between cards, and the offloaded weights to card 0."""
    pl = placement(cell, host_memory)
    streamed = pl.offloaded_bytes
    return {
        "prefill": (pl.copy_bytes.get("prefill", 0) + streamed) / link,
        "decode": (pl.copy_bytes.get("decode", 0) + streamed) / link,
    }


def host_offload(cell, host_memory: int | None, transfer_seconds: float | None) -> dict | None:
    """What a split cell puts on the stated host, or ``None`` when nothing is offloaded:
    ``modules``, ``bytes`` (the weights kept there), ``share`` (of all the weights), and
    from the ``transfers`` part of a predicted ``generate()`` (``transfer_seconds``, when
    its time is modelled) the ``seconds`` spent streaming those weights to card 0 at each
    of its ``new_tokens`` forwards. Both kinds of copy cross the same link, so that part is
    split between them by bytes (``transfer_seconds``' own sums)."""
    pl = placement(cell, host_memory)
    if not pl.on_host:
        return None
    streamed = pl.offloaded_bytes * cell.new_tokens
    moved = streamed + pl.copy_bytes.get("prefill", 0) + pl.copy_bytes.get("decode", 0) * (cell.new_tokens - 1)
    seconds = None if transfer_seconds is None or moved <= 0 else transfer_seconds * streamed / moved
    return {
        "modules": len(pl.on_host),
        "bytes": pl.offloaded_bytes,
        "share": pl.offloaded_bytes / pl.weight_bytes if pl.weight_bytes else None,
        "seconds": seconds,
    }
