"""DeepSpeed ZeRO-1/2/3 (with CPU offload) on one of ``cell.gpus`` ranks.

Replays what ``deepspeed.initialize`` and its ZeRO optimizers allocate
(deepspeed 0.19.8; paths below are under ``deepspeed/runtime/``):

- ``engine.py:2080-2094``: the fp32 CPU model is cast to the half dtype
  parameter by parameter, then ``module.to(device)``; the micro-step therefore
  runs on half weights without autocast (``half_trace``).
- ZeRO-1/2 (``zero/stage_1_and_2.py``): trainable weights copied into one flat
  buffer aligned to ``2 * ranks`` (390-399, originals freed by 889-894); an
  fp32 master partition made by ``partition.clone().to(fp32)`` (560-575);
  gradient buckets of ``reduce_bucket_size`` elements, two with
  ``overlap_comm`` (3256-3280), created at the first gradient of every
  backward and released by its epilogue (924-932); the gradients of the
  rank's partition copied into ``grads_in_partition`` (2189-2199), which the
  next micro-step's buffer is added into (1032-1040); ``step()`` flattens
  them and upcasts to fp32 (3117-3118) after a per-gradient fp64 norm
  (2684, ``get_norm_dtype`` = fp64).  Offload: fp32 master, fp32 gradient and
  a bit16 buffer in pinned host memory (560-575, 934-941), a device staging
  buffer of the largest parameter (653-660), and per-gradient fp64 norm and
  fp32 copies at the accumulation boundary (1873-1900).
- ZeRO-3 (``zero/stage3.py``, ``zero/partition_parameters.py``): every
  parameter partitioned (1836-1843, full tensor freed by ``free_param``
  329), the partitions defragmented into one buffer after ``empty_cache``
  (``zero/utils.py:215-240``); fp32 master per sub-group of
  ``sub_group_size`` (1e9, ``zero/config.py:182``) via ``.to(fp32).clone()``
  (1170-1172); one bucket (782) and a gradient-partition buffer in the model
  dtype (791); each bucket reduce concatenates its gradients
  (``comm/coalesced_collectives.py:122``); ``step()`` flattens and upcasts one
  sub-group at a time (2686).  Gathered parameters cost memory when ranks > 1
  or parameters are offloaded (a world of one only re-points at the
  partition, ``partition_parameters.py:61-106``): ``gathered_peaks`` replays
  the fetch/prefetch/release rules of ``zero/partitioned_param_coordinator.py``.

The client optimizer is ``torch.optim.AdamW`` with default flags, i.e. the
foreach path on the device partition (one temporary the partition's size).
"""

from __future__ import annotations

import dataclasses
import re

from bench import dsconfig, models
from bench.predict import estimate, model_trace, plain
from bench.predict import optimizer as opt
from bench.predict.model_trace import Param, TrainTrace
from bench.predict.program import COMM, CONTEXT, GRADS, OPTIM, TRANSIENT, WEIGHTS, Outcome, Program

HALF = {"fp16": "fp16", "bf16": "bf16", "pure-bf16": "bf16", "fp32": "fp32"}
NORM_BYTES = 8  # fp64 norms (zero/utils.py:59-63)
SUB_GROUP = 10**9  # zero/config.py:182
NORM_CHUNK = 250_000_000  # stage3.py:1960 _constant_buffered_norm2


def half_trace(cell, layers: int | None = None) -> TrainTrace:
    """The micro-step on weights in the cell's half dtype without autocast."""
    key = model_trace.shape_key(cell, layers)
    return model_trace.trace_train(dataclasses.replace(key, weight_dtype=HALF[cell.precision], autocast=None))


def client_optimizer(cell) -> str:
    """``torch.optim.AdamW()`` defaults to foreach for device tensors (torch/optim/optimizer.py:161-185)."""
    return "adamw-foreach" if cell.optimizer == "adamw" else cell.optimizer


def flat_param(numel: int) -> Param:
    return Param("flat", numel, numel * 4, True, (numel,))


def step_temps(prog: Program, name: str, numel: int) -> None:
    """The optimizer's temporaries over one flat fp32 partition (``optimizer.step_transient``)."""
    for key in [prog.malloc(n, TRANSIENT) for n in opt.step_transient(name, [flat_param(numel)])]:
        prog.free(key)


def empty_cache(prog: Program) -> None:
    """``torch.cuda.empty_cache()``: give back every segment that is wholly free."""
    alloc = prog.alloc
    for small, pool in alloc._pools.items():
        keep = []
        for entry in pool:
            b = entry[2]
            if b.prev is None and b.next is None:
                alloc.reserved -= b.size
            else:
                keep.append(entry)
        alloc._pools[small] = keep


