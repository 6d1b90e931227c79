"""DeepSpeed configs, read the way DeepSpeed (and the HF Trainer) read them.

``settings(cell)`` gives the ZeRO settings that change memory, from the cell's
``ds_config`` file or, without one, from bench's generated config (the one
``bench run`` hands to ``deepspeed.initialize``). Both the predictor and the
runner go through here, so they always agree on buckets and offload.

Understood: HF ``"auto"`` values (resolved as the HF Trainer resolves them,
from the model's hidden size and the cell), legacy keys (``"cpu_offload"``,
``"cpu_offload_param"``, ``"cpu_offload_use_pin_memory"``, a ``"bfloat16"`` section), and DeepSpeed's
own defaults for absent keys (``deepspeed/runtime/zero/config.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import userfile
from bench.dtypes import HALF_OF
from bench.errors import UserError
from bench.limits import DS_MAX_ELEMENTS, short

ZERO_STAGES = {"zero1": 1, "zero2": 2, "zero3": 3}
"""The strategies DeepSpeed runs, and their ZeRO stage."""

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


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (for messages)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return path


def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    path = _shown(path)
    try:
        text = userfile.read_text(p, "ds_config")
    except UserError as e:
        raise UserError(f"{e.problems[0]}; give a path to a DeepSpeed JSON file") from None
    data = userfile.loads_json(text, f"ds_config {path!r}")  # NaN and Infinity are no JSON numbers
    if not isinstance(data, dict):
        raise UserError(f"ds_config: {path!r} must hold a JSON object")
    return data


def _num(v: Any, auto: float, key: str, path: str) -> int:
    """A size or threshold in elements: a number from 0 to ``DS_MAX_ELEMENTS``, or ``"auto"``."""
    if v == "auto":
        return int(auto)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= DS_MAX_ELEMENTS:
        raise UserError(
            f"ds_config {path}: {key}: {short(v)} is not allowed; "
            f'allowed: a number of elements from 0 to {DS_MAX_ELEMENTS:.0e}, or "auto"'
        )
    return int(v)


def _precision(data: dict[str, Any]) -> str | None:
    """The file's training precision, as DeepSpeed reads it (``bfloat16`` is
    DeepSpeed's legacy name of the ``bf16`` section; a section without
    ``enabled`` is off)."""
    sections = {"fp16": data.get("fp16"), "bf16": data.get("bf16", data.get("bfloat16"))}
    enabled = {name: sec.get("enabled", False) for name, sec in sections.items() if isinstance(sec, dict)}
    on = [name for name, flag in enabled.items() if flag is True]
    if on:
        return on[0]
    if "auto" in enabled.values():
        return None
    return "fp32" if enabled else None


def _section(zo: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = zo.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(
            f'ds_config {path}: zero_optimization.{key}: {value!r} is not allowed; allowed: an object such as {{"device": "cpu"}}'
        )
    return value


def hidden_size_of(config: dict[str, Any]) -> int | None:
    """The model width HF uses to resolve ``"auto"`` buckets (``config.hidden_size``,
    spelled ``n_embd`` by GPT-2 and ``d_model`` by T5; the encoder's for
    composite encoder-decoder configs)."""
    for key in ("hidden_size", "n_embd", "d_model"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    for sub in ("encoder", "text_config"):
        if isinstance(config.get(sub), dict):
            return hidden_size_of(config[sub])
    return None


def settings(cell, hidden_size: int | None = None) -> ZeroSettings:
    """ZeRO settings for a cell whose strategy is zero1/2/3.

    ``hidden_size`` resolves HF ``"auto"`` bucket sizes (hidden^2, 0.9 hidden^2,
    10 hidden, as ``transformers.integrations.deepspeed`` does; 4096 when
    unknown). A file whose stage, offload or precision contradicts the cell
    raises ``UserError`` with one line per contradiction.
    """
    stage = ZERO_STAGES.get(cell.strategy)
    if stage is None:
        raise ValueError(f"DeepSpeed settings need a zero1/2/3 strategy, not {cell.strategy!r}")
    if cell.ds_config is None:
        return generated(cell)
    data = _load(cell.ds_config)
    path = _shown(cell.ds_config)
    zo = data.get("zero_optimization") or {}
    if not isinstance(zo, dict):
        raise UserError(
            f'ds_config {path}: zero_optimization: {zo!r} is not allowed; allowed: an object with "stage": {stage}'
        )
    h = hidden_size or 4096
    file_stage = zo.get("stage", 0)
    problems = []
    if file_stage != "auto" and file_stage != stage:
        problems.append(
            f"ds_config {path}: zero_optimization.stage {file_stage!r} contradicts the cell's strategy {cell.strategy!r}; "
            f"allowed: {stage} (or a method with zero{file_stage})"
        )
    off_opt = _section(zo, "offload_optimizer", path)
    off_par = _section(zo, "offload_param", path)
    # Legacy keys as DeepSpeed maps them: cpu_offload -> offload_optimizer,
    # cpu_offload_param -> offload_param (deepspeed/runtime/zero/config.py).
    offload_optimizer = zo.get("cpu_offload") is True or off_opt.get("device") in ("cpu", "nvme")
    offload_param = zo.get("cpu_offload_param") is True or off_par.get("device") in ("cpu", "nvme")
    # Pinned unless the file says otherwise: DeepSpeed's offload default
    # (deepspeed/runtime/zero/offload_config.py); the legacy flag still counts.
    pin = off_opt.get("pin_memory", off_par.get("pin_memory", zo.get("cpu_offload_use_pin_memory", True)))
    pin = pin is True
    wanted = {"none": (False, False), "optimizer": (True, False), "all": (True, True)}[cell.offload]
    if (offload_optimizer, offload_param) != wanted:
        have = {(False, False): "none", (True, False): "optimizer", (True, True): "all", (False, True): "param only"}
        problems.append(
            f"ds_config {path}: offload {have[(offload_optimizer, offload_param)]!r} (optimizer={offload_optimizer}, "
            f"param={offload_param}) contradicts the cell's offload {cell.offload!r}; allowed: offload_optimizer "
            f"{'cpu' if wanted[0] else 'none'}, offload_param {'cpu' if wanted[1] else 'none'}"
        )
    precision = _precision(data)
    cell_prec = HALF_OF[cell.precision]
    if precision is not None and precision != cell_prec:
        fix = f"{cell_prec}.enabled true" if cell_prec != "fp32" else "no fp16/bf16 section enabled"
        problems.append(
            f"ds_config {path}: precision {precision!r} contradicts the cell's precision {cell.precision!r}; "
            f'allowed: {fix}, or "enabled": "auto"'
        )
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
        param_persistence_threshold=_num(
            g("stage3_param_persistence_threshold"), 10 * h, "stage3_param_persistence_threshold", path
        ),
        max_live_parameters=_num(g("stage3_max_live_parameters"), 1e9, "stage3_max_live_parameters", path),
        max_reuse_distance=_num(g("stage3_max_reuse_distance"), 1e9, "stage3_max_reuse_distance", path),
        precision=precision,
    )


def generated(cell) -> ZeroSettings:
    """bench's own config when the cell names none (the reference protocol's)."""
    stage = ZERO_STAGES[cell.strategy]
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
