"""HF ``TrainingArguments`` (JSON or YAML of its fields), TRL ``SFTConfig`` spellings included.

What maps to the cell (``transformers/training_args.py`` field names):
``per_device_train_batch_size`` -> batch, ``gradient_accumulation_steps`` ->
grad_accum, ``gradient_checkpointing`` -> grad_ckpt, ``bf16``/``fp16`` ->
precision (mixed precision with fp32 master weights, as the Trainer's
autocast runs it), ``optim`` -> optimizer (``bench.optimizer_names``),
``deepspeed`` (a path, relative to this file, or an inline object) -> the
ZeRO method as ``bench.readers.deepspeed`` reads it, ``fsdp`` +
``fsdp_config`` -> fsdp / fsdp-offload, and TRL's ``max_length`` /
``max_seq_length`` -> seq. TrainingArguments do not say which parameters
train; that is the cell's method (full unless ``--method`` says lora/qlora).
They do say which loop runs: the HF Trainer's (``loop: trainer``), except
under FSDP, which is predicted with bench's own FSDP2 loop (a note says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import optimizer_names
from bench.errors import UserError
from bench.jobfile import Job, Reading, read_document
from bench.readers import deepspeed

UNMODELLED = {
    "torch_compile": "compiled graphs keep other activations and run at another speed",
    "torch_compile_backend": "compiled graphs",
    "torch_compile_mode": "compiled graphs",
    "use_liger_kernel": "Liger's fused kernels (chunked loss, fused RMSNorm/RoPE/SwiGLU) keep fewer activations",
    "liger_kernel_config": "Liger's fused kernels",
    "neftune_noise_alpha": "NEFTune adds a noise tensor per embedding output",
    "group_by_length": "length-grouped batches change the time per step, not the peak at full length",
    "auto_find_batch_size": "the Trainer halves the batch after an OOM; predicted at the batch given",
    "torch_empty_cache_steps": "emptying the CUDA cache every N steps changes what the allocator keeps reserved",
    "optim_target_modules": "GaLore / APOLLO projections of the optimizer states",
    "label_smoothing_factor": "label smoothing adds a full-vocabulary term to the loss",
    "packing": "packed samples (TRL): attention across the packed length, no padding",
    "padding_free": "padding-free batches (TRL)",
    "activation_offloading": "activations offloaded to the host (TRL)",
    "tp_size": "tensor parallelism",
    "parallelism_config": "context/tensor parallelism",
    "gradient_checkpointing_kwargs": "checkpointing options other than use_reentrant=False",
    "use_cpu": "training on the CPU",
}
MAPPED = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "gradient_checkpointing",
    "bf16",
    "fp16",
    "optim",
    "deepspeed",
    "fsdp",
    "fsdp_config",
    "max_length",
    "max_seq_length",
    "eval_strategy",
    "evaluation_strategy",
    "per_device_eval_batch_size",
)
IGNORED = tuple(
    """output_dir overwrite_output_dir do_train do_eval do_predict prediction_loss_only eval_accumulation_steps
