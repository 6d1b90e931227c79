"""Predicted time of one optimizer step, as parts that add up.

Built on the traced micro-step (``op_cost``): every kernel is timed with a
roofline on the target card (``speed_figures``),
``max(FLOPs / achieved FLOP/s, bytes / achieved HBM bandwidth) + kernel cost``,
and the host's time to dispatch the same ops is counted beside it; the GPU
runs asynchronously, so each phase (forward, backward with its
recomputation) takes the longer of the two, and the part of the host's time
the GPU could not hide is reported as ``host_overhead``.

Around the micro-steps (``grad_accum`` of them):

- ``optimizer``: a memory-bound pass over the trainable elements. Bytes per
  element follow the optimizer's kernels: fused AdamW reads the parameter,
  gradient and two states and writes three (7 tensor passes); foreach AdamW
  runs a dozen list ops (21 passes, plus host dispatch per op); SGD 3; 8-bit
  AdamW one-byte states, one kernel per tensor; fp16's ``GradScaler`` adds an
  unscale and an inf check. Gradient accumulation adds one add per gradient
  per extra micro-step.
- ``communication``: ZeRO and FSDP collectives over NVLink (PCIe without it),
  ``(n-1)/n`` of the bytes per rank, hidden behind ``comm_overlap`` of the
  backward; with one GPU they are device copies (counted in HBM bytes).
  DeepSpeed's host work and DTensor dispatch of FSDP2's optimizer are host
  time here too. Without offload DeepSpeed's ops are counted from its code
  (``zero_host_seconds``: the gradient hook's copies, bucket reductions, the
  step's per-gradient norm and overflow scan) and priced as dispatched ops,
  plus Python bookkeeping per tensor and, for ZeRO-3, per module fetch and
  release; with CPU offload the per-tensor cost is its own figure
  (``deepspeed_param_seconds``: pinned copies, norms and overflow checks that
  synchronise per tensor).
- ``offload``: gradients to the host and parameters back over PCIe, and the
  optimizer on the CPU (DeepSpeed's CPU Adam, or torch's AdamW for FSDP2);
  these do not overlap with the GPU's work in DeepSpeed's ZeRO-2/3 step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench import recipe as recipes
from bench.dtypes import BYTES
from bench.predict.op_cost import OpCounts
from bench.predict.speed_figures import Figures

PARTS = ("forward", "backward", "host_overhead", "optimizer", "communication", "offload")


@dataclass(frozen=True)
class StepTime:
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)
    """Seconds by ``PARTS``; they add up to ``seconds``."""


def phase_seconds(counts: OpCounts, phase: str, f: Figures) -> tuple[float, float]:
    """(GPU seconds, host seconds) of one phase of a micro-step."""
    gpu = 0.0
    kernels = 0.0
    for (ph, kind, dtype, flops, sizes), n in counts.kernels.items():
        if ph != phase:
            continue
        mem = sum(sizes) / f.hbm_bytes_per_second
        if kind == "matmul":
            rate = f.matmul_flops_per_second.get(dtype) or f.matmul_flops_per_second["float32"]
        elif kind == "attention":
            rate = f.attention_flops_per_second.get(dtype) or f.attention_flops_per_second["float32"]
        else:
            rate = 0.0
        compute = flops / rate if rate else 0.0
        gpu += n * (max(compute, mem) + f.kernel_seconds)
        kernels += n
    per_op = {"forward": f.forward_op_seconds, "backward": f.backward_op_seconds}.get(phase, f.recompute_op_seconds)
    host = kernels * per_op + counts.views.get(phase, 0.0) * f.view_op_seconds
    return gpu, host


def host_exposed(gpu: float, host: float, f: Figures) -> float:
    """Seconds a phase takes beyond its GPU work: ``max + (1 - overlap) * min - gpu``."""
    return max(gpu, host) + (1 - f.async_overlap) * min(gpu, host) - gpu


def _elements(r: recipes.Recipe) -> tuple[int, int, int]:
    """Bytes per trainable element in a plain loop: (parameter, gradient, optimizer state),
    all in the trained weights' dtype (the adapters', or the build dtype of full tuning)."""
    n = BYTES[r.adapters.dtype if r.adapters else r.build_dtype]
    return n, n, n


def optimizer_seconds(
    name: str, elements: float, tensors: float, p: int, g: int, s: int, f: Figures, sharded_dispatch: float = 0.0
) -> float:
    """One optimizer step over ``elements`` trainable elements in ``tensors`` tensors on the GPU.

    ``sharded_dispatch``: host seconds per tensor per list op (DTensor shards under FSDP2).
    """
    hbm = f.hbm_bytes_per_second
    fused = 2 * p + g + 4 * s
    if name == "adamw-fused":
        return elements * fused / hbm + f.kernel_seconds * max(1.0, tensors / 8) + f.forward_op_seconds
    if name == "adamw-foreach":
        list_ops = 12
        launches = list_ops * max(1.0, tensors / 24)
        host = list_ops * (f.forward_op_seconds + tensors * sharded_dispatch)
        return max(3 * elements * fused / hbm + launches * f.kernel_seconds, host)
    if name == "sgd":
        return max(
            elements * (2 * p + g) / hbm + f.kernel_seconds * max(1.0, tensors / 24),
            f.forward_op_seconds * (1 + tensors * sharded_dispatch / f.forward_op_seconds),
        )
    if name == "adamw-8bit":
        return max(elements * (2 * p + g + 4) / hbm + tensors * f.kernel_seconds, tensors * f.forward_op_seconds)
    if name == "adafactor":  # per-tensor Python loop, factored second moment
        return max(elements * (8 * p + g) / hbm + 15 * tensors * f.kernel_seconds, 15 * tensors * f.forward_op_seconds)
    raise ValueError(f"no step-time model for optimizer {name!r}")


ZERO_STEP_OPS_PER_TENSOR = 2 + 7
"""DeepSpeed's step, per gradient of the partition: the fp64 norm (``double()``, ``vector_norm``)
and the overflow scan (``float``, ``isnan``, ``isinf``, ``logical_or``, ``float``, ``max``, ``+=``)."""


def zero_host_seconds(
    stage: int, tensors: float, modules: float, ga: int, passes: int, buckets: float, scan: bool, f: Figures
) -> float:
    """Host seconds DeepSpeed ZeRO adds to one optimizer step without offload.

    What the engine runs per trainable tensor (``stage_1_and_2.py``, ``stage3.py``), each op
    dispatched from Python under ``no_grad``: per micro-step the gradient hook copies the gradient
    into the reduction bucket and, once the bucket is reduced, into the rank's partition (ZeRO-3
    also upcasts it to the fp32 partition), with some seven views; micro-steps after the first add
    each gradient to the one kept; per bucket one average, one collective and one copy back. At the
    step, the fp64 norm of each gradient and, with ``scan`` (fp16, and bf16 by DeepSpeed's default
    ``check_grad_overflow``), its overflow scan (``ZERO_STEP_OPS_PER_TENSOR`` ops in all), and two
    views rebinding the updated weights. Beside those ops,
    ``zero_param_seconds`` of Python bookkeeping per tensor per micro-step (hook state, bucket and
    partition offsets); ZeRO-3 adds ``zero3_module_seconds`` per module per pass (forward, each
    checkpoint recomputation, backward): its four module hooks, two autograd functions and the
    parameter coordinator's fetch and release.
    """
    op, view = f.no_grad_forward_op_seconds, f.view_op_seconds
    per_tensor = (3 if stage == 3 else 2) * op + 7 * view + f.zero_param_seconds
    micro = tensors * per_tensor + max(1, math.ceil(buckets)) * 3 * op
    if stage == 3:
        micro += passes * modules * f.zero3_module_seconds
    step = tensors * ((ZERO_STEP_OPS_PER_TENSOR if scan else 2) * op + 2 * view)
    return ga * micro + (ga - 1) * tensors * op + step


def train_step(cell, counts: OpCounts, f: Figures) -> StepTime:
    """One optimizer step of a training cell: ``grad_accum`` micro-steps and what follows them."""
    gpu_f, host_f = phase_seconds(counts, "forward", f)
    gpu_b, host_b = phase_seconds(counts, "backward", f)
    gpu_r, host_r = phase_seconds(counts, "recompute", f)
    gpu_b, host_b = gpu_b + gpu_r, host_b + host_r
    ga, n_gpus = cell.grad_accum, max(1, cell.gpus)
    elements, tensors = counts.params["trainable"], counts.params["trainable_tensors"]
    r = recipes.of(cell)
    p, g, s = _elements(r)
    hbm, pcie, link = f.hbm_bytes_per_second, f.host_link_bytes_per_second, f.gpu_link_bytes_per_second
    half = BYTES[r.compute_dtype]
    parts = dict.fromkeys(PARTS, 0.0)
    parts["forward"] = ga * gpu_f
    parts["backward"] = ga * gpu_b + (ga - 1) * elements * 3 * g / hbm  # accumulation adds
    parts["host_overhead"] = ga * (host_exposed(gpu_f, host_f, f) + host_exposed(gpu_b, host_b, f))
    shard = elements / n_gpus
    ring = (n_gpus - 1) / n_gpus
    comm = 0.0  # per step, over the link
    offload = r.offload
    if r.deepspeed:
        stage = r.zero.stage if r.zero else 2
        gathers = 2 + (1 if cell.grad_ckpt else 0)  # ZeRO-3 fetches each module per use
        copies = elements * half * 2  # gradients into the buckets, out to the partition
        if stage == 3:
            copies += elements * half * gathers  # all-gathers of the partitions (device copies on one rank)
            comm += ga * (elements * half * gathers + elements * half) * ring
        else:
            comm += (elements * half * (ga if stage == 2 else 1) + elements * half) * ring
        parts["communication"] += ga * copies / hbm
        # step: upcast the gradient partition, fp64 norms, master -> half copy
        parts["optimizer"] += shard * (half + 4 + half + 8 + 4 + half) / hbm
        if offload == "none":
            bucket = r.zero.reduce_bucket_size if r.zero else 5e8
            parts["communication"] += zero_host_seconds(
                stage, tensors, counts.params.get("modules", 0.0), ga, gathers, elements / bucket, half < 4, f
            )
            # the step's checks: overflow scan of the half gradients, fp64 norm read, unscale
            parts["optimizer"] += shard * ((half + 26 if half < 4 else 0) + 8 + 8) / hbm
            parts["optimizer"] += optimizer_seconds(r.optimizer, shard, 1, 4, 4, 4, f)
        else:
            parts["communication"] += ga * tensors * f.deepspeed_param_seconds * (3 if stage == 3 else 1)
            parts["offload"] += ga * shard * half / pcie  # gradients to the pinned host buffer
            parts["offload"] += shard / f.cpu_adam_params_per_second + shard * half / pcie
            if offload == "all" and stage == 3:
                parts["offload"] += ga * elements * half * gathers / pcie
    elif r.fsdp:
        gathers = 2  # forward, and again for the backward (reshard after forward)
        parts["communication"] += ga * elements * (4 + 2) * (gathers + 1) / hbm  # cast-gather, reduce-scatter
        comm += ga * elements * (half * gathers + 4) * ring
        if offload == "all":
            parts["offload"] += ga * elements * 4 * (gathers + 1) / pcie
            parts["offload"] += shard / f.cpu_torch_adam_params_per_second
        else:
            parts["optimizer"] += optimizer_seconds(
                r.optimizer, shard, tensors, 4, 4, 4, f, sharded_dispatch=f.dtensor_op_seconds
            )
    else:
        if r.engine == "ddp":
            comm += ga * 2 * elements * g * ring
        parts["optimizer"] += optimizer_seconds(r.optimizer, elements, tensors, p, g, s, f)
        if r.loss_scaling:  # GradScaler: unscale + inf check
            parts["optimizer"] += elements * 3 * g / hbm + 2 * f.forward_op_seconds
    if comm and n_gpus > 1:
        parts["communication"] += max(0.0, comm / link - f.comm_overlap * parts["backward"])
    return StepTime(sum(parts.values()), parts)
