"""DeepSpeed configs, read the way DeepSpeed (and the HF Trainer) read them.

``settings(cell)`` gives the ZeRO settings that change memory, from the cell's
``ds_config`` file or, without one, from bench's generated config (the one
``bench run`` hands to ``deepspeed.initialize``). Both the predictor and the
runner go through here, so they always agree on buckets and offload.

Understood: HF ``"auto"`` values (resolved as the HF Trainer resolves them,
from the model's hidden size and the cell), legacy keys (``"cpu_offload"``,
``"cpu_offload_params"``, ``"cpu_offload_use_pin_memory"``), and DeepSpeed's
own defaults for absent keys (``deepspeed/runtime/zero/config.py``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.errors import UserError

# deepspeed/runtime/zero/config.py defaults
DS_DEFAULTS = {
    "reduce_bucket_size": 5e8,
    "allgather_bucket_size": 5e8,
    "contiguous_gradients": True,
    "stage3_prefetch_bucket_size": 5e7,
    "stage3_param_persistence_threshold": 1e5,
    "stage3_max_live_parameters": 1e9,
    "stage3_max_reuse_distance": 1e9,
}


@dataclass(frozen=True, kw_only=True)
class ZeroSettings:
    """The ZeRO knobs that move memory, with DeepSpeed's meaning."""

    stage: int
    offload_optimizer: bool
    offload_param: bool
    pin_memory: bool
    overlap_comm: bool
    contiguous_gradients: bool
    reduce_bucket_size: int
    """Elements per gradient reduction bucket (ZeRO-2 keeps ~2 of these with overlap)."""
    allgather_bucket_size: int
    prefetch_bucket_size: int
    """ZeRO-3: elements of parameters fetched ahead of use."""
    param_persistence_threshold: int
    """ZeRO-3: parameters with fewer elements stay unpartitioned on every rank."""
    max_live_parameters: int
    max_reuse_distance: int
    precision: str | None
    """``fp16``/``bf16``/``fp32`` when the file says so, ``None`` when ``auto`` or absent."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise UserError(f"ds_config: {path!r} cannot be read ({e.strerror}); give a path to a DeepSpeed JSON file") from None
    except json.JSONDecodeError as e:
        raise UserError(f"ds_config: {path!r} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"ds_config: {path!r} must hold a JSON object")
    return data


def _num(v: Any, auto: float, key: str, path: str) -> int:
    if v == "auto":
        return int(auto)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserError(f"ds_config {path}: {key}: {v!r} is not allowed; allowed: a number or \"auto\"")
    return int(v)


def _precision(data: dict[str, Any]) -> str | None:
    for name in ("fp16", "bf16"):
        sec = data.get(name) or {}
        if isinstance(sec, dict) and sec.get("enabled") is True:
            return name
    fp16 = data.get("fp16") or {}
    bf16 = data.get("bf16") or {}
    if any(isinstance(s, dict) and s.get("enabled") == "auto" for s in (fp16, bf16)):
        return None
    if data.get("fp16") is not None or data.get("bf16") is not None:
        return "fp32"
    return None


def settings(cell, hidden_size: int | None = None) -> ZeroSettings:
    """ZeRO settings for a cell whose strategy is zero1/2/3.

    ``hidden_size`` resolves HF ``"auto"`` bucket sizes (hidden^2, 0.9 hidden^2,
    10 hidden, as ``transformers.integrations.deepspeed`` does).
    """
    stage = int(cell.strategy[-1])
    if cell.ds_config is None:
        return generated(cell)
    path = cell.ds_config
    data = _load(path)
    zo = dict(data.get("zero_optimization") or {})
    h = hidden_size or 4096
    file_stage = zo.get("stage", 0)
    problems = []
    if file_stage != "auto" and file_stage != stage:
        problems.append(f"ds_config {path}: zero_optimization.stage is {file_stage!r} but the cell's strategy is {cell.strategy!r}")
    off_opt = zo.get("offload_optimizer") or {}
    off_par = zo.get("offload_param") or {}
    offload_optimizer = bool(zo.get("cpu_offload")) or off_opt.get("device") in ("cpu", "nvme")
    offload_param = bool(zo.get("cpu_offload_params")) or off_par.get("device") in ("cpu", "nvme")
    pin = bool(off_opt.get("pin_memory", zo.get("cpu_offload_use_pin_memory", False)))
    wanted = {"none": (False, False), "optimizer": (True, False), "all": (True, True)}[cell.offload]
    if (offload_optimizer, offload_param) != wanted:
        problems.append(
            f"ds_config {path}: offload (optimizer={offload_optimizer}, param={offload_param}) contradicts the cell's offload {cell.offload!r}"
        )
    precision = _precision(data)
    cell_prec = {"fp16": "fp16", "bf16": "bf16", "pure-bf16": "bf16", "fp32": "fp32"}[cell.precision]
    if precision is not None and precision != cell_prec:
        problems.append(f"ds_config {path}: precision {precision!r} contradicts the cell's precision {cell.precision!r}")
    if problems:
        raise UserError(*problems)
    g = lambda k: zo.get(k, DS_DEFAULTS.get(k))  # noqa: E731
    overlap = zo.get("overlap_comm", stage == 3)
    return ZeroSettings(
        stage=stage,
        offload_optimizer=offload_optimizer,
        offload_param=offload_param,
        pin_memory=pin,
        overlap_comm=bool(overlap) if overlap != "auto" else stage == 3,
        contiguous_gradients=bool(g("contiguous_gradients")),
        reduce_bucket_size=_num(g("reduce_bucket_size"), h * h, "reduce_bucket_size", path),
        allgather_bucket_size=_num(g("allgather_bucket_size"), 5e8, "allgather_bucket_size", path),
        prefetch_bucket_size=_num(g("stage3_prefetch_bucket_size"), 0.9 * h * h, "stage3_prefetch_bucket_size", path),
        param_persistence_threshold=_num(g("stage3_param_persistence_threshold"), 10 * h, "stage3_param_persistence_threshold", path),
        max_live_parameters=_num(g("stage3_max_live_parameters"), 1e9, "stage3_max_live_parameters", path),
        max_reuse_distance=_num(g("stage3_max_reuse_distance"), 1e9, "stage3_max_reuse_distance", path),
        precision=precision,
    )


def generated(cell) -> ZeroSettings:
    """bench's own config when the cell names none (the reference protocol's)."""
    stage = int(cell.strategy[-1])
    return ZeroSettings(
        stage=stage,
        offload_optimizer=cell.offload in ("optimizer", "all"),
        offload_param=cell.offload == "all",
        pin_memory=True,
        overlap_comm=True,
        contiguous_gradients=True,
        reduce_bucket_size=int(5e8),
        allgather_bucket_size=int(5e8),
        prefetch_bucket_size=int(5e8),
        param_persistence_threshold=int(1e6),
        max_live_parameters=int(1e9),
        max_reuse_distance=int(1e9),
        precision=None,
    )


def deepspeed_config(cell, hidden_size: int | None = None) -> dict[str, Any]:
    """The full JSON handed to ``deepspeed.initialize`` for a cell."""
    s = settings(cell, hidden_size)
    zo: dict[str, Any] = {
        "stage": s.stage,
        "overlap_comm": s.overlap_comm,
        "contiguous_gradients": s.contiguous_gradients,
        "reduce_bucket_size": s.reduce_bucket_size,
        "allgather_bucket_size": s.allgather_bucket_size,
    }
    if s.offload_optimizer:
        zo["offload_optimizer"] = {"device": "cpu", "pin_memory": s.pin_memory}
    if s.offload_param:
        zo["offload_param"] = {"device": "cpu", "pin_memory": s.pin_memory}
    if s.stage == 3:
        zo.update(
            stage3_prefetch_bucket_size=s.prefetch_bucket_size,
            stage3_param_persistence_threshold=s.param_persistence_threshold,
            stage3_max_live_parameters=s.max_live_parameters,
            stage3_max_reuse_distance=s.max_reuse_distance,
        )
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cell.batch,
        "gradient_accumulation_steps": cell.grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": zo,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cell.precision == "fp16":
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 8}
    elif cell.precision in ("bf16", "pure-bf16"):
        cfg["bf16"] = {"enabled": True}
    return cfg