eval_delay learning_rate weight_decay adam_beta1 adam_beta2 adam_epsilon max_grad_norm num_train_epochs max_steps
lr_scheduler_type lr_scheduler_kwargs warmup_ratio warmup_steps log_level log_level_replica log_on_each_node
logging_dir logging_strategy logging_first_step logging_steps logging_nan_inf_filter save_strategy save_steps
save_total_limit save_safetensors save_on_each_node save_only_model restore_callback_states_from_checkpoint
no_cuda use_mps_device seed data_seed jit_mode_eval use_ipex bf16_full_eval fp16_full_eval tf32 local_rank
ddp_backend tpu_num_cores dataloader_drop_last eval_steps dataloader_num_workers dataloader_prefetch_factor
past_index run_name disable_tqdm remove_unused_columns label_names load_best_model_at_end metric_for_best_model
greater_is_better ignore_data_skip accelerator_config adafactor report_to ddp_find_unused_parameters
ddp_bucket_cap_mb ddp_broadcast_buffers dataloader_pin_memory dataloader_persistent_workers skip_memory_metrics
use_legacy_prediction_loop push_to_hub resume_from_checkpoint hub_model_id hub_strategy hub_token
hub_private_repo hub_always_push hub_revision include_inputs_for_metrics include_for_metrics eval_do_concat_batches
fp16_backend half_precision_backend push_to_hub_model_id push_to_hub_organization push_to_hub_token mp_parameters
full_determinism ray_scope ddp_timeout dispatch_batches split_batches include_tokens_per_second
include_num_input_tokens_seen batch_eval_metrics eval_on_start use_liger eval_use_gather_object
average_tokens_across_devices fp16_opt_level optim_args save_steps trust_remote_code dataset_text_field
dataset_num_proc dataset_kwargs completion_only_loss assistant_only_loss model_init_kwargs chat_template_path
dataset_batch_size eos_token pad_token train_sampling_strategy project trackio_space_id hub_private
""".split()
)


def fsdp_of(r: Reading) -> tuple[str, str] | None:
    """(strategy, offload) from ``fsdp`` / ``fsdp_config``, None when FSDP is off."""
    value = r.get("fsdp")
    if value in (None, False, "", []):
        return None
    options = set(value if isinstance(value, list) else str(value).split()) if value is not True else {"full_shard"}
    bad = options - {"full_shard", "hybrid_shard", "offload", "auto_wrap"}
    if bad:
        raise UserError(
            f"{r.where}fsdp: {value!r} is not modelled ({', '.join(sorted(bad))}); allowed: "
            f"full_shard, optionally with offload and auto_wrap (bench predicts FSDP2 full sharding)"
        )
    config = r.get("fsdp_config") or {}
    if isinstance(config, str):
        config = read_document((r.path.parent / config) if not Path(config).is_absolute() else Path(config))
    if "hybrid_shard" in options:
        r.notes.append("fsdp: hybrid_shard is predicted as full_shard across the cell's gpus")
    if str(config.get("fsdp_version", config.get("version", 1))) != "2":
        r.notes.append("fsdp_config: FSDP1 (flat parameters) is predicted as FSDP2 (fully_shard), which bench runs")
    if config.get("activation_checkpointing") in (True, "true"):
        r.fields["grad_ckpt"] = True
    offload = "offload" in options or config.get("offload_params") in (True, "true")
    return "fsdp", "all" if offload else "none"


def deepspeed_of(r: Reading) -> None:
    """The ZeRO method of the ``deepspeed`` key: a JSON path (relative to this file) or an inline object."""
    value = r.get("deepspeed")
    if value in (None, "", False):
        return
    if isinstance(value, dict):
        strategy, offload, notes = deepspeed.strategy_of(value, r.where + "deepspeed.")
        r.notes.append("deepspeed: an inline config; its buckets are predicted as bench's generated config's")
    else:
        ds = Path(str(value)).expanduser()
        if not ds.is_absolute() and (r.path.parent / ds).exists():
            ds = r.path.parent / ds
        job = deepspeed.read(ds, read_document(ds))
        strategy, offload, notes = job.fields["strategy"], job.fields["offload"], list(job.notes)
        r.fields["ds_config"] = job.fields["ds_config"]
    r.fields.update(strategy=strategy, offload=offload)
    r.notes += [f"deepspeed: {n}" for n in notes]


def read_training_arguments(r: Reading) -> None:
    """The TrainingArguments keys of ``r.doc`` into ``r`` (shared with the LLaMA-Factory reader)."""
    r.take("per_device_train_batch_size", "batch")
    r.take("gradient_accumulation_steps", "grad_accum")
    r.take("gradient_checkpointing", "grad_ckpt", bool)
    if r.get("bf16") is True:
        r.fields["precision"] = "bf16"
    elif r.get("fp16") is True:
        r.fields["precision"] = "fp16"
    if r.has("optim"):
        r.take("optim", "optimizer", lambda v: optimizer_names.canonical(v, key=r.where + "optim"))
        note = optimizer_names.note(r.doc["optim"])
        if note:
            r.notes.append(note)
    for key in ("max_length", "max_seq_length"):  # TRL's SFTConfig (max_seq_length before TRL 0.20)
        r.take(key, "seq")
    try:
        deepspeed_of(r)
        fsdp = fsdp_of(r)
    except UserError as e:
        r.problems += e.problems
        fsdp = None
    if fsdp is not None:
        if "strategy" in r.fields:
            r.problems.append(f"{r.where}fsdp and deepspeed are both set; allowed: one of them")
        r.fields["strategy"], r.fields["offload"] = fsdp
        r.notes.append(
            "fsdp: predicted with bench's FSDP2 loop; the Trainer's (accelerate's FSDP2 path) is not modelled"
        )
    else:  # these arguments drive the HF Trainer: its step, not bench's loop (``loop: trainer``)
        r.fields["loop"] = "trainer"
    evaluation = r.get("eval_strategy", r.get("evaluation_strategy", "no"))
    if evaluation not in ("no", None):
        r.notes.append(
            f"eval_strategy: {evaluation!r}: evaluation steps are not predicted "
            f"(per_device_eval_batch_size {r.get('per_device_eval_batch_size', 8)})"
        )
    r.unmodelled(UNMODELLED)
    r.ignore(MAPPED + IGNORED)


def read(path: Path, doc: dict[str, Any]) -> Job:
    r = Reading("trainer", path, doc)
    read_training_arguments(r)
    r.rest()
    return r.job()
