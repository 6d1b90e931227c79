"""axolotl YAML (its config reference's keys), read as axolotl builds the run.

``base_model`` -> model; ``adapter: lora`` -> lora, ``adapter: qlora`` (or
``lora`` with ``load_in_4bit``) -> qlora; ``lora_r``/``lora_alpha``/``lora_dropout``;
``lora_target_modules``, or ``lora_target_linear: true`` -> every linear layer
(PEFT's ``all-linear``); ``sequence_len`` -> seq; ``micro_batch_size`` -> batch;
``gradient_accumulation_steps``; ``gradient_checkpointing``; ``bf16``/``fp16``
(``auto`` is bf16 where the card has it: taken as bf16); ``optimizer`` (HF Trainer
names); ``flash_attention`` / ``sdp_attention`` -> attn; ``deepspeed`` and
``fsdp``/``fsdp_config`` as the HF Trainer reads them. With ``adapter`` unset
axolotl trains every parameter (full).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.jobfile import Job, Reading
from bench.readers import trainer

UNMODELLED = {
    "sample_packing": "packed samples: attention over the packed length, no padding",
    "load_in_8bit": "an 8-bit (LLM.int8) base; predicted as a 16-bit base",
    "lora_modules_to_save": "fully trained embedding/head copies beside the adapters",
    "peft_use_dora": "DoRA's magnitude vectors and their extra activations",
    "xformers_attention": "xformers attention kernels; predicted with SDPA",
    "flex_attention": "flex attention kernels",
    "s2_attention": "shifted sparse attention",
    "torch_compile": "compiled graphs keep other activations and run at another speed",
    "neftune_noise_alpha": "NEFTune adds a noise tensor per embedding output",
    "liger_rope": "Liger kernels",
    "liger_rms_norm": "Liger kernels",
    "liger_glu_activation": "Liger kernels",
    "liger_layer_norm": "Liger kernels",
    "liger_fused_linear_cross_entropy": "Liger's chunked loss keeps no full logits",
    "cut_cross_entropy": "Cut Cross-Entropy keeps no full logits",
    "chunked_cross_entropy": "a chunked loss keeps no full logits",
    "plugins": "plugins change the model's kernels or loss",
    "unsloth_lora_mlp": "Unsloth kernels",
    "unsloth_lora_qkv": "Unsloth kernels",
    "unsloth_lora_o": "Unsloth kernels",
    "unsloth_cross_entropy_loss": "Unsloth kernels",
    "unsloth_rms_norm": "Unsloth kernels",
    "unsloth_rope": "Unsloth kernels",
    "lora_mlp_kernel": "axolotl's fused LoRA kernels",
    "lora_qkv_kernel": "axolotl's fused LoRA kernels",
    "lora_o_kernel": "axolotl's fused LoRA kernels",
    "activation_offloading": "activations offloaded to the host",
    "group_by_length": "length-grouped batches change the time per step, not the peak at full length",
    "relora_steps": "ReLoRA restarts",
    "lisa_n_layers": "LISA layer sampling",
    "gradient_checkpointing_kwargs": "checkpointing options other than use_reentrant=False",
    "eval_sample_packing": "packed evaluation batches",
}
IGNORED = tuple(
    """base_model_config model_type tokenizer_type tokenizer_config is_llama_derived_model
is_mistral_derived_model is_qwen_derived_model trust_remote_code strict datasets test_datasets dataset_prepared_path
val_set_size output_dir chat_template chat_template_jinja default_system_message train_on_inputs special_tokens tokens
pad_to_sequence_len lora_model_dir lora_fan_in_fan_out peft_use_rslora loraplus_lr_ratio loraplus_lr_embedding
wandb_project wandb_entity wandb_watch wandb_name wandb_log_model wandb_mode mlflow_tracking_uri num_epochs max_steps
lr_scheduler learning_rate warmup_steps warmup_ratio evals_per_epoch eval_steps saves_per_epoch save_steps
save_strategy save_total_limit eval_table_size eval_max_new_tokens debug weight_decay logging_steps
early_stopping_patience resume_from_checkpoint auto_resume_from_checkpoints local_rank seed hub_model_id
hub_strategy max_grad_norm adam_beta1 adam_beta2 adam_epsilon eval_batch_size tf32 bnb_4bit_quant_type
bnb_4bit_compute_dtype bnb_4bit_use_double_quant lora_bias lora_task_type trainer shuffle_merged_datasets
dataset_processes dataloader_num_workers dataloader_pin_memory dataloader_prefetch_factor
load_best_model_at_end save_safetensors flash_attn_cross_entropy flash_attn_rms_norm flash_attn_fuse_qkv
flash_attn_fuse_mlp sample_packing_eff_est total_num_tokens eval_causal_lm_metrics do_bench_eval
""".split()
)


def _precision(value: Any) -> bool:
    return value is True or value == "auto"


def read(path: Path, doc: dict[str, Any]) -> Job:
    r = Reading("axolotl", path, doc)
    r.take("base_model", "model", str)
    adapter = r.get("adapter")
    if adapter in ("lora", "qlora"):
        quantized = adapter == "qlora" or r.get("load_in_4bit") is True
        r.fields["tuning"] = "qlora" if quantized else "lora"
    elif adapter not in (None, ""):
        r.problems.append(f"{r.where}adapter: {adapter!r} is not allowed; allowed: lora, qlora, or unset (full)")
    else:
        r.fields["tuning"] = "full"
    r.ignore(["load_in_4bit"])
    r.take("lora_r", "lora_r")
    r.take("lora_alpha", "lora_alpha")
    r.take("lora_dropout", "lora_dropout")
    if r.get("lora_target_linear") is True:
        r.fields["lora_targets"] = "all-linear"
    else:
        r.take("lora_target_modules", "lora_targets")
    r.take("sequence_len", "seq")
    r.take("micro_batch_size", "batch")
    r.take("gradient_accumulation_steps", "grad_accum")
    ckpt = r.get("gradient_checkpointing")
    if ckpt not in (None, False):
        r.fields["grad_ckpt"] = True
        if ckpt is not True:
            r.notes.append(f"gradient_checkpointing: {ckpt!r} is predicted as plain checkpointing of every block")
    if _precision(r.get("bf16")):
        r.fields["precision"] = "bf16"
    elif _precision(r.get("fp16")):
        r.fields["precision"] = "fp16"
    if r.has("optimizer"):
        r.doc = {**doc, "optim": doc["optimizer"]}  # the Trainer's optim, under axolotl's name
        r.take("optim", "optimizer", lambda v: trainer.optimizer_names.canonical(v, key=r.where + "optimizer"))
        r.doc = doc
    r.ignore(["optimizer"])
    if r.get("flash_attention") is True:
        r.fields["attn"] = "flash_attention_2"
    elif r.get("sdp_attention") is True:
        r.fields["attn"] = "sdpa"
    try:
        trainer.deepspeed_of(r)
        fsdp = trainer.fsdp_of(r)
    except trainer.UserError as e:
        r.problems += e.problems
        fsdp = None
    if fsdp is not None:
        r.fields["strategy"], r.fields["offload"] = fsdp
    r.ignore(["fsdp_version", "fsdp_config", "bf16", "fp16"])
    r.unmodelled(UNMODELLED)
    r.ignore(IGNORED)
    r.rest()
    return r.job()
