"""DeepSpeed ZeRO-1/2/3 (with CPU offload) on one of ``cell.gpus`` ranks.

What ``deepspeed.initialize`` and its ZeRO optimizers allocate (deepspeed
0.19.8, under ``deepspeed/runtime/``). ``engine.py:1851-1862, 2094``: the fp32
CPU model is cast to the half dtype, then moved to the GPU; the micro-step runs
on half weights without autocast (``sharded.step_trace``).

- ZeRO-1/2 (``zero/stage_1_and_2.py``): trainable weights copied into one flat
  buffer (1390-1399, originals freed 889-894); the fp32 master
  ``partition.clone().to(fp32)`` (560-575); ``reduce_bucket_size`` buckets, two
  with ``overlap_comm``, made at each backward's first gradient, dropped by its
  epilogue (3256-3280, 924-932); the rank's gradients copied into
  ``grads_in_partition`` on the reduction stream (2189-2199), later micro-steps'
  added into the first (1032-1040); ``step()``: fp64 norms per gradient (2684),
  flatten, upcast to fp32 (3117-3118). Offload: pinned host master, bit16 buffer
  and fp32 gradient (560-575, 934-941), a device staging buffer of the largest
  parameter (653-660), fp64 norm and fp32 copy of each gradient (1873-1900).
- ZeRO-3 (``zero/stage3.py``, ``zero/partition_parameters.py``): parameters
  partitioned (1836-1843, ``free_param`` 329) and defragmented after
  ``empty_cache`` (``zero/utils.py:215-240``); fp32 master per sub-group
  (1170-1172); one bucket (782); a gradient-partition buffer in the model dtype
  (791); each reduce concatenates its bucket (``comm/coalesced_collectives.py:122``);
  ``step()`` flattens and upcasts one sub-group at a time (2686). Gathered
  parameters cost memory across ranks or when offloaded (one rank points at the
  partition, ``partition_parameters.py:61-106``): ``gathered_peaks``.

The client optimizer is ``torch.optim.AdamW()`` with default flags: foreach on
the device partition, one temporary the partition's size.
"""

from __future__ import annotations

import itertools
from typing import Any

from bench import dsconfig, overhead, recipe as recipes
from bench.dtypes import BYTES
from bench.predict import optimizer as opt, plain
from bench.predict.events import Param
from bench.predict.program import COMM, CONTEXT, GRADS, OPTIM, TRANSIENT, WEIGHTS, Outcome, Program
from bench.predict.sharded import empty_cache, malloc, on_stream, sharded_program, step_trace, use_order

NORM_BYTES = 8  # gradient norms in fp64 (zero/utils.py:59-63)
NORM_CHUNK = 250_000_000  # stage3.py:1960 _constant_buffered_norm2
SUB_GROUP = 10**9  # zero/config.py:182 sub_group_size


def flat_param(numel: int) -> Param:
    return Param("flat", numel, numel * 4, True, (numel,))


def gathered_peaks(params, s: dsconfig.ZeroSettings, ckpt: bool) -> tuple[int, int]:
    """Peak gathered elements in forward and in backward, steady state, without the
    always-gathered ``param_persistence_threshold`` ones (``parameter_offload.py:317-335``).
    ``partitioned_param_coordinator.py``: fetch a module, prefetch the next uses up to
    ``min(max_live - available, prefetch_bucket_size)`` more (353-470); keep a module used
    again within ``max_reuse_distance`` or already prefetched for it (629-657)."""
    numel: dict[str, int] = {}
    for p in params:
        if p.numel > s.param_persistence_threshold:
            numel[p.name.rsplit(".", 1)[0]] = numel.get(p.name.rsplit(".", 1)[0], 0) + p.numel
    uses, n_fwd = use_order(params, ckpt)
    order = [u for u in uses if u in numel]
    n_fwd = sum(1 for u in uses[:n_fwd] if u in numel)
    live: dict[str, int] = {}
    scanned, peaks = 0, [0, 0]
    for i, u in enumerate(order):
        live[u] = numel[u]
        scanned, fetched = max(scanned, i + 1), 0
        budget = min(s.max_live_parameters - sum(live.values()), s.prefetch_bucket_size)
        while scanned < len(order) and fetched < budget:
            if order[scanned] not in live:
                live[order[scanned]] = numel[order[scanned]]
                fetched += numel[order[scanned]]
            scanned += 1
        peaks[i >= n_fwd] = max(peaks[i >= n_fwd], sum(live.values()))
        dist, keep = 0, False
        for j in range(i + 1, len(order)):
            if order[j] == u:
                keep = j < scanned or dist < s.max_reuse_distance
                break
            dist += numel[order[j]]
            if dist >= s.max_reuse_distance and j >= scanned:
                break
        if not keep:
            live.pop(u)
    return peaks[0], peaks[1]


