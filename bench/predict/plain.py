"""Training without sharding: a plain loop (strategy ``none``) or DDP.

The run ``bench run`` measures: the model built on the GPU parameter by
parameter, then optimizer steps of ``grad_accum`` micro-steps each; the first
micro-step of a step keeps its gradients as ``.grad``, later ones add into
them; ``optimizer.step()`` creates the states on the first step;
``zero_grad(set_to_none=True)`` frees the gradients. Two steps are replayed:
step 1 (no states yet, cold allocator cache) and step 2 (steady state).

The HF Trainer's loop (``loop: trainer``) differs where its recipe says: the
output is dropped as the forward returns (``loss_only``; with native AMP the
traced forward ends in accelerate's fp32 conversion of the output), and
``torch.cuda.empty_cache()`` runs once the model is built.

DDP (``gpus > 1``) adds its reducer's gradient buckets: a flat copy of all
gradients (``gradient_as_bucket_view=False``, torch's default), built at wrap
time.
"""

from __future__ import annotations

from bench import recipe as recipes
from bench.predict import optimizer as opt
from bench.predict.events import TrainTrace
from bench.predict.program import COMM, CONTEXT, OPTIM, TRANSIENT, WEIGHTS, Outcome, Program
from bench.predict.sharded import loss_only

STEPS = 2


def cublas_workspace(gpu) -> int:
    """cuBLAS workspace per handle, allocated through the caching allocator.

    torch uses 32 MiB on compute capability 9.x (Hopper) and ``:4096:8``
    (4 MiB x 2 + 16 KiB x 8) elsewhere (``CublasHandlePool.cpp``).
    """
    major = int(str(gpu.compute_capability).split(".")[0])
    return 32 << 20 if major >= 9 else (4096 * 1024 * 2 + 16 * 1024 * 8)


def load_weights(prog: Program, tt: TrainTrace, weight_bytes=None) -> None:
    for p in tt.params:
        prog.malloc(weight_bytes(p) if weight_bytes else p.nbytes, WEIGHTS)
    if tt.buffers_bytes:
        prog.malloc(tt.buffers_bytes, WEIGHTS)


def program(tt: TrainTrace, cell, gpu, weight_bytes=None) -> Outcome:
    """The plain (or DDP) run of a cell's traced micro-step ``tt``."""
    r = recipes.of(cell)
    if not r.holds_output:  # the Trainer's compute_loss returns the loss; the output is dropped
        tt = loss_only(tt)
    prog = Program()
    for _ in range(2):  # forward thread and autograd thread each hold a cuBLAS handle
        prog.malloc(cublas_workspace(gpu), CONTEXT)
    load_weights(prog, tt, weight_bytes)
    if r.empty_cache_before_training:
        prog.alloc.empty_cache()
    trainable = [p for p in tt.params if p.trainable]
    if r.engine == "ddp" and r.ranks > 1:
        prog.malloc(sum(p.nbytes for p in trainable), COMM)
    states: list[int] | None = None
    for _ in range(STEPS):
        grads: list[int] = []
        for micro in range(cell.grad_accum):
            grads += prog.micro_step(tt, keep_grads=micro == 0)
        if states is None:
            states = [prog.malloc(n, OPTIM) for p in trainable for n in opt.state_tensors(r.optimizer, p)]
        temps = [prog.malloc(n, TRANSIENT) for n in opt.step_transient(r.optimizer, trainable)]
        for t in temps:
            prog.free(t)
        for g in grads:
            prog.free(g)
    return prog.outcome()