def unit_of(name: str) -> str:
    """The module owning a parameter: ZeRO-3 fetches per module (``iter_params(recurse=False)``)."""
    return name.rsplit(".", 1)[0]


def block_of(name: str) -> str:
    """The transformer block (``ModuleList`` entry, or a copy ``1c<j>`` of
    ``blocks.replicate``) holding a parameter; '' for the rest."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if re.fullmatch(r"\d+(c\d+)?", part):
            return ".".join(parts[: i + 1])
    return ""


def use_order(params, ckpt: bool) -> tuple[list[str], int]:
    """Module uses of one micro-step: forward, then backward (a checkpointed block
    re-runs its forward first); returns (order, number of forward uses)."""
    units: dict[str, str] = {}
    for p in params:
        units.setdefault(unit_of(p.name), block_of(p.name))
    fwd = list(units)
    runs: list[list[str]] = []
    for u in fwd:
        if runs and units[runs[-1][0]] == units[u]:
            runs[-1].append(u)
        else:
            runs.append([u])
    bwd: list[str] = []
    for run in reversed(runs):
        bwd += (run if ckpt and units[run[0]] else []) + run[::-1]
    return fwd + bwd, len(fwd)


def gathered_peaks(params, s: dsconfig.ZeroSettings, ckpt: bool) -> tuple[int, int]:
    """Peak gathered (non-persistent) elements in forward and in backward, steady state.

    ``_fetch_sub_module_impl`` (partitioned_param_coordinator.py:353-470): fetch the
    module, then prefetch upcoming ones up to ``min(max_live - available,
    prefetch_bucket_size)`` elements; ``release_sub_module`` (472) keeps a module
    whose next use lies within ``max_reuse_distance`` elements (``__params_to_release``
    629-657) or was already prefetched.
    """
    numel: dict[str, int] = {}
    for p in params:
        if p.numel > s.param_persistence_threshold:  # parameter_offload.py:317-335
            numel[unit_of(p.name)] = numel.get(unit_of(p.name), 0) + p.numel
    uses, n_fwd = use_order(params, ckpt)
    order = [u for u in uses if u in numel]
    n_fwd = sum(1 for u in uses[:n_fwd] if u in numel)
    live: dict[str, int] = {}
    scanned = 0
    peaks = [0, 0]
    for i, u in enumerate(order):
        live[u] = numel[u]
        scanned = max(scanned, i + 1)
        budget = min(s.max_live_parameters - sum(live.values()), s.prefetch_bucket_size)
        fetched = 0
        while scanned < len(order) and fetched < budget:
            v = order[scanned]
            if v not in live:
                live[v] = numel[v]
                fetched += numel[v]
            scanned += 1
        peak = sum(live.values())
        peaks[i >= n_fwd] = max(peaks[i >= n_fwd], peak)
        dist, keep = 0, False
        for j in range(i + 1, len(order)):
            if order[j] == u:
                keep = j < scanned or dist < s.max_reuse_distance
                break
            dist += numel[order[j]]
            if dist >= s.max_reuse_distance and j >= scanned:
                break
        if not keep:
            live.pop(u, None)
    return peaks[0], peaks[1]


class _Buckets:
    """The gradient hook: bucket copies, reduces and partition copies (one micro-step)."""

    def __init__(self, prog: Program, s, wb: int, ranks: int, in_part: int, offload: bool, boundary: bool):
        self.prog, self.s, self.wb, self.ranks = prog, s, wb, ranks
        self.in_part, self.offload, self.boundary = in_part, offload, boundary
        self.buffers: list[int] | None = None
        self.grads: int | None = None  # grads_in_partition (ZeRO-2) / held per-parameter grads (ZeRO-1)
        self.held: list[int] = []
        self.elements, self.params, self.own = 0, [], []
        self.on_first = None
        self.gathered: int | None = None

    def __call__(self, nbytes: int) -> None:
        prog, s, k = self.prog, self.s, nbytes // self.wb
        if self.buffers is None:
            if self.on_first:
                self.on_first()
            n_buf = (2 if s.overlap_comm and s.stage < 3 else 1) if (s.contiguous_gradients or self.offload) else 0
            self.buffers = [prog.malloc(s.reduce_bucket_size * self.wb, COMM) for _ in range(n_buf if s.stage < 3 else 0)]
        if s.stage == 1 and not self.boundary:  # ZeRO-1 reduces only at the boundary (2293-2295)
            self.held.append(prog.malloc(nbytes, GRADS))
            return
        limit = s.reduce_bucket_size
        if self.elements + k > limit:
            self.reduce()
        contiguous = s.contiguous_gradients or (self.offload and s.stage < 3)  # 277
        if k > limit or not contiguous:  # stays its own tensor (1447-1453; stage3.py:1626)
            self.own.append(prog.malloc(nbytes, GRADS))
        self.elements += k
        self.params.append(k)

    def reduce(self) -> None:
        prog, wb = self.prog, self.wb
        if not self.params:
            return
        flat = None
        if self.s.stage == 3 and (len(self.params) > 1 or self.ranks > 1):
            flat = prog.malloc(self.elements * wb, COMM)  # reduce_scatter_coalesced torch.cat
        elif self.s.stage < 3 and self.ranks > 1:
            flat = prog.malloc(self.elements * wb, COMM)  # allreduce_bucket flatten (2367)
        for k in self.params:
            part = -(-k // self.ranks) if self.s.stage == 3 else min(k, self.in_part)
            if self.offload and self.s.stage == 3:
                prog.transient(part * wb, TRANSIENT)  # grad_buffer.to(device) (2028-2036)
            if self.offload and self.boundary:
                prog.transient(min(part, NORM_CHUNK if self.s.stage == 3 else part) * NORM_BYTES, TRANSIENT)
                if wb != 4:
                    prog.transient(part * 4, TRANSIENT)  # fp32 copy for the host (1900 / 1457)
        if not self.offload and self.s.stage < 3 and self.grads is None:
            self.grads = prog.malloc(self.in_part * wb, GRADS)
        for key in [*self.own, *([flat] if flat else [])]:
            prog.free(key)
        self.elements, self.params, self.own = 0, [], []

    def epilogue(self) -> None:
        self.reduce()
        for key in [*(self.buffers or []), *([self.gathered] if self.gathered else [])]:
            self.prog.free(key)


def _partition(numels: list[int], ranks: int) -> tuple[int, int]:
    """(partition size, most elements of parameters touching one rank's partition)."""
    align = 2 * ranks  # nccl_start_alignment_factor * world size
    ps = -(-sum(numels) // align) * align // ranks
    best, start = 0, 0
    bounds = []
    for n in numels:
        bounds.append((start, start + n))
        start += n
    for r in range(ranks):
        lo, hi = r * ps, (r + 1) * ps
        best = max(best, sum(b - a for a, b in bounds if a < hi and b > lo))
    return ps, best


def program(tt: TrainTrace, cell, gpu) -> tuple[Outcome, int, int]:
    """(outcome, host bytes, bytes outside the allocator) of a ZeRO cell on one rank."""
    tt = half_trace(cell)
    s = dsconfig.settings(cell, dsconfig.hidden_size_of(models.resolve(cell.model).config))
    wb = 2 if HALF[cell.precision] != "fp32" else 4
    prog = Program()
    for _ in range(2):
        prog.malloc(plain.cublas_workspace(gpu), CONTEXT)
    keys = [prog.malloc(p.numel * wb, WEIGHTS) for p in tt.params]  # engine.py:1851-1862, 2094
    if tt.buffers_bytes:
        prog.malloc(tt.buffers_bytes, WEIGHTS)
    largest = max(p.numel for p in tt.params)
    host_init = sum(p.numel for p in tt.params) * 4 + largest * wb  # fp32 CPU model, cast one by one
    run = _stage3 if s.stage == 3 else _stage12
    host = run(prog, tt, keys, cell, s, wb)
    outside = estimate.CONTEXT_BYTES + estimate.DEEPSPEED_BYTES
    return prog.outcome(), estimate.HOST_BASE_BYTES + max(host_init, host), outside


def _steps(prog, tt, cell, make, step) -> None:
    """``plain.STEPS`` optimizer steps of ``grad_accum`` micro-steps each."""
    for n in range(plain.STEPS):
        held: list[int] | None = None
        for micro in range(cell.grad_accum):
            b = make(micro == cell.grad_accum - 1)
            prog.micro_step(tt, keep_grads=False, grad_sink=b)
            b.epilogue()
            mine = b.held + ([b.grads] if b.grads is not None else [])
            if held is None:
                held = mine
            else:  # added into the first micro-step's gradients (1032-1040), then dropped
                for key in mine:
                    prog.free(key)
        step(n, held or [])


def _stage12(prog, tt, keys, cell, s, wb) -> int:
    ranks, off = cell.gpus, s.offload_optimizer
    train = [p for p in tt.params if p.trainable]
    ps, in_part = _partition([p.numel for p in train], ranks)
    prog.malloc(ps * ranks * wb, WEIGHTS)  # flat bit16 buffer
    for p, key in zip(tt.params, keys):
        if p.trainable:
            prog.free(key)
    clone = prog.malloc(ps * wb, OPTIM if wb == 4 and not off else TRANSIENT)
    host = 0
    if off:
        prog.free(clone)
        big = max(p.numel for p in train)
        prog.malloc(big * wb, COMM)  # temp_grad_buffer_for_gpu_offload
        host = ps * (4 + wb + 4) + big * wb + (in_part * wb if cell.grad_accum > 1 else 0)
    elif wb != 4:
        prog.malloc(ps * 4, OPTIM)
        prog.free(clone)
    name = client_optimizer(cell)
    states: list[int] | None = None

    def step(n: int, held: list[int]) -> None:
        nonlocal states
        if off:
            return
        prog.transient(min(max(p.numel for p in train), in_part) * NORM_BYTES, TRANSIENT)
        flat = prog.malloc(ps * wb, GRADS)
        g32 = prog.malloc(ps * 4, GRADS) if wb != 4 else flat
        if g32 != flat:
            prog.free(flat)
        for key in held:
            prog.free(key)
        if states is None:
            states = [prog.malloc(b, OPTIM) for b in opt.state_tensors(name, flat_param(ps))]
        step_temps(prog, name, ps)
        prog.free(g32)

    _steps(prog, tt, cell, lambda boundary: _Buckets(prog, s, wb, ranks, in_part, off, boundary), step)
    if off:
        host += sum(opt.state_tensors(name, flat_param(ps))) + sum(opt.step_transient(name, [flat_param(ps)]))
    return host


def _stage3(prog, tt, keys, cell, s, wb) -> int:
    ranks, off_o, off_p = cell.gpus, s.offload_optimizer, s.offload_param
    part = lambda n: -(-n // ranks)  # noqa: E731  (_aligned_size // world size)
    parts = []
    for p, key in zip(tt.params, keys):  # Init(module=...): partition, then free the full tensor
        if not off_p:
            parts.append(prog.malloc(part(p.numel) * wb, WEIGHTS))
        prog.free(key)
    total = sum(part(p.numel) for p in tt.params)
    host = total * wb if off_p else 0  # pinned flat partitions (888-911)
    if not off_p:
        for key in parts:
            prog.free(key)
        empty_cache(prog)  # defragment()
        prog.malloc(total * wb, WEIGHTS)
    sgs, acc = [0], 0
    for p in tt.params:
        if p.trainable:
            if acc >= SUB_GROUP:
                sgs.append(0)
                acc = 0
            sgs[-1] += part(p.numel)
            acc += part(p.numel)
    ps = sum(sgs)
    for sg in sgs:
        if off_o:
            continue
        tmp = prog.malloc(sg * 4, TRANSIENT)
        prog.malloc(sg * 4, OPTIM)
        prog.free(tmp)
    if not off_o:
        prog.transient(max(sgs) * 4, TRANSIENT)  # initialize_optimizer_states gradient_buffer
    else:
        host += ps * 4 * 2 + ps * wb + max(sgs) * 4  # master, pinned grads, grad partitions
    if s.contiguous_gradients:
        prog.malloc(s.reduce_bucket_size * wb, COMM)
    if not off_o:
        prog.malloc(ps * wb, GRADS)
    gathers = ranks > 1 or off_p
    if gathers:
        persist = sum(p.numel for p in tt.params if p.numel <= s.param_persistence_threshold)
        prog.malloc(persist * wb, WEIGHTS)
        fwd, bwd = gathered_peaks(tt.params, s, cell.grad_ckpt)
    name = client_optimizer(cell)
    states: dict[int, list[int]] = {}

    def make(boundary: bool) -> _Buckets:
        b = _Buckets(prog, s, wb, ranks, 0, off_o, boundary)
        if gathers:  # gathered parameters: the forward's peak, then the backward's
            b.gathered = prog.malloc(fwd * wb, COMM)
            b.on_first = lambda: (prog.free(b.gathered), setattr(b, "gathered", prog.malloc(bwd * wb, COMM)))
        return b

    def step(n: int, held: list[int]) -> None:
        if off_o:
            return
        prog.transient(max(part(p.numel) for p in tt.params if p.trainable) * NORM_BYTES, TRANSIENT)
        for i, sg in enumerate(sgs):
            flat = prog.malloc(sg * wb, GRADS)
            g32 = prog.malloc(sg * 4, GRADS) if wb != 4 else flat
            if g32 != flat:
                prog.free(flat)
            if i not in states:
                states[i] = [prog.malloc(b, OPTIM) for b in opt.state_tensors(name, flat_param(sg))]
            step_temps(prog, name, sg)
            prog.free(g32)

    _steps(prog, tt, cell, make, step)
    if off_o:
        host += sum(opt.state_tensors(name, flat_param(ps))) + sum(opt.step_transient(name, [flat_param(max(sgs))]))
    return host