class _Buckets:
    """The gradient hook of one micro-step: bucket copies, reduces, partition copies."""

    def __init__(self, prog: Program, s, wb: int, ranks: int, in_part: int, offload: bool, boundary: bool):
        self.prog, self.s, self.wb, self.ranks = prog, s, wb, ranks
        self.in_part, self.offload, self.boundary = in_part, offload, boundary
        self.buffers: list[int] | None = None
        self.grads: int | None = None  # grads_in_partition (ZeRO-2)
        self.held: list[int] = []  # per-parameter grads between ZeRO-1 boundaries
        self.elements = 0
        self.params: list[int] = []
        self.own: list[int] = []
        self.gathered: list[int] = []
        self.on_first: Any = None

    def __call__(self, nbytes: int) -> None:
        prog, s, k = self.prog, self.s, nbytes // self.wb
        contiguous = s.contiguous_gradients or (self.offload and s.stage < 3)  # stage_1_and_2.py:277
        if self.buffers is None:
            if self.on_first:
                self.on_first()
            n = (2 if s.overlap_comm else 1) if contiguous and s.stage < 3 else 0  # stage 3: one, made at init
            self.buffers = [prog.malloc(s.reduce_bucket_size * self.wb, COMM) for _ in range(n)]
        if s.stage == 1 and not self.boundary:  # ZeRO-1 reduces at the boundary only (2293-2295)
            self.held.append(prog.malloc(nbytes, GRADS))
            return
        if self.elements + k > s.reduce_bucket_size:
            self.reduce()
        if k > s.reduce_bucket_size or not contiguous:  # stays its own tensor (1447-1453; stage3.py:1626)
            self.own.append(prog.malloc(nbytes, GRADS))
        self.elements += k
        self.params.append(k)

    def reduce(self) -> None:
        prog, wb, z3 = self.prog, self.wb, self.s.stage == 3
        if not self.params:
            return
        on_stream(prog, 1 if self.s.overlap_comm else 0)  # reduction_stream / reduce_and_partition_stream
        # stage 3: reduce_scatter_coalesced's torch.cat; 1/2: allreduce_bucket's flatten (2367)
        flat = malloc(prog, self.elements * wb, COMM) if self.ranks > 1 or (z3 and len(self.params) > 1) else []
        for k in self.params:
            part = -(-k // self.ranks) if z3 else min(k, self.in_part)
            if self.offload and z3:
                prog.transient(part * wb, TRANSIENT)  # grad_buffer.to(device) (stage3.py:2028-2036)
            if self.offload and self.boundary:
                prog.transient(min(part, NORM_CHUNK if z3 else part) * NORM_BYTES, TRANSIENT)
                prog.transient(part * 4 if wb != 4 else 0, TRANSIENT)  # fp32 copy for the host (1900; 1457)
        if not self.offload and not z3 and self.grads is None:
            self.grads = prog.malloc(self.in_part * wb, GRADS)
        for key in self.own + flat:
            prog.free(key)
        on_stream(prog, 0)
        self.elements, self.params, self.own = 0, [], []

    def epilogue(self) -> None:
        self.reduce()
        for key in (self.buffers or []) + self.gathered:
            self.prog.free(key)


def _partition(numels: list[int], ranks: int) -> tuple[int, int]:
    """(partition size, most elements of parameters touching one rank's partition)."""
    ps = -(-sum(numels) // (2 * ranks)) * 2  # aligned to nccl_start_alignment_factor * world size
    ends = list(itertools.accumulate(numels))
    touch = lambda r: sum(n for n, e in zip(numels, ends) if e - n < (r + 1) * ps and e > r * ps)  # noqa: E731
    return ps, max(touch(r) for r in range(ranks))


def program(cell, gpu) -> tuple[Outcome, int, int]:
    """(outcome, host bytes, bytes outside the allocator) of a ZeRO cell on one rank."""
    r = recipes.of(cell)
    tt, replicated = step_trace(cell)
    s = r.zero
    wb = BYTES[r.compute_dtype]
    prog = sharded_program()
    for _ in range(2):
        prog.malloc(plain.cublas_workspace(gpu), CONTEXT)
    if r.zero_init:  # each parameter made whole under zero.Init, then partitioned (_stage3)
        keys: list[int | None] = [None] * len(tt.params)
        host_init = 0
    else:  # the whole model cast and moved to the GPU by deepspeed.initialize (engine.py:1851-1862, 2094)
        keys = [prog.malloc(p.numel * wb, WEIGHTS) for p in tt.params]
        host_init = sum(p.numel for p in tt.params) * 4 + max(p.numel for p in tt.params) * wb  # fp32 model, cast
    if tt.buffers_bytes:
        prog.malloc(tt.buffers_bytes, WEIGHTS)
    if replicated:
        prog.malloc(replicated, WEIGHTS)  # QLoRA quantization state, whole on every rank
    if s.stage == 3:  # type: ignore[union-attr]
        # under zero.Init a parameter keeps the dtype it was made in (LoRA adapters added after
        # the build stay fp32); deepspeed.initialize casts a whole model to the half dtype
        eb = (lambda p: p.nbytes // max(p.numel, 1)) if r.zero_init else (lambda p: wb)  # noqa: E731
        host = _stage3(prog, tt, keys, cell, s, wb, r.optimizer, eb)
    else:
        host = _stage12(prog, tt, keys, cell, s, wb, r.optimizer)
    return prog.outcome(), overhead.HOST_BASE_BYTES + max(host_init, host), r.outside_allocator_bytes


def _steps(prog, tt, cell, make, step) -> None:
    """``plain.STEPS`` optimizer steps of ``grad_accum`` micro-steps each."""
    for _ in range(plain.STEPS):
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
        step(held or [])


def _master(prog: Program, numel: int, wb: int) -> None:
    """fp32 master on the device after a temporary of ``wb`` bytes per element:
    ``bit16.clone().to(fp32)`` (ZeRO-1/2) or ``bit16.to(fp32).clone()`` (ZeRO-3)."""
    tmp = prog.malloc(numel * wb, TRANSIENT)
    prog.malloc(numel * 4, OPTIM)
    prog.free(tmp)


def _step(prog: Program, name: str, numel: int, wb: int, held: list[int], states: dict, i: int) -> None:
    """One partition's update: flatten the gradients, upcast to fp32, step, drop."""
    flat = prog.malloc(numel * wb, GRADS)
    g32 = prog.malloc(numel * 4, GRADS) if wb != 4 else flat
    if g32 != flat:
        prog.free(flat)
    for key in held:
        prog.free(key)
    if i not in states:  # created by the first step
        states[i] = [prog.malloc(b, OPTIM) for b in opt.state_tensors(name, flat_param(numel))]
    for key in [prog.malloc(n, TRANSIENT) for n in opt.step_transient(name, [flat_param(numel)])]:
        prog.free(key)
    prog.free(g32)


def _host_optimizer(name: str, numel: int, largest: int) -> int:
    return sum(opt.state_tensors(name, flat_param(numel))) + sum(opt.step_transient(name, [flat_param(largest)]))


def _stage12(prog, tt, keys, cell, s, wb, name) -> int:
    ranks, off = cell.gpus, s.offload_optimizer
    train = [p for p in tt.params if p.trainable]
    ps, in_part = _partition([p.numel for p in train], ranks)
    # the flat bit16 buffer replaces the trainable weights (444-528): after empty_cache(), it is
    # made on the GPU beside them when the card's free memory holds it, else the weights go to
    # the host first, the buffer is flattened there and moved to the GPU alone
    flat_bytes = ps * ranks * wb
    empty_cache(prog)
    beside = prog.alloc.room_for(flat_bytes)
    moved = 0
    if not beside:
        for p, key in zip(tt.params, keys):
            if p.trainable:
                prog.free(key)
                moved += p.numel * wb  # param.cpu_data, then the flat copy on the host
        empty_cache(prog)
    prog.malloc(flat_bytes, WEIGHTS)
    for p, key in zip(tt.params, keys):
        if p.trainable and beside:
            prog.free(key)
    big = max(p.numel for p in train)
    if off:  # the clone is copied to the pinned host master (560-575)
        prog.transient(ps * wb, TRANSIENT)
        prog.malloc(big * wb, COMM)  # temp_grad_buffer_for_gpu_offload
    elif wb != 4:
        _master(prog, ps, wb)
    else:
        prog.malloc(ps * 4, OPTIM)  # the fp32 clone is the master
    states: dict = {}

    def step(held: list[int]) -> None:
        if not off:
            prog.transient(min(big, in_part) * NORM_BYTES, TRANSIENT)  # get_grad_norm_direct (2684)
            _step(prog, name, ps, wb, held, states, 0)

    _steps(prog, tt, cell, lambda boundary: _Buckets(prog, s, wb, ranks, in_part, off, boundary), step)
    if not off:
        return 2 * moved
    # pinned fp32 master, bit16 buffer and fp32 gradient; staging buffer; accumulated grads (1824)
    host = ps * (4 + wb + 4) + big * wb + (in_part * wb if cell.grad_accum > 1 else 0)
    return max(host + _host_optimizer(name, ps, ps), 2 * moved)


def _stage3(prog, tt, keys, cell, s, wb, name, eb) -> int:
    ranks, off_o, off_p = cell.gpus, s.offload_optimizer, s.offload_param
    part = lambda n: -(-n // ranks)  # noqa: E731  _aligned_size // world size
    parts = []
    for p, key in zip(tt.params, keys):  # Init: partition, then free the full tensor
        if key is None:  # zero.Init: the whole parameter exists only while its module is built
            key = prog.malloc(p.numel * eb(p), WEIGHTS)
        parts += [] if off_p else [prog.malloc(part(p.numel) * eb(p), WEIGHTS)]
        prog.free(key)
    total_bytes = sum(part(p.numel) * eb(p) for p in tt.params)
    if not off_p:  # defragment(): partitions to the host, empty_cache, one device buffer
        for key in parts:
            prog.free(key)
        empty_cache(prog)
        prog.malloc(total_bytes, WEIGHTS)
    sgs = [0]  # _create_fp16_sub_groups
    for p in tt.params:
        if p.trainable:
            sgs[-1] += part(p.numel)
            if sgs[-1] >= SUB_GROUP:
                sgs.append(0)
    sgs = [n for n in sgs if n] or [0]
    ps = sum(sgs)
    host = total_bytes if off_p else 0  # pinned flat partitions (888-911)
    if off_o:  # master, pinned fp32 grads, grad partitions; gradient_buffer (1306)
        host += ps * 4 * 2 + ps * wb + max(sgs) * 4
    else:
        for sg in sgs:
            _master(prog, sg, 4)
        prog.transient(max(sgs) * 4, TRANSIENT)  # initialize_optimizer_states gradient_buffer (1306)
    if s.contiguous_gradients:
        prog.malloc(s.reduce_bucket_size * wb, COMM)
    if not off_o:
        prog.malloc(ps * wb, GRADS)  # grad_partitions_flat_buffer (791)
    gathers = ranks > 1 or off_p  # else a gathered parameter is its partition (partition_parameters.py:61-106)
    if gathers:
        malloc(prog, sum(p.numel * eb(p) for p in tt.params if p.numel <= s.param_persistence_threshold), WEIGHTS)
        fwd, bwd = gathered_peaks(tt.params, s, cell.grad_ckpt)
    states: dict = {}

    def make(boundary: bool) -> _Buckets:
        b = _Buckets(prog, s, wb, ranks, 0, off_o, boundary)
        if gathers:  # the gathered parameters: the forward's peak, then the backward's
            low = min(fwd, bwd)
            b.gathered = malloc(prog, low * wb, COMM) + malloc(prog, (fwd - low) * wb, COMM)

            def backward() -> None:
                if fwd > low:
                    prog.free(b.gathered.pop())
                b.gathered += malloc(prog, (bwd - low) * wb, COMM)

            b.on_first = backward
        return b

    def step(held: list[int]) -> None:
        if not off_o:
            prog.transient(max(part(p.numel) for p in tt.params if p.trainable) * NORM_BYTES, TRANSIENT)
            for i, sg in enumerate(sgs):
                _step(prog, name, sg, wb, [], states, i)

    _steps(prog, tt, cell, make, step)
    return host + (_host_optimizer(name, ps, max(sgs)) if off_o else 0)
