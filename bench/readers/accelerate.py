"""accelerate config (what ``accelerate config`` writes, ``accelerate launch --config_file FILE``), read as accelerate reads it.

Key names, values and defaults are accelerate's own: ``ClusterConfig`` of
``commands/config/config_args.py``, the questions of ``commands/config/cluster.py``,
``_validate_launch_command`` of ``commands/launch.py`` and ``utils/launch.py`` (which
turn the file into the launched processes' environment) and the ``DeepSpeedPlugin`` /
``FullyShardedDataParallelPlugin`` of ``utils/dataclasses.py`` (which read it back).

- ``distributed_type``: ``NO`` -> one GPU (one process whatever ``num_processes``
  says); ``MULTI_GPU`` -> ddp; ``DEEPSPEED`` -> ZeRO; ``FSDP`` -> fsdp. Other
  accelerators, TPUs (``XLA``), ``MULTI_CPU``, ``MEGATRON_LM`` and SageMaker's
  types are refused.
- ``num_processes`` -> gpus: the total over all machines (``accelerate launch``
  starts ``num_processes // num_machines`` per machine); ``-1`` (given at launch)
  leaves gpus to the cell. ``num_machines`` > 1 is a note (inter-node traffic).
- ``mixed_precision`` ``no``/``fp16``/``bf16`` -> fp32/fp16/bf16: autocast over
  fp32 weights, or DeepSpeed's fp16/bf16 mode under ``DEEPSPEED``; ``fp8`` runs
  on bf16 autocast with FP8 matmuls: predicted as bf16, with a note.
- ``deepspeed_config``: ``zero_stage`` (2 when absent, as ``DeepSpeedPlugin``)
  -> zero1/zero2/zero3; ``offload_optimizer_device`` ``cpu``/``nvme`` -> offload
  optimizer, with ``offload_param_device`` too -> offload all;
  ``gradient_accumulation_steps`` -> grad_accum; ``zero3_init_flag: false`` ->
  zero_init false (accelerate's default for ZeRO-3 is ``deepspeed.zero.Init``).
  Or ``deepspeed_config_file``, a DeepSpeed JSON (relative to this file's folder
  first, then the working directory) read by ``bench.readers.deepspeed``; beside
  it accelerate refuses the fields the JSON states (``zero_stage``, offload,
  accumulation, clipping, ``mixed_precision`` ...), and so does this reader.
- ``fsdp_config`` (keys with or without the ``fsdp_`` prefix, as
  ``accelerate launch`` reads them): ``fsdp_version`` 2 is FSDP2, which bench
  predicts; 1 (accelerate's default) is predicted as FSDP2 with a note.
  Sharding: FSDP2's ``fsdp_reshard_after_forward`` must be true; FSDP1 runs
  ``fsdp_sharding_strategy`` (``FULL_SHARD`` when absent: ``accelerate launch``
  passes that default and the FSDP1 plugin prefers it over
  ``fsdp_reshard_after_forward``): ``FULL_SHARD``, ``HYBRID_SHARD`` (predicted as
  full sharding) or ``NO_SHARD`` (predicted as ddp). ``fsdp_offload_params`` ->
  offload all; ``fsdp_activation_checkpointing`` -> grad_ckpt.

The file names no model, batch or sequence length: those come from the command
line or the matrix include, as for a DeepSpeed JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.jobfile import Job, Reading, read_document
from bench.readers import deepspeed

DISTRIBUTED = {"NO": "none", "MULTI_GPU": "ddp", "DEEPSPEED": "zero", "FSDP": "fsdp"}
"""The ``distributed_type`` values bench predicts, and the strategy each gives."""
PRECISIONS = {"no": "fp32", "fp16": "fp16", "bf16": "bf16", "fp8": "bf16"}
SECTIONS = {
    "deepspeed_config": "",
    "fsdp_config": "fsdp_",
    "dynamo_config": "dynamo_",
    "fp8_config": "fp8_",
    "parallelism_config": "",
    "megatron_lm_config": "",
    "mpirun_config": "",
}
"""The nested mappings, and the prefix ``accelerate launch`` gives a key of them that lacks it."""

UNMODELLED = {
    "use_cpu": "training on the CPU; predicted on the GPU",
    "downcast_bf16": "XLA's bf16 downcast of fp32 tensors on TPUs (no effect on a GPU run)",
    "deepspeed_config.deepspeed_moe_layer_cls_names": "MoE blocks made ZeRO-3 leaf modules (each gathered whole)",
    "fsdp_config.fsdp_activation_checkpointing_offload": "checkpointed activations offloaded to the host",
    "fsdp_config.fsdp_ignored_modules": "modules left out of sharding (held whole on every rank)",
}
IGNORED = (
    # where and how the processes start: no effect on a rank's memory or step
    "compute_environment",
    "machine_rank",
    "gpu_ids",
    "main_process_ip",
    "main_process_port",
    "rdzv_backend",
    "same_network",
    "main_training_function",
    "enable_cpu_affinity",
    "debug",
    # TPU pods (XLA is refused)
    "tpu_name",
    "tpu_zone",
    "tpu_use_cluster",
    "tpu_use_sudo",
    "command_file",
    "commands",
    "tpu_vm",
    "tpu_env",
    # SageMaker's launcher
    "ec2_instance_type",
    "iam_role_name",
    "image_uri",
    "profile",
    "region",
    "base_job_name",
    "pytorch_version",
    "transformers_version",
    "py_version",
    "sagemaker_inputs_file",
    "sagemaker_metrics_file",
    "additional_args",
    # DeepSpeed: clipping, saving, nvme paths and the multi-node launcher
    "deepspeed_config.gradient_clipping",
    "deepspeed_config.zero3_save_16bit_model",
    "deepspeed_config.offload_optimizer_nvme_path",
    "deepspeed_config.offload_param_nvme_path",
    "deepspeed_config.deepspeed_multinode_launcher",
    "deepspeed_config.deepspeed_hostfile",
    "deepspeed_config.deepspeed_exclusion_filter",
    "deepspeed_config.deepspeed_inclusion_filter",
    # FSDP: checkpoint format, host-side loading, which block class is a unit (bench wraps each block)
    "fsdp_config.fsdp_state_dict_type",
    "fsdp_config.fsdp_cpu_ram_efficient_loading",
    "fsdp_config.fsdp_transformer_layer_cls_to_wrap",
    "fsdp_config.fsdp_min_num_params",
)
DS_FILE_CONFLICTS = (
    "gradient_accumulation_steps",
    "gradient_clipping",
    "zero_stage",
    "offload_optimizer_device",
    "offload_param_device",
    "offload_param_nvme_path",
    "offload_optimizer_nvme_path",
    "zero3_save_16bit_model",
)
"""``deepspeed_config`` fields accelerate refuses beside ``deepspeed_config_file`` (``DeepSpeedPlugin._deepspeed_config_checks``)."""
OFFLOAD_DEVICES = ("none", "cpu", "nvme")
FSDP1_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2")
"""accelerate's ``FSDP_SHARDING_STRATEGY``; a number 1-5 names them in this order, as ``ShardingStrategy``."""
FSDP1_ONLY = {
    "fsdp_backward_prefetch": "BACKWARD_PRE",
    "fsdp_forward_prefetch": False,
    "fsdp_use_orig_params": True,
    "fsdp_sync_module_states": None,
}
"""Options of FSDP1 that FSDP2 has no counterpart of (``accelerate config`` asks them for version 1 only),
and the value that behaves as the FSDP2 bench predicts (one block prefetched in backward, none in
forward, the original parameters); ``sync_module_states`` only broadcasts the weights at load."""
FSDP_WRAPS = ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP")
TRUE, FALSE = ("y", "yes", "t", "true", "on", "1"), ("n", "no", "f", "false", "off", "0")
"""accelerate's ``str_to_bool`` spellings."""


