"""DeepSpeed JSON: the method follows from ``zero_optimization.stage`` and its offload sections.

Read as DeepSpeed reads it (``bench.dsconfig``): ``stage`` 1/2/3 is
``zero1``/``zero2``/``zero3``; ``offload_optimizer.device`` ``cpu``/``nvme`` (or the
legacy ``cpu_offload``) moves the optimizer to the host, ``offload_param`` too
(stage 3 only) moves the parameters as well. The ``fp16``/``bf16`` sections give
the precision, ``train_micro_batch_size_per_gpu`` the batch and
``gradient_accumulation_steps`` the accumulation (``"auto"``: left to the cell).
The file itself becomes the cell's ``ds_config``, so its buckets, overlap and
pinning apply as in ``bench run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import dsconfig
from bench.errors import UserError
from bench.jobfile import Job, Reading

UNMODELLED = {
    "activation_checkpointing": "DeepSpeed's own activation partitioning/CPU checkpointing; use grad_ckpt for HF checkpointing",
    "optimizer": "DeepSpeed builds this optimizer itself (FusedAdam, or CPUAdam when offloaded); predicted with torch AdamW as the client optimizer",
    "compile": "torch.compile of the engine changes the activations kept",
    "data_types": "a gradient-accumulation dtype other than the training dtype",
    "sparse_attention": "sparse attention kernels",
    "pipeline": "pipeline parallelism",
}
ZERO_UNMODELLED = {
    "zero_hpz_partition_size": "ZeRO++ hierarchical partitioning (a secondary weight copy per node)",
    "zero_quantized_weights": "ZeRO++ quantized weight communication",
    "zero_quantized_gradients": "ZeRO++ quantized gradient communication",
    "mics_shard_size": "MiCS sharding groups",
}
IGNORED = (
    "train_batch_size",
    "gradient_clipping",
    "scheduler",
    "steps_per_print",
    "wall_clock_breakdown",
    "flops_profiler",
    "tensorboard",
    "wandb",
    "csv_monitor",
    "comms_logger",
    "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer",
    "prescale_gradients",
    "gradient_predivide_factor",
    "fp16",
    "bf16",
    "bfloat16",
    "amp",
    "zero_optimization",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "communication_data_type",
    "dump_state",
    "checkpoint",
    "elasticity",
    "autotuning",
    "seed",
)


def strategy_of(doc: dict[str, Any], where: str) -> tuple[str, str, list[str]]:
    """(strategy, offload, notes) stated by a DeepSpeed config's ``zero_optimization``."""
    zo = doc.get("zero_optimization") or {}
    if not isinstance(zo, dict):
        raise UserError(f'{where}zero_optimization: {zo!r} is not allowed; allowed: an object with "stage": 1, 2 or 3')
    stage = zo.get("stage", 0)
    if stage not in (1, 2, 3):
        raise UserError(
            f"{where}zero_optimization.stage: {stage!r} is not allowed; allowed: 1, 2, 3 "
            f'(stage 0 and "auto" name no ZeRO method)'
        )
    off_opt: dict[str, Any] = zo["offload_optimizer"] if isinstance(zo.get("offload_optimizer"), dict) else {}
    off_par: dict[str, Any] = zo["offload_param"] if isinstance(zo.get("offload_param"), dict) else {}
    optimizer = zo.get("cpu_offload") is True or off_opt.get("device") in ("cpu", "nvme")
    param = zo.get("cpu_offload_param") is True or off_par.get("device") in ("cpu", "nvme")
    notes = [
        f"zero_optimization.{k}: {zo[k]!r} is not modelled ({why})"
        for k, why in ZERO_UNMODELLED.items()
        if zo.get(k) not in (None, False, 0, 1)
    ]
    if "nvme" in (off_opt.get("device"), off_par.get("device")):
        notes.append(
            "offload to nvme is predicted as offload to host memory (the GPU side is the same; the host figure is not)"
        )
    if param and not optimizer:
        raise UserError(
            f"{where}zero_optimization.offload_param without offload_optimizer is not modelled; "
            f"allowed: offload_optimizer alone, or both"
        )
    if param and stage != 3:
        raise UserError(f"{where}zero_optimization.offload_param needs stage 3, not {stage}")
    return f"zero{stage}", "all" if param else "optimizer" if optimizer else "none", notes


def read(path: Path, doc: dict[str, Any]) -> Job:
    r = Reading("deepspeed", path, doc)
    try:
        strategy, offload, notes = strategy_of(doc, r.where)
    except UserError as e:
        raise UserError(*e.problems) from None
    r.fields.update(tuning="full", strategy=strategy, offload=offload, ds_config=str(path.resolve()))
    r.notes += notes
    precision = dsconfig._precision(doc)  # the file's precision as DeepSpeed reads it; None for "auto"
    if precision is not None:
        r.fields["precision"] = precision
    for key, target in (("train_micro_batch_size_per_gpu", "batch"), ("gradient_accumulation_steps", "grad_accum")):
        if doc.get(key) not in (None, "auto"):
            r.take(key, target)
    r.unmodelled(UNMODELLED)
    r.ignore(IGNORED)
    r.rest()
    return r.job()
