"""FSDP2 training on one of ``cell.gpus`` ranks.

FSDP2 (``fully_shard`` on every transformer block and on the root, as
``bench.methods.parallel.fsdp``), from ``torch/distributed/fsdp/_fully_shard``
(torch 2.13):

- sharded parameters: each parameter's dim-0 chunk padded to ``ceil(dim0 /
  ranks)`` rows in the dtype the model was built in (``_fsdp_param.py:228-310``:
  ``new_zeros``, then the original is dropped); pinned host memory with
  ``CPUOffloadPolicy``;
- unsharding a group (``_fsdp_param_group.py:372-470``): per parameter the
  shard cast to ``param_dtype`` (``all_gather_inputs``, ``_fsdp_param.py:834-908``,
  a device copy first when offloaded) copied into its unsharded storage
  (``init_all_gather_outputs``/``alloc_storage`` 616-636), through a flat
  all-gather output across ranks. A block is resharded after its forward, the
  root is not (``_fully_shard.py:246-283``); backward prefetches the next block
  while one runs (``pre_backward``), so two blocks are unsharded there;
- gradients: a group's unsharded gradients are held until its ``post_backward``
  (``_fsdp_param_group.py:588-720``), copied into a reduce-scatter input in
  ``reduce_dtype`` (``_fsdp_collectives.py:596-606``) and reduced into
  ``1/ranks`` of it on the reduce-scatter stream (612-632), which becomes the
  sharded ``.grad`` (cast to the parameter dtype if it differs, 696; copied to
  the host when offloaded, 706-725; added into the existing grad on later
  micro-steps, 735-740); one input is kept until the next group's reduce;
- the optimizer on the shards: ``torch.optim.AdamW()`` with default flags is
  foreach on DTensors (``torch/distributed/tensor/__init__.py:74`` adds DTensor
  to the foreach types), one temporary per shard.

What FSDP and ZeRO share (the half-dtype trace of a loop that keeps only the
loss, streams) is in ``sharded``; the blocks are ``bench.recipe.block_of``.
"""

from __future__ import annotations

from bench import overhead, recipe as recipes
from bench.dtypes import BYTES
from bench.predict import optimizer as opt, plain
from bench.predict.events import Param
from bench.predict.program import COMM, CONTEXT, GRADS, OPTIM, TRANSIENT, WEIGHTS, Outcome, Program
from bench.predict.sharded import malloc, on_stream, sharded_program, step_trace
from bench.recipe import block_of

# --- FSDP2 -------------------------------------------------------------------


