"""What the sharded programs (ZeRO in ``zero``, FSDP2 in ``fsdp``) share.

- ``step_trace``: the micro-step as the recipe's ``trace_dtypes`` say (weights
  in the half dtype without autocast: DeepSpeed's fp16/bf16 modes, FSDP's
  ``MixedPrecisionPolicy``), in a loop that keeps only the loss (``loss_only``);
- the order modules are used in (``use_order``; blocks are ``bench.recipe.block_of``);
- a ``Program`` with one allocator pool per CUDA stream (``sharded_program``,
  ``on_stream``), ``empty_cache`` and multi-piece ``malloc``.
"""

from __future__ import annotations

import dataclasses

from bench.predict import events as tr, shapes
from bench.predict.events import TrainTrace
from bench.predict.program import Program
from bench.recipe import block_of


def loss_only(tt: TrainTrace) -> TrainTrace:
    """The micro-step of a loop that keeps only the loss (``loss = engine(**batch).loss``):
    the output's tensors (alive at the trace's end: logits, KV cache) are freed
    where the forward returns, not held until the next forward."""
    live: dict[int, tuple[int, str]] = {}
    for kind, key, n, tag in tt.trace.events:
        if kind == tr.ALLOC:
            live[key] = (n, tag)
        else:
            live.pop(key, None)
    drops = [(tr.FREE, k, n, tag) for k, (n, tag) in live.items() if tag not in ("input", "grad")]
    ev, end = tt.trace.events, tt.trace.forward_end
    trace = dataclasses.replace(tt.trace, events=ev[:end] + drops + ev[end:], forward_end=end + len(drops))
    return dataclasses.replace(tt, trace=trace)


def step_trace(cell, layers: int | None = None) -> tuple[TrainTrace, int]:
    """The sharded loop's micro-step (traced with the recipe's dtypes, only the loss kept), and
    the bytes every rank holds whole beside its shards (QLoRA's quantization state)."""
    from bench import recipe as recipes

    r = recipes.of(cell)
    tt = shapes.trace_train(shapes.shape_key(cell, layers))
    if not r.holds_output:  # every sharded loop (DeepSpeed, FSDP, the Trainer's) keeps only the loss
        tt = loss_only(tt)
    if r.quantized_base is None:
        return tt, 0
    from bench.dtypes import BYTES
    from bench.predict import quant

    params, replicated = quant.sharded_params(tt.params, BYTES[r.compute_dtype])
    return dataclasses.replace(tt, params=params), replicated


def use_order(params, ckpt: bool) -> tuple[list[str], int]:
    """Modules (ZeRO-3 fetches per module, ``iter_params(recurse=False)``) in the order one
    micro-step uses them: forward, then backward, where a checkpointed block first re-runs
    its forward; returns (order, number of forward uses)."""
    units: dict[str, str] = {}
    for p in params:
        units.setdefault(p.name.rsplit(".", 1)[0], block_of(p.name))
    runs: list[list[str]] = []
    for u in units:
        if runs and units[runs[-1][0]] == units[u]:
            runs[-1].append(u)
        else:
            runs.append([u])
    bwd = [v for run in reversed(runs) for v in (run if ckpt and units[run[0]] else []) + run[::-1]]
    return list(units) + bwd, len(units)


def sharded_program() -> Program:
    return Program()  # the allocator keeps a pool per stream


def on_stream(prog: Program, stream: int) -> None:
    """Make the following allocations on ``stream`` (0: the compute stream)."""
    prog.alloc.stream = stream


def empty_cache(prog: Program) -> None:
    """``torch.cuda.empty_cache()``: give back every wholly free segment."""
    prog.alloc.empty_cache()


def malloc(prog: Program, nbytes: int, tag: str) -> list[int]:
    """``[key]``, or ``[]`` for nothing."""
    return [prog.malloc(nbytes, tag)] if nbytes > 0 else []
