"""What one card and its host achieve, as the step-time model uses it.

The GPU catalog (``bench/data/gpus.json``) holds each card's datasheet peaks
(``tflops``, ``bandwidth_gbps``, ``pcie_gbps``, ``nvlink_gbps``) and one
``speed`` block shared by every card: the fraction of each peak that PyTorch
kernels reach (matmuls per dtype, fused attention, HBM streaming, PCIe and
NVLink transfers), the fixed cost of a kernel, and host-side costs (dispatching
an op from Python or from the autograd engine, DeepSpeed's bookkeeping per
parameter with and without CPU offload and ZeRO-3's per module, DTensor
dispatch under FSDP2, DeepSpeed's CPU Adam, ``generate()``'s
per-token bookkeeping). Those fractions and costs were fitted once, by
``scripts/fit_speed.py``, on the H200 rows of ``shared/measurements`` and
``results/h200-2026-11-28`` (the block's ``fitted_on`` says so); another card
gets the same fractions of its own peaks, which is an assumption, not a
measurement.

A calibration profile (``bench calibrate``'s output, ``bench.calibration``: a
JSON object with any of the ``Figures`` field names) replaces the catalog's
figures for the card it was measured on (cells on other cards keep the
catalog's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from bench import gpus
from bench.errors import UserError

_DTYPE_KEYS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True, kw_only=True)
class Figures:
    matmul_flops_per_second: dict
    """Achieved matmul FLOP/s by compute dtype (``float32`` without TF32, ``float16``, ``bfloat16``)."""
    attention_flops_per_second: dict
    """Achieved fused-attention (flash / memory-efficient) FLOP/s by dtype."""
    hbm_bytes_per_second: float
    kernel_seconds: float
    """Fixed cost of one kernel on the GPU (launch latency, tail of a small grid)."""
    async_overlap: float
    """How much of the shorter of host dispatch and GPU work the longer hides: a phase takes
    ``max + (1 - async_overlap) * min`` (1: fully asynchronous; less where syncs drain the queue)."""
    forward_op_seconds: float
    """Host time to dispatch one kernel op from Python (module forward, autograd recording)."""
    no_grad_forward_op_seconds: float
    """The same under ``torch.no_grad`` (``generate()``): no graph is recorded."""
    backward_op_seconds: float
    """Host time per kernel op dispatched by the autograd engine (C++)."""
    recompute_op_seconds: float
    """Host time per kernel op of a checkpointed block's recomputation (Python, plus the
    checkpoint's saved-tensor hooks)."""
    view_op_seconds: float
    """Host time of an op that launches no kernel (views, ``empty``)."""
    deepspeed_param_seconds: float
    """DeepSpeed ZeRO with CPU offload: host work per trainable tensor per micro-step (gradient hooks,
    per-tensor pinned copies, norms and overflow checks that synchronise with the GPU)."""
    zero_param_seconds: float
    """DeepSpeed ZeRO without offload: Python bookkeeping per trainable tensor per micro-step in the
    gradient hook and bucket/partition code, beside the ops it dispatches (``step_time.zero_host_seconds``)."""
    zero3_module_seconds: float
    """DeepSpeed ZeRO-3: host time per module per pass (forward, recomputation, backward): its module
    hooks, autograd functions and the parameter coordinator's fetch and release."""
    dtensor_op_seconds: float
    """FSDP2: host time per DTensor op (the optimizer's foreach ops run per shard)."""
    host_link_bytes_per_second: float
    gpu_link_bytes_per_second: float
    comm_overlap: float
    """Fraction of the backward that gradient communication can hide behind."""
    cpu_adam_params_per_second: float
    """DeepSpeed's CPU Adam (offloaded optimizer), parameters updated per second on the host."""
    cpu_torch_adam_params_per_second: float
    """``torch.optim.AdamW`` on CPU tensors (FSDP2 with CPU offload)."""
    generate_token_seconds: float
    """``generate()``'s host work per new token outside the model (logits processors, stopping, concat)."""
    source: str = ""


