"""LLaMA-Factory YAML (``llamafactory-cli train FILE``), read as its argument classes read it.

Model and fine-tuning keys (``hparams/model_args.py``, ``finetuning_args.py``):
``model_name_or_path`` -> model; ``finetuning_type`` ``full`` / ``lora`` (``freeze``
is refused: bench has no partial freezing); ``quantization_bit: 4`` with
bitsandbytes -> qlora; ``lora_rank`` (default 8), ``lora_alpha`` (default twice the
rank), ``lora_dropout`` (default 0), ``lora_target`` (``all`` -> every linear layer);
``cutoff_len`` -> seq; ``flash_attn`` (``fa2``, ``sdpa``); ``pure_bf16`` -> pure-bf16.
Everything else is HF ``TrainingArguments`` (``Seq2SeqTrainingArguments``) and
read by ``bench.readers.trainer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.jobfile import Job, Reading
from bench.readers import trainer

UNMODELLED = {
    "packing": "packed samples: attention over the packed length, no padding",
    "neat_packing": "packing without cross-attention between samples",
    "enable_liger_kernel": "Liger's fused kernels (chunked loss, fused RMSNorm/RoPE/SwiGLU) keep fewer activations",
    "use_unsloth": "Unsloth kernels",
    "use_unsloth_gc": "Unsloth's offloaded checkpointing",
    "use_galore": "GaLore projections of the optimizer states",
    "use_apollo": "APOLLO optimizer states",
    "use_badam": "BAdam block-wise updates",
    "use_dora": "DoRA's magnitude vectors and extra activations",
    "use_rslora": None,
    "pissa_init": None,
    "additional_target": "fully trained extra modules beside the adapters",
    "upcast_layernorm": "layer norms upcast to fp32",
    "upcast_lmhead_output": "lm_head output upcast to fp32",
    "disable_gradient_checkpointing": None,
    "shift_attn": "shifted sparse attention",
    "rope_scaling": "a RoPE scaling other than the config's",
    "moe_aux_loss_coef": "MoE auxiliary loss",
    "quantization_method": None,
    "double_quantization": None,
    "freeze_vision_tower": None,
}
IGNORED = tuple(
    """stage do_train do_eval do_predict dataset eval_dataset dataset_dir template max_samples
overwrite_cache preprocessing_num_workers dataloader_num_workers plot_loss trust_remote_code ddp_timeout
val_size tokenized_path mix_strategy streaming buffer_size interleave_probs train_on_prompt mask_history
adapter_name_or_path export_dir infer_backend ref_model pref_beta pref_loss lora_rank lora_alpha lora_dropout
lora_target finetuning_type quantization_bit model_name_or_path cutoff_len flash_attn pure_bf16 image_max_pixels
video_max_pixels resume_lora_training create_new_adapter hf_hub_token ms_hub_token om_hub_token print_param_status
include_effective_tokens_per_second default_system enable_thinking
""".split()
)


def read(path: Path, doc: dict[str, Any]) -> Job:
    r = Reading("llamafactory", path, doc)
    r.take("model_name_or_path", "model", str)
    kind = r.get("finetuning_type", "lora")  # LLaMA-Factory's default
    if kind not in ("full", "lora"):
        r.problems.append(f"{r.where}finetuning_type: {kind!r} is not modelled; allowed: full, lora")
    bits = r.get("quantization_bit")
    method = r.get("quantization_method", "bnb")
    if bits not in (None, 4) or (bits == 4 and method not in ("bnb", "bitsandbytes")):
        r.problems.append(
            f"{r.where}quantization_bit: {bits!r} ({method}) is not modelled; allowed: 4 with bitsandbytes, or unset"
        )
    r.fields["tuning"] = "qlora" if kind == "lora" and bits == 4 else kind
    if kind == "lora":
        rank = r.get("lora_rank", 8)
        r.fields.update(lora_r=rank, lora_alpha=r.get("lora_alpha", rank * 2), lora_dropout=r.get("lora_dropout", 0.0))
        target = r.get("lora_target", "all")
        targets = [t.strip() for t in target.split(",")] if isinstance(target, str) else target
        r.fields["lora_targets"] = "all-linear" if targets == ["all"] else targets
    r.take("cutoff_len", "seq")
    attn = r.get("flash_attn", "auto")
    if attn in ("fa2", "sdpa", "disabled"):
        r.fields["attn"] = {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager"}[attn]
    trainer.read_training_arguments(r)
    if r.get("pure_bf16") is True:
        r.fields["precision"] = "pure-bf16"
    if r.get("disable_gradient_checkpointing") is not True:  # LLaMA-Factory checkpoints unless told not to
        r.fields["grad_ckpt"] = True
    r.unmodelled({k: v for k, v in UNMODELLED.items() if v})
    r.ignore(k for k, v in UNMODELLED.items() if not v)
    r.ignore(IGNORED)
    r.rest()
    return r.job()