def flatten(doc: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """The file with each nested section's keys as ``section.key`` (prefixed as ``accelerate launch``
    does), and the problems of sections that are not mappings."""
    flat: dict[str, Any] = {}
    problems = []
    for key, value in doc.items():
        prefix = SECTIONS.get(key)
        if prefix is None:
            flat[key] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                k = str(k)
                flat[f"{key}.{k if k.startswith(prefix) or not prefix else prefix + k}"] = v
        elif value not in (None, "", []):
            problems.append(f"{where}{key}: {value!r} is not allowed; allowed: a mapping of settings")
    return flat, problems


def _flag(r: Reading, key: str, default: bool = False) -> bool | None:
    """A yes/no key as accelerate reads it (``str(value).lower()`` through ``str_to_bool``); None
    (and a problem) for a value that is neither."""
    value = r.get(key)
    if value is None:
        return default
    text = str(value).lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    r.problems.append(f"{r.where}{key}: {value!r} is not allowed; allowed: true, false")
    return None


def _count(r: Reading, key: str, default: int, minimum: int, also: str = "") -> int:
    value = r.get(key, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or (value < minimum and value != default):
        r.problems.append(f"{r.where}{key}: {value!r} is not allowed; allowed: a whole number, {minimum} or more{also}")
        return default
    return value


def read_deepspeed(r: Reading) -> None:
    """ZeRO stage, offload and accumulation of ``deepspeed_config``, or its ``deepspeed_config_file``."""
    section = "deepspeed_config."
    file = r.get(section + "deepspeed_config_file")
    if file not in (None, "", "none"):
        for key in DS_FILE_CONFLICTS:
            if r.has(section + key):
                r.problems.append(
                    f"{r.where}{section}{key}: {r.doc[section + key]!r} is not allowed beside deepspeed_config_file "
                    f"(accelerate refuses it); allowed: leave it out and state it in {Path(str(file)).name}"
                )
        if r.has("mixed_precision"):
            r.problems.append(
                f"{r.where}mixed_precision: {r.doc['mixed_precision']!r} is not allowed beside "
                f"deepspeed_config_file (accelerate refuses it); allowed: leave it out and set fp16/bf16 in "
                f"{Path(str(file)).name}"
            )
        path = Path(str(file)).expanduser()
        if not path.is_absolute() and (r.path.parent / path).is_file():
            path = r.path.parent / path
        if not path.is_file():
            r.problems.append(
                f"{r.where}{section}deepspeed_config_file: {str(file)!r} is not a file "
                f"(looked in {str(r.path.parent)!r} and the working directory); allowed: a DeepSpeed JSON"
            )
            return
        try:
            job = deepspeed.read(path, read_document(path))
        except UserError as e:
            r.problems += [f"{r.where}{section}deepspeed_config_file: {m}" for m in e.problems]
            return
        r.fields.update(job.fields)
        r.notes += [f"deepspeed_config_file: {n}" for n in job.notes]
        strategy = job.fields["strategy"]
    else:
        stage = r.get(section + "zero_stage", 2)
        if isinstance(stage, str) and stage.isdigit():
            stage = int(stage)
        if stage not in (1, 2, 3) or isinstance(stage, bool):
            r.problems.append(
                f"{r.where}{section}zero_stage: {stage!r} is not allowed; allowed: 1, 2, 3 (stage 0 names no ZeRO method)"
            )
            return
        devices = {}
        for part in ("optimizer", "param"):
            key = f"{section}offload_{part}_device"
            device = str(r.get(key, "none")).lower()
            if device not in OFFLOAD_DEVICES:
                r.problems.append(
                    f"{r.where}{key}: {r.doc[key]!r} is not allowed; allowed: {', '.join(OFFLOAD_DEVICES)}"
                )
                return
            devices[part] = device
        if devices["param"] != "none" and devices["optimizer"] == "none":
            r.problems.append(
                f"{r.where}{section}offload_param_device: {devices['param']!r} without offload_optimizer_device is "
                f"not modelled; allowed: offload_optimizer_device alone, or both"
            )
            return
        if devices["param"] != "none" and stage != 3:
            r.problems.append(
                f"{r.where}{section}offload_param_device: {devices['param']!r} needs zero_stage 3, not {stage}; "
                f"allowed: none"
            )
            return
        if "nvme" in devices.values():
            r.notes.append(
                "offload to nvme is predicted as offload to host memory (the GPU side is the same; the host figure is not)"
            )
        strategy = f"zero{stage}"
        offload = "all" if devices["param"] != "none" else "optimizer" if devices["optimizer"] != "none" else "none"
        r.fields.update(tuning="full", strategy=strategy, offload=offload)
        if r.get(section + "gradient_accumulation_steps") != "auto":  # "auto": the script's Accelerator says
            r.take(section + "gradient_accumulation_steps", "grad_accum")
    if _flag(r, section + "zero3_init_flag", default=True) is False and strategy == "zero3":
        r.fields["zero_init"] = False  # accelerate's default for ZeRO-3 is deepspeed.zero.Init, the cell's too


def _fsdp1_strategy(r: Reading, key: str, value: Any) -> str | None:
    """The FSDP1 sharding strategy named by ``value`` (a name or its number 1-5), None when bad."""
    text = str(value).upper()
    if text.isdigit() and 1 <= int(text) <= len(FSDP1_STRATEGIES):
        return FSDP1_STRATEGIES[int(text) - 1]
    if text in FSDP1_STRATEGIES:
        return text
    r.problems.append(f"{r.where}{key}: {value!r} is not allowed; allowed: {', '.join(FSDP1_STRATEGIES)}")
    return None


def read_fsdp(r: Reading) -> None:
    """Sharding, offload and checkpointing of ``fsdp_config``."""
    section = "fsdp_config."
    version = str(r.get(section + "fsdp_version", 1))
    if version not in ("1", "2"):
        r.problems.append(
            f"{r.where}{section}fsdp_version: {r.doc[section + 'fsdp_version']!r} is not allowed; allowed: 1, 2"
        )
        return
    strategy = "fsdp"
    if version == "2":
        reshard_key = section + "fsdp_reshard_after_forward"
        if _flag(r, reshard_key, default=True) is False:
            r.problems.append(
                f"{r.where}{reshard_key}: {r.doc[reshard_key]!r} is not modelled (every block's parameters stay "
                f"gathered from forward to backward); allowed: true"
            )
        # FSDP2 reads reshard_after_forward alone; accelerate drops (or does not pass) the FSDP1-only options
        r.ignore(section + k for k in ("fsdp_sharding_strategy", *FSDP1_ONLY))
    else:
        given = r.get(section + "fsdp_sharding_strategy")
        sharding = _fsdp1_strategy(r, section + "fsdp_sharding_strategy", given) if given is not None else "FULL_SHARD"
        options = ", ".join(
            f"{k} {r.doc[section + k]!r}"
            for k, like in FSDP1_ONLY.items()
            if r.has(section + k) and like is not None and str(r.doc[section + k]).lower() != str(like).lower()
        )
        r.notes.append(
            f"{section}fsdp_version: 1: FSDP1 (flat parameters) is predicted as FSDP2 (fully_shard), which bench "
            f"runs{f'; its FSDP1-only options are not modelled ({options})' if options else ''}"
        )
        r.ignore(section + k for k in FSDP1_ONLY)
        reshard = r.get(section + "fsdp_reshard_after_forward")
        if reshard is not None and str(reshard).lower() not in TRUE + FALSE:  # FSDP1 spells a strategy here
            named = _fsdp1_strategy(r, section + "fsdp_reshard_after_forward", reshard)
            if named not in (None, sharding):
                r.notes.append(
                    f"{section}fsdp_reshard_after_forward: {reshard!r} is not what accelerate runs for FSDP1: "
                    f"accelerate launch passes fsdp_sharding_strategy ({sharding}"
                    f"{'' if given is not None else ', its default'}), which the plugin prefers"
                )
        if sharding == "HYBRID_SHARD":
            r.notes.append(
                f"{section}fsdp_sharding_strategy: HYBRID_SHARD is predicted as FULL_SHARD across the cell's gpus"
            )
        elif sharding == "NO_SHARD":
            strategy = "ddp"
            r.notes.append(
                f"{section}fsdp_sharding_strategy: NO_SHARD (every rank holds the whole model, gradients and "
                f"optimizer) is predicted as ddp"
            )
        elif sharding in ("SHARD_GRAD_OP", "HYBRID_SHARD_ZERO2"):
            r.problems.append(
                f"{r.where}{section}fsdp_sharding_strategy: {given!r} is not modelled (parameters stay gathered from "
                f"forward to backward); allowed: FULL_SHARD, HYBRID_SHARD, NO_SHARD"
            )
    offload = _flag(r, section + "fsdp_offload_params")
    if offload and strategy == "ddp":
        r.problems.append(
            f"{r.where}{section}fsdp_offload_params: true with NO_SHARD is not modelled; allowed: false, "
            f"or fsdp_sharding_strategy FULL_SHARD"
        )
    wrap = str(r.get(section + "fsdp_auto_wrap_policy", "NO_WRAP")).upper()
    if wrap not in FSDP_WRAPS:
        r.problems.append(
            f"{r.where}{section}fsdp_auto_wrap_policy: {r.doc[section + 'fsdp_auto_wrap_policy']!r} is not allowed; "
            f"allowed: {', '.join(FSDP_WRAPS)}"
        )
    elif wrap != "TRANSFORMER_BASED_WRAP" and strategy == "fsdp":
        what = (
            f"units of at least {r.get(section + 'fsdp_min_num_params', 100_000_000):,} parameters"
            if wrap == "SIZE_BASED_WRAP"
            else "one unit for the whole model: every parameter gathered at once"
        )
        absent = "" if r.has(section + "fsdp_auto_wrap_policy") else " (absent: accelerate's default)"
        r.notes.append(
            f"{section}fsdp_auto_wrap_policy: {wrap}{absent} is not modelled ({what}); predicted with one unit per "
            f"transformer block (TRANSFORMER_BASED_WRAP)"
        )
    if _flag(r, section + "fsdp_activation_checkpointing"):
        r.fields["grad_ckpt"] = True
    r.fields.update(tuning="full", strategy=strategy, offload="all" if offload and strategy == "fsdp" else "none")
    if r.fields.get("precision") in ("fp16", "bf16") and strategy == "fsdp":
        r.notes.append(
            f"mixed_precision under FSDP: accelerate reduces gradients in {r.fields['precision']} (reduce_dtype = "
            f"param_dtype); predicted with fp32 gradient reduction"
        )


def read_dynamo(r: Reading) -> None:
    """A note for torch.compile (``dynamo_config``, or the older top-level ``dynamo_backend``)."""
    backend = r.get("dynamo_config.dynamo_backend", r.get("dynamo_backend", "NO"))
    if str(backend).upper() not in ("NO", "NONE", ""):
        options = ", ".join(
            f"{k.split('.dynamo_')[-1]} {r.doc[k]!r}"
            for k in sorted(r.doc)
            if k.startswith("dynamo_config.") and k != "dynamo_config.dynamo_backend" and r.doc[k] not in (None, False)
        )
        r.notes.append(
            f"dynamo_config: torch.compile with backend {backend!r}{f' ({options})' if options else ''} is not modelled "
            f"(compiled graphs keep other activations and run at another speed)"
        )
    r.ignore(k for k in r.doc if k.startswith("dynamo_config."))


def read_parallelism(r: Reading) -> None:
    """A note for the sizes of ``parallelism_config`` beyond plain data-parallel sharding."""
    sizes = {
        k.split(".", 1)[1].removeprefix("parallelism_config_"): v
        for k, v in r.doc.items()
        if k.startswith("parallelism_config.") and k.endswith("_size")
    }
    beyond = {k: v for k, v in sizes.items() if k != "dp_shard_size" and isinstance(v, int) and v > 1}
    if beyond:
        r.notes.append(
            "parallelism_config: "
            + ", ".join(f"{k} {v}" for k, v in sorted(beyond.items()))
            + " is not modelled (replicated shard groups, tensor, context or sequence parallelism); "
            "predicted as one shard group over every GPU"
        )
    r.ignore(k for k in r.doc if k.startswith("parallelism_config."))


def read(path: Path, doc: dict[str, Any]) -> Job:
    r = Reading("accelerate", path, doc)
    flat, problems = flatten(doc, r.where)
    r.doc = flat
    r.problems += problems
    distributed = r.get("distributed_type")
    if distributed not in DISTRIBUTED:
        r.problems.append(
            f"{r.where}distributed_type: {distributed!r} is not allowed; allowed: {', '.join(DISTRIBUTED)} "
            f"(other accelerators, TPUs, Megatron-LM and SageMaker are not modelled"
            f"{'; YAML reads an unquoted NO as false: write it quoted' if distributed is False else ''})"
        )
        return r.job()
    mixed = r.get("mixed_precision", "fp16" if r.get("fp16") is True else None)  # "fp16": the older spelling
    if mixed is not None:
        if str(mixed).lower() not in PRECISIONS:
            r.problems.append(f"{r.where}mixed_precision: {mixed!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
        else:
            r.fields["precision"] = PRECISIONS[str(mixed).lower()]
            if str(mixed).lower() == "fp8":
                backend = r.get("fp8_config.fp8_backend")
                r.notes.append(
                    f"mixed_precision: 'fp8' is not modelled (FP8 matmuls{f' through {backend}' if backend else ''} "
                    f"beside bf16 autocast, with their scaling state); predicted as bf16"
                )
    r.ignore(k for k in r.doc if k.startswith("fp8_config."))  # read only with mixed_precision fp8, noted above

    processes = _count(r, "num_processes", 1 if distributed == "NO" else -1, 1, " (-1: given at launch)")
    machines = _count(r, "num_machines", 1, 1)
    if distributed == "NO":
        if processes > 1:
            r.notes.append(f"num_processes: {processes} with distributed_type NO: accelerate launches one process")
        r.fields.update(tuning="full", strategy="none", offload="none", gpus=1)
    elif processes > 0:
        r.fields["gpus"] = processes
    if machines > 1:
        ranks = f"{processes} GPUs" if processes > 0 else "the cell's gpus"
        r.notes.append(
            f"num_machines: {machines} is not modelled (traffic between machines is slower than within one); "
            f"predicted as {ranks} with up to 8 per machine"
        )
    if distributed == "MULTI_GPU":
        r.fields.update(tuning="full", strategy="ddp", offload="none")

    unused = {"DEEPSPEED": "deepspeed_config", "FSDP": "fsdp_config"}
    for kind, section in unused.items():
        keys = [k for k in r.doc if k.startswith(section + ".")]
        if distributed == kind:
            (read_deepspeed if kind == "DEEPSPEED" else read_fsdp)(r)
        else:
            if any(r.doc[k] is not None for k in keys):
                r.notes.append(f"{section}: set, but distributed_type is {distributed}: accelerate does not use it")
            r.ignore(keys)
    read_dynamo(r)
    read_parallelism(r)
    r.ignore(k for k in r.doc if k.startswith(("megatron_lm_config.", "mpirun_config.")))  # MEGATRON_LM is refused
    r.unmodelled(UNMODELLED)
    r.ignore(IGNORED)
    r.rest()
    return r.job()
