"""LoRA and QLoRA, applied to a freshly built model the way PEFT users do.

LoRA: ``LoraConfig(r, lora_alpha, lora_dropout, target_modules)`` with the
targets ``bench.models.lora_target_modules`` names (the cell's
``lora_targets``, else PEFT's default for the architecture, else every linear
layer), the same the predictor assumes. The frozen
base is in the cell's compute dtype (``fp16``/``bf16``/``pure-bf16`` -> half,
``fp32`` -> fp32); the adapters stay fp32 (PEFT's default) except under
``pure-bf16``, where they are bf16 too. This is the reference protocol's
``lora`` row with ``base: bf16``.

QLoRA: the base goes through transformers' own bitsandbytes loader (nf4,
double quantization, compute dtype = the cell's precision), because that is
the code path QLoRA users run; it needs a checkpoint, so the random model is
saved to a temporary folder first. Then ``prepare_model_for_kbit_training``
(which upcasts the remaining non-quantized weights to fp32, as in the QLoRA
recipe) and the same LoRA adapters. CUDA only.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from bench import models
from bench.cell import Cell


def lora_config(cell: Cell, spec: models.ModelSpec) -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=cell.lora_r,
        lora_alpha=cell.lora_alpha,
        lora_dropout=cell.lora_dropout,
        target_modules=models.lora_target_modules(spec, cell.lora_targets),
        task_type=TaskType.SEQ_2_SEQ_LM if spec.is_encoder_decoder else TaskType.CAUSAL_LM,
    )


def apply_lora(model: torch.nn.Module, cell: Cell, spec: models.ModelSpec) -> torch.nn.Module:
    """Wrap ``model`` in PEFT LoRA adapters; only the adapters train."""
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(cell, spec))
    if cell.precision == "pure-bf16":
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    return model


def build_qlora_base(spec: models.ModelSpec, cell: Cell, device: str, local_rank: int,
                     dtype: torch.dtype) -> torch.nn.Module:
    """The 4-bit (nf4) base model on ``cuda:local_rank``, ready for adapters."""
    if device != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("tuning qlora needs bitsandbytes on a CUDA GPU; it cannot run on --device cpu")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError("tuning qlora needs the bitsandbytes package (pip install bitsandbytes)") from None
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="bench-qlora-") as folder:
        models.build(spec, device="cpu", dtype=dtype, attn=cell.attn).save_pretrained(folder)
        kwargs = {"attn_implementation": cell.attn} if cell.attn else {}
        model = models.model_class(spec).from_pretrained(
            folder, quantization_config=quant, dtype=dtype, device_map={"": local_rank}, **kwargs)
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=cell.grad_ckpt,
        gradient_checkpointing_kwargs={"use_reentrant": False})
