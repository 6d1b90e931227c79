"""LoRA and QLoRA, applied to a freshly built model the way PEFT users do.

LoRA: ``LoraConfig(r, lora_alpha, lora_dropout, target_modules)`` from the
recipe's ``Adapters``, with the targets ``bench.models.lora_target_modules``
names (the cell's ``lora_targets``, else PEFT's default for the architecture,
else every linear layer); the predictor builds the same config
(``lora_config``). The frozen base is in the recipe's build dtype; the
adapters in ``Adapters.dtype`` (fp32, PEFT's default; bf16 under
``pure-bf16``). This is the reference protocol's ``lora`` row with
``base: bf16``.

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

from bench import dsconfig, models
from bench.cell import Cell
from bench.dtypes import torch_dtype
from bench.recipe import Adapters, Recipe


def lora_config(adapters: Adapters, spec: models.ModelSpec) -> Any:
    """PEFT's ``LoraConfig`` of a recipe's adapters (runner and predictor alike)."""
    from peft import LoraConfig

    return LoraConfig(
        r=adapters.r,
        lora_alpha=adapters.alpha,
        lora_dropout=adapters.dropout,
        target_modules=models.lora_target_modules(spec, adapters.targets),
        task_type=adapters.task_type,
    )


def apply_lora(model: torch.nn.Module, adapters: Adapters, spec: models.ModelSpec) -> torch.nn.Module:
    """Wrap ``model`` in PEFT LoRA adapters; only the adapters train."""
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(adapters, spec))
    if adapters.dtype != "fp32":
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(torch_dtype(adapters.dtype))
    return model


def build_qlora_base(
    spec: models.ModelSpec, cell: Cell, recipe: Recipe, device: str, local_rank: int, dtype: torch.dtype
) -> torch.nn.Module:
    """The 4-bit (nf4) base model on ``cuda:local_rank``, ready for adapters."""
    if device != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("tuning qlora needs bitsandbytes on a CUDA GPU; it cannot run on --device cpu")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError("tuning qlora needs the bitsandbytes package (pip install bitsandbytes)") from None
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    extra = {}
    if recipe.sharded:  # 4-bit weights stored in the compute dtype, so ZeRO-3 / FSDP2 can shard them
        extra["bnb_4bit_quant_storage"] = dtype
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        **extra,
    )
    keep = None
    if recipe.zero_init:  # from_pretrained builds under zero.Init while a DeepSpeed ZeRO-3 config is live
        from transformers.integrations import HfDeepSpeedConfig

        keep = HfDeepSpeedConfig(dsconfig.deepspeed_config(cell, dsconfig.hidden_size_of(spec.config)))
    with tempfile.TemporaryDirectory(prefix="bench-qlora-") as folder:
        models.build(
            spec, device="cpu", dtype=dtype, attn=cell.attn, head=recipe.head, num_labels=recipe.num_labels
        ).save_pretrained(folder)
        kwargs = {"attn_implementation": cell.attn} if cell.attn else {}
        model = models.model_class(spec, recipe.head).from_pretrained(
            folder,
            quantization_config=quant,
            dtype=dtype,
            device_map=None if recipe.zero_init else {"": local_rank},
            **kwargs,
        )
    del keep
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=recipe.grad_ckpt, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