def shard(p: Param, ranks: int, nbytes_per: int) -> Param:
    """The padded local shard of ``p`` (``_fsdp_param.py:292-310``)."""
    rows = p.shape[0] if p.shape else p.numel
    rest = p.numel // rows if rows else 1
    numel = -(-rows // ranks) * rest
    return Param(p.name, numel, numel * nbytes_per, p.trainable, (numel,))


def groups(params) -> dict[str, list[Param]]:
    """FSDP parameter groups in forward order: one per block, the rest in the root ('')."""
    out: dict[str, list[Param]] = {"": []}
    for p in params:
        out.setdefault(block_of(p.name), []).append(p)
    return out


class _Reducer:
    """Holds each group's unsharded gradients until the group is complete, then reduce-scatters."""

    def __init__(
        self,
        prog: Program,
        grps: dict[str, list[Param]],
        ranks: int,
        grad_b: int,
        reduce_b: int,
        orig_b: int,
        offload: bool,
        keep: bool,
        on_first,
    ) -> None:
        self.prog, self.ranks, self.grad_b, self.reduce_b = prog, ranks, grad_b, reduce_b
        self.orig_b, self.offload, self.keep, self.on_first = orig_b, offload, keep, on_first
        self.pending = {g: [p.numel for p in ps if p.trainable] for g, ps in grps.items()}
        self.order = [g for g in reversed(list(grps)) if g and self.pending[g]]
        self.held: dict[str, list[tuple[int, int]]] = {g: [] for g in grps}
        self.sharded: list[int] = []
        self.rs_input: int | None = None

    def __call__(self, nbytes: int) -> None:
        if self.on_first:
            self.on_first()
            self.on_first = None
        numel = nbytes // self.grad_b
        running = [g for g in self.order if self.pending[g]]  # blocks in backward order, not yet reduced
        group = next((g for g in [*running[:1], "", *running[1:]] if numel in self.pending[g]), None)
        if group is None:  # a shape no parameter has: count it to the running block
            group = running[0] if running else ""
        else:
            self.pending[group].remove(numel)
        self.held[group].append((self.prog.malloc(nbytes, GRADS), numel))  # kept until its group reduces
        if group and not self.pending[group]:
            self.reduce(group)

    def reduce(self, group: str) -> None:
        prog, held = self.prog, self.held[group]
        if not held:
            return
        numel = sum(n for _, n in held)
        rs_in = prog.malloc(numel * self.reduce_b, COMM)  # reduce_scatter_input (copy-in)
        for key, _ in held:
            prog.free(key)
        self.held[group] = []
        if self.rs_input is not None:  # the previous group's input, kept one group (644-660)
            prog.free(self.rs_input)
        self.rs_input = rs_in
        on_stream(prog, 1)  # reduce_scatter_stream
        local = -(-numel // self.ranks)
        out = prog.malloc(local * self.reduce_b, GRADS)
        if self.reduce_b != self.orig_b and not self.offload:
            cast = prog.malloc(local * self.orig_b, GRADS)
            prog.free(out)
            out = cast
        on_stream(prog, 0)
        if self.keep and not self.offload:
            self.sharded.append(out)
        else:  # copied to the host, or added into the existing sharded grad
            prog.free(out)

    def finish(self) -> None:
        self.reduce("")
        if self.rs_input is not None:
            self.prog.free(self.rs_input)  # released by the root's final callback (_fsdp_state.py:421-431)


def program(cell, gpu) -> tuple[Outcome, int, int]:
    """(outcome, host bytes, bytes outside the allocator) of an FSDP cell on one rank."""
    r = recipes.of(cell)
    ranks, offload = r.ranks, r.offload == "all"
    mixed = r.fsdp_param_dtype is not None  # MixedPrecisionPolicy(param_dtype=half, reduce_dtype=fp32)
    built32 = r.build_dtype != r.compute_dtype  # built in fp32, computed in the half dtype
    tt, replicated = step_trace(cell)
    orig = lambda p: BYTES[r.build_dtype] if built32 else p.nbytes // max(p.numel, 1)  # noqa: E731  as built
    comp_b = BYTES[r.compute_dtype]
    train = [p for p in tt.params if p.trainable]
    grad_b = train[0].nbytes // max(train[0].numel, 1)
    reduce_b = 4 if mixed else grad_b
    grps = groups(tt.params)
    shards = [shard(p, ranks, orig(p)) for p in tt.params]
    prog = sharded_program()
    for _ in range(2):
        prog.malloc(plain.cublas_workspace(gpu), CONTEXT)
    on_gpu = r.build_on_device  # else built on meta: a rank allocates its shards only
    for p, s in zip(tt.params, shards):
        full = malloc(prog, p.numel * orig(p), WEIGHTS) if on_gpu else []
        if not offload:
            prog.malloc(s.nbytes, WEIGHTS)
        for key in full:
            prog.free(key)
    if tt.buffers_bytes:
        prog.malloc(tt.buffers_bytes, WEIGHTS)
    if replicated:
        prog.malloc(replicated, WEIGHTS)  # QLoRA quantization state, whole on every rank
    unsharded = {g: sum(p.numel for p in ps) * comp_b for g, ps in grps.items()}
    block = max([v for g, v in unsharded.items() if g] or [0])
    cast = max(p.numel for p in tt.params) * ((comp_b if mixed else 0) + (orig(train[0]) if offload else 0))
    name = r.optimizer
    opt_params = [s for s in shards if s.trainable]
    states: list[int] | None = None
    for _ in range(plain.STEPS):
        kept: list[int] | None = None
        for _micro in range(cell.grad_accum):
            # the root stays unsharded, one block runs (across ranks also the last all-gather output)
            live = malloc(prog, unsharded[""], COMM) + [prog.malloc(block, COMM) for _ in range(1 + (ranks > 1))]
            prog.transient(cast, TRANSIENT)
            red = _Reducer(
                prog,
                grps,
                ranks,
                grad_b,
                reduce_b,
                orig(train[0]),
                offload,
                kept is None,
                lambda live=live: live.append(prog.malloc(block, COMM)),
            )  # backward prefetch
            prog.micro_step(tt, keep_grads=False, grad_sink=red)
            red.finish()
            for key in live:
                prog.free(key)
            kept = red.sharded if kept is None else kept
        if not offload:
            if states is None:
                states = [prog.malloc(n, OPTIM) for s in opt_params for n in opt.state_tensors(name, s)]
            for key in [prog.malloc(n, TRANSIENT) for n in opt.step_transient(name, opt_params)]:
                prog.free(key)
        for key in kept or []:  # zero_grad(set_to_none=True)
            prog.free(key)
    host = 0
    if offload:  # shards, gradients, optimizer states and step temporaries on the host
        host = (
            sum(s.nbytes for s in shards)
            + sum(s.nbytes for s in opt_params)
            + sum(n for s in opt_params for n in opt.state_tensors(name, s))
            + sum(opt.step_transient(name, opt_params))
        )
    return prog.outcome(), overhead.HOST_BASE_BYTES + host, r.outside_allocator_bytes