def figures(gpu: gpus.GPU, calibration: dict | None = None, block: dict | None = None) -> Figures:
    """The figures of ``gpu`` from the catalog, replaced by ``calibration``'s where given.

    ``block``: a ``speed`` block to use instead of the catalog's (``scripts/fit_speed.py``)."""
    s = block or gpus.speed_figures()
    host = s["host"]
    # generation's host costs as measured ratios to the fitted op cost (scripts/measure_host_ratios.py)
    no_grad_op = host["forward_op_seconds"] * host["no_grad_op_fraction"]
    mm = {dt: gpu.tflops.get(key) or gpu.tflops["fp32"] for dt, key in _DTYPE_KEYS.items()}
    link = gpu.nvlink_gbps / 2 if gpu.nvlink_gbps else gpu.pcie_gbps  # NVLink totals count both directions
    f = Figures(
        matmul_flops_per_second={dt: 1e12 * v * s["matmul_fraction"][_DTYPE_KEYS[dt]] for dt, v in mm.items()},
        attention_flops_per_second={dt: 1e12 * v * s["attention_fraction"] for dt, v in mm.items()},
        hbm_bytes_per_second=1e9 * gpu.bandwidth_gbps * s["hbm_fraction"],
        kernel_seconds=s["kernel_seconds"],
        async_overlap=s["async_overlap"],
        forward_op_seconds=host["forward_op_seconds"],
        no_grad_forward_op_seconds=no_grad_op,
        backward_op_seconds=host["backward_op_seconds"],
        view_op_seconds=host["view_op_seconds"],
        recompute_op_seconds=host["recompute_op_seconds"],
        deepspeed_param_seconds=host["deepspeed_param_seconds"],
        zero_param_seconds=host["zero_param_seconds"],
        zero3_module_seconds=host["zero3_module_seconds"],
        dtensor_op_seconds=host["dtensor_op_seconds"],
        host_link_bytes_per_second=1e9 * gpu.pcie_gbps * s["pcie_fraction"],
        gpu_link_bytes_per_second=1e9 * link * s["link_fraction"],
        comm_overlap=s["comm_overlap"],
        cpu_adam_params_per_second=host["cpu_adam_params_per_second"],
        cpu_torch_adam_params_per_second=host["cpu_torch_adam_params_per_second"],
        generate_token_seconds=host["generate_token_ops"] * no_grad_op,
        source=f"catalog ({s['fitted_on']})",
    )
    if calibration and _measured_on(calibration, gpu):
        f = apply(f, calibration)
    return f


def _measured_on(calibration: dict, gpu: gpus.GPU) -> bool:
    """A profile applies to the card it was measured on (or to any card when its name is not one)."""
    card = gpus.from_nvml_name(str(calibration.get("gpu", "")))
    return card is None or card.name == gpu.name


def apply(f: Figures, calibration: dict) -> Figures:
    """``f`` with the figures a calibration profile measured."""
    names = {x.name for x in fields(Figures)}
    unknown = sorted(set(calibration) - names - {"gpu", "measured_at", "environment"})
    if unknown:
        raise UserError(f"calibration: unknown figure {unknown[0]!r}; allowed: {', '.join(sorted(names))}")
    changes: dict[str, Any] = {}
    for k, v in calibration.items():
        if k not in names:
            continue
        changes[k] = {**getattr(f, k), **v} if isinstance(getattr(f, k), dict) else v
    return replace(f, **changes, source=f"calibration ({calibration.get('gpu', 'unknown card')})")


def load_calibration(path: str | None) -> dict | None:
    """A calibration profile from ``path`` (None: none)."""
    if path is None:
        return None
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--calibration: cannot read {path!r} ({e}); give a file written by bench calibrate") from None
    if not isinstance(doc, dict):
        raise UserError(f"--calibration: {path!r} is not a JSON object; give a file written by bench calibrate")
    return doc
