"""The recipe of a cell: every decision ``bench run`` acts on and ``bench predict`` models.

The predictor is exact only because it models the very loop the runner runs.
So the decisions both sides depend on are made here, once, from the
normalized cell, and read by the child (``bench.methods``) and by the
predictor (``bench.predict``) alike; neither re-derives a method from the
cell's strings. Torch-free: the parent and the reports can read it too.

What the recipe decides, and why (the reference protocol, ``tests/data``):

- **engine**: ``plain`` (one process, or a one-rank world), ``ddp``,
  ``deepspeed`` (ZeRO-1/2/3, with its ``dsconfig.ZeroSettings``) or ``fsdp``
  (FSDP2 ``fully_shard`` on every block, then the root).
- **build**: the dtype the model is built in and where. ZeRO-3 builds it
  under ``deepspeed.zero.Init`` (as the HF Trainer and accelerate do), in the
  compute dtype, partitioned as it is built; ZeRO-1/2 (and ZeRO-3 with
  ``zero_init: false``) get it on the CPU in fp32 and ``deepspeed.initialize``
  casts and places it; FSDP over several ranks or
  with CPU offload is built on the meta device, sharded, and each rank
  materializes its shards only (as torchtitan does); everything else is built
  on its GPU. LoRA/QLoRA build the frozen
  base in the compute dtype; full tuning in fp32 except ``pure-bf16``.
- **precision in the step**: ``autocast`` to the half dtype for full mixed
  precision in plain/DDP loops, with loss scaling for fp16; DeepSpeed and
  FSDP instead run the micro-step on weights in the half dtype
  (``compute_dtype``), without autocast.
- **what the loop keeps**: plain/DDP loops hold ``out = model(**batch)``
  until the next forward returns; DeepSpeed and FSDP loops keep only the loss.
- **the loop** (``loop``): bench's own, or the HF ``transformers.Trainer``
  (``bench.methods.trainer``). The Trainer's ``compute_loss`` returns the loss
  and drops the output before ``accelerator.backward``; with ``bf16``/``fp16``
  outside DeepSpeed, accelerate wraps the forward in ``autocast`` whatever
  trains (LoRA adapters too) and converts the output's half tensors to fp32
  (``ConvertOutputsToFp32``: an fp32 copy of the logits until the output is
  dropped); ``optim`` builds the optimizer (``adamw`` is ``adamw_torch_fused``,
  also as DeepSpeed's client optimizer); ``model.zero_grad()`` (``set_to_none``)
  after each optimizer step, as the plain loop; ``torch_empty_cache_steps`` is
  left unset, so the cache is never emptied. Left out as below the
  allocator's rounding: ``clip_grad_norm_``'s per-tensor norms (one scalar
  each) and the separate ``labels`` tensor of each prefetched micro-batch
  (``batch x seq x 8`` bytes).
- **adapters** (``Adapters``) and the 4-bit base of QLoRA.
- **the head** (``head``, ``num_labels``) the model is built with, and the
  labels of a micro-batch it implies (``labels``): the input ids themselves
  (causal LM), target token ids (encoder-decoder), a class id per sample
  (``seq-cls``; one float under regression, ``num_labels: 1``) or per token
  (``token-cls``); PEFT's ``task_type`` follows it (``SEQ_CLS``/``TOKEN_CLS``
  keep the classifier trainable, ``modules_to_save``).
- **optimizer flavour**: ``adamw`` is fused AdamW on the GPU in plain/DDP
  loops, torch's default foreach AdamW as DeepSpeed's client optimizer and on
  FSDP2 shards.
- **memory outside the allocator** (``bench.overhead``), which also sizes the
  cap when a larger card emulates the target.
- **the blocks**: ``block_of``, the one definition of a transformer block.
- **generation over several cards** (``split: layers``): one process, ``devices`` cards;
  the blocks are placed by accelerate's ``infer_auto_device_map`` (``balanced`` through
  ``get_balanced_memory`` first, as ``device_map="balanced"``), each card's room being
  its memory less what it needs beside weights. The map itself is computed once, by
  ``bench.predict.split.placement``, which the child also calls.
- **quantized generation** (``Quantization``): bitsandbytes through transformers'
  ``BitsAndBytesConfig``, the model loaded quantized on the GPU.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from bench import dsconfig, models, overhead
from bench.dsconfig import ZERO_STAGES
from bench.dtypes import HALF_OF

ENGINES = ("plain", "ddp", "deepspeed", "fsdp")
SHARDED = ("deepspeed", "fsdp")
"""Engines whose loop keeps only the loss and runs on half-dtype weights."""
ADAPTER_TUNINGS = ("lora", "qlora")


@dataclass(frozen=True, kw_only=True)
class Adapters:
    """PEFT LoRA adapters, as ``LoraConfig`` is given them."""

    r: int
    alpha: int
    dropout: float
    targets: tuple[str, ...] | None
    """The cell's ``lora_targets``; ``None``: ``models.lora_target_modules`` (PEFT's default)."""
    task_type: str
    """``CAUSAL_LM``, ``SEQ_2_SEQ_LM`` (encoder-decoder models), ``SEQ_CLS`` or ``TOKEN_CLS``
    (the classification heads: ``task_type``)."""
    dtype: str
    """The adapters' own dtype: fp32 (PEFT's default), bf16 under ``pure-bf16``."""


@dataclass(frozen=True, kw_only=True)
class Quantization:
    """Weights of a ``task: infer`` model quantized by bitsandbytes as it loads."""

    kind: str
    """``int8`` (``load_in_8bit``, LLM.int8 with its default outlier threshold 6.0) or
    ``nf4`` / ``fp4`` (``load_in_4bit``, ``bnb_4bit_quant_type``)."""
    double: bool
    """4-bit: ``bnb_4bit_use_double_quant``."""
    compute_dtype: str
    """``bnb_4bit_compute_dtype`` and the dtype of the weights left unquantized."""

    def config_kwargs(self) -> dict:
        """``BitsAndBytesConfig`` keyword arguments (dtypes by name; the torch side converts)."""
        if self.kind == "int8":
            return {"load_in_8bit": True}
        return {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": self.kind,
            "bnb_4bit_use_double_quant": self.double,
            "bnb_4bit_compute_dtype": self.compute_dtype,
        }


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """What one cell's run is, decided once (see the module docstring)."""

    engine: str
    """``plain`` | ``ddp`` | ``deepspeed`` | ``fsdp``."""
    ranks: int
    zero: dsconfig.ZeroSettings | None
    """DeepSpeed's settings (the cell's ``ds_config`` or bench's own); ``None`` off DeepSpeed."""
    offload: str
    """``none`` | ``optimizer`` | ``all``, as the cell says."""
    build_dtype: str
    """The dtype the model is built in, before any strategy converts it."""
    build_on_device: bool
    """Built directly on its GPU (else on the CPU or the meta device, and the strategy places it)."""
    build_on_meta: bool
    """FSDP2 over several ranks or with offload: built on the meta device, ``fully_shard``-ed,
    then each rank materializes only its shards (``to_empty`` + ``init_weights``)."""
    autocast: str | None
    """``torch.autocast`` dtype around forward and loss (plain/DDP full mixed precision)."""
    loss_scaling: bool
    """A ``GradScaler`` (fp16 outside DeepSpeed, whose ``fp16`` section scales itself)."""
    compute_dtype: str
    """The dtype of the weights the micro-step reads."""
    fsdp_param_dtype: str | None
    """FSDP2 ``MixedPrecisionPolicy(param_dtype=..., reduce_dtype=fp32)``; ``None``: no policy."""
    quantized_base: str | None
    """``nf4`` for QLoRA (bitsandbytes, double quantization); ``None``: not quantized."""
    adapters: Adapters | None
    loop: str
    """``plain`` (bench's loop, ``bench.methods.training``) or ``trainer`` (``transformers.Trainer``)."""
    holds_output: bool
    """The loop keeps the model output until the next forward returns (else only the loss,
    the output dropped as the forward returns)."""
    outputs_to_fp32: bool
    """accelerate's ``ConvertOutputsToFp32`` around the forward (Trainer, native AMP): the
    output's fp16/bf16 tensors are replaced by fp32 copies."""
    empty_cache_before_training: bool
    """The Trainer's ``accelerator.free_memory()`` as ``train()`` starts: ``torch.cuda.empty_cache()``
    once the model is built, before the optimizer (or DeepSpeed engine) is made."""
    trainer_precision: str | None
    """``bf16`` | ``fp16``: the ``TrainingArguments`` flag the Trainer loop sets; ``None``: neither."""
    optimizer: str
    """``adamw-fused`` | ``adamw-foreach`` | ``sgd`` | ``adafactor`` | ``adamw-8bit``."""
    zero_init: bool
    """ZeRO-3: the model is built under ``deepspeed.zero.Init`` in ``compute_dtype``, each
    parameter partitioned as soon as its module is built (on the GPU, or on the host with
    parameter offload); no rank ever holds the whole model."""
    freeze: int
    """Full tuning: the embeddings and blocks ``0 .. freeze-1`` do not train (``is_frozen``)."""
    grad_ckpt: bool
    use_cache: bool
    """The model's KV cache stays on in training (transformers turns it off under checkpointing)."""
    outside_allocator_bytes: int
    """Device memory the process holds outside the caching allocator (``bench.overhead``), per card."""
    split: str = "none"
    """``layers``: generation with the blocks placed over ``devices`` cards (accelerate's hooks
    move the hidden states between them); ``none``: one card per rank."""
    split_balance: str = "balanced"
    """``balanced`` | ``sequential``: how accelerate is asked to place the blocks."""
    devices: int = 1
    """Cards one process uses (``gpus`` under ``split: layers``, else 1)."""
    quantization: Quantization | None = None
    """Quantized generation; ``None``: weights in ``build_dtype``."""
    head: str = "lm"
    """The head the model is built with (``models.build``): ``lm`` | ``seq-cls`` | ``token-cls``."""
    num_labels: int = 2
    """Classes of a classification head."""

    @property
    def deepspeed(self) -> bool:
        return self.engine == "deepspeed"

    @property
    def fsdp(self) -> bool:
        return self.engine == "fsdp"

    @property
    def sharded(self) -> bool:
        return self.engine in SHARDED

    @property
    def trace_dtypes(self) -> tuple[str, str | None]:
        """(weight dtype, autocast dtype) of the micro-step as it runs on the GPU."""
        if self.sharded:
            return self.compute_dtype, None
        return self.build_dtype, self.autocast


@dataclass(frozen=True)
class Labels:
    """The ``labels`` tensor of a micro-batch (runner and predictor alike)."""

    shape: tuple[int, ...] | None
    """``None``: the input ids themselves (a causal LM shifts them inside its loss)."""
    dtype: str
    """``int64`` (token or class ids) or ``fp32`` (regression targets)."""
    classes: int | None
    """Class ids are drawn below this; ``None``: token ids, below the vocabulary size."""


def labels(head: str, num_labels: int, batch: int, seq: int, target_seq: int, encoder_decoder: bool) -> Labels:
    """What a micro-batch's ``labels`` are for ``head`` (see the module docstring)."""
    if head == "seq-cls":
        return Labels((batch,), "fp32" if num_labels == 1 else "int64", num_labels)
    if head == "token-cls":
        return Labels((batch, seq), "int64", num_labels)
    return Labels((batch, target_seq), "int64", None) if encoder_decoder else Labels(None, "int64", None)


def task_type(head: str, encoder_decoder: bool) -> str:
    """PEFT's ``task_type`` of the adapters on a model with ``head``."""
    types = {"seq-cls": "SEQ_CLS", "token-cls": "TOKEN_CLS"}
    return types.get(head) or ("SEQ_2_SEQ_LM" if encoder_decoder else "CAUSAL_LM")


def engine_of(strategy: str) -> str:
    if strategy in ZERO_STAGES:
        return "deepspeed"
    return {"none": "plain", "ddp": "ddp", "fsdp": "fsdp"}[strategy]


def uses_deepspeed(cell) -> bool:
    """Whether a cell runs under DeepSpeed (its ``ds_config`` applies)."""
    return cell.strategy in ZERO_STAGES


def trains_adapters(cell) -> bool:
    return cell.tuning in ADAPTER_TUNINGS


def _build_dtype(cell, engine: str) -> str:
    if not cell.trains:
        return HALF_OF[cell.precision]  # generation: the weights in the cell's dtype
    if engine == "deepspeed":
        return "fp32"  # deepspeed.initialize casts to the half dtype itself
    if trains_adapters(cell):
        return HALF_OF[cell.precision]  # the frozen base in the compute dtype
    return "bf16" if cell.precision == "pure-bf16" else "fp32"


def _optimizer(name: str, engine: str, loop: str) -> str:
    if name == "adamw" and loop == "trainer":  # optim adamw_torch_fused, in every engine
        return "adamw-fused"
    if name == "adamw":  # torch.optim.AdamW() with no flags is foreach (torch/optim/optimizer.py)
        return "adamw-foreach" if engine in SHARDED else "adamw-fused"
    return name


def _trainer_precision(cell, engine: str) -> str | None:
    """The Trainer's ``bf16``/``fp16`` flag. ``pure-bf16`` (bf16 weights, no mixed precision)
    sets neither outside DeepSpeed; under DeepSpeed the flag must match the config's
    ``bf16.enabled`` (the Trainer refuses a mismatch), and DeepSpeed casts the weights itself."""
    if cell.precision in ("fp16", "bf16"):
        return cell.precision
    if cell.precision == "pure-bf16" and engine == "deepspeed":
        return "bf16"
    return None


@functools.lru_cache(maxsize=4096)
def of(cell) -> Recipe:
    """The recipe of a normalized ``Cell`` (cached: the same cell, the same object)."""
    engine = engine_of(cell.strategy)
    half = cell.precision in ("fp16", "bf16")
    loop = cell.loop
    trainer = loop == "trainer"
    build_dtype = _build_dtype(cell, engine)
    adapters = None
    if trains_adapters(cell):
        spec = models.resolve(cell.model)
        adapters = Adapters(
            r=cell.lora_r,
            alpha=cell.lora_alpha,
            dropout=cell.lora_dropout,
            targets=cell.lora_targets,
            task_type=task_type(getattr(cell, "head", "lm"), spec.is_encoder_decoder),
            dtype="bf16" if cell.precision == "pure-bf16" else "fp32",
        )
    zero = None
    if engine == "deepspeed":
        zero = dsconfig.settings(cell, dsconfig.hidden_size_of(models.resolve(cell.model).config))
    zero_init = bool(zero and zero.stage == 3 and cell.zero_init is not False)
    if zero_init:  # zero.Init allocates in the DeepSpeed config's dtype on the device, then partitions
        build_dtype = HALF_OF[cell.precision]
    on_meta = engine == "fsdp" and (cell.offload == "all" or cell.gpus > 1) and cell.tuning != "qlora"
    built_on_cpu = engine == "deepspeed" and not zero_init and cell.tuning != "qlora"  # bnb loads on the GPU
    split = getattr(cell, "split", "none")
    quant = getattr(cell, "quant", "none")
    quantization = None
    if not cell.trains and quant != "none":
        quantization = Quantization(
            kind=quant, double=bool(getattr(cell, "quant_double", False)), compute_dtype=HALF_OF[cell.precision]
        )
    # full mixed precision autocasts in plain/DDP loops; accelerate's native AMP (the Trainer's
    # bf16/fp16 outside DeepSpeed) autocasts whatever trains, adapters over a half base too
    autocast = (
        cell.precision
        if cell.trains and half and engine in ("plain", "ddp") and (cell.tuning == "full" or trainer)
        else None
    )
    return Recipe(
        split=split,
        split_balance=getattr(cell, "split_balance", "balanced"),
        devices=cell.gpus if split != "none" else 1,
        quantization=quantization,
        head=getattr(cell, "head", "lm"),
        num_labels=getattr(cell, "num_labels", 2),
        engine=engine,
        ranks=1 if split != "none" else cell.gpus,
        zero=zero,
        offload=cell.offload,
        build_dtype=build_dtype,
        build_on_device=not (built_on_cpu or on_meta),
        build_on_meta=on_meta,
        autocast=autocast,
        loss_scaling=cell.precision == "fp16" and engine != "deepspeed",
        compute_dtype=HALF_OF[cell.precision],
        fsdp_param_dtype=cell.precision if engine == "fsdp" and half else None,
        quantized_base="nf4" if cell.tuning == "qlora" else None,
        adapters=adapters,
        loop=loop,
        holds_output=engine in ("plain", "ddp") and not trainer,
        outputs_to_fp32=trainer and autocast is not None,
        empty_cache_before_training=trainer,
        trainer_precision=_trainer_precision(cell, engine) if trainer else None,
        optimizer=_optimizer(cell.optimizer, engine, loop),
        zero_init=zero_init,
        freeze=cell.freeze,
        grad_ckpt=cell.grad_ckpt,
        use_cache=cell.use_cache and not cell.grad_ckpt,
        outside_allocator_bytes=overhead.outside_allocator_bytes(engine),
    )


_BLOCK_INDEX = re.compile(r"\d+(c\d+)?")


def block_of(name: str) -> str:
    """The transformer block holding a parameter or module named ``name``: the
    path up to its first ``ModuleList`` index (``model.layers.3``,
    ``encoder.block.0``; ``1c<j>`` is a copy made by the predictor's depth
    replication), or '' for what lies outside every block (embeddings, final
    norm, head). Every part of bench that needs "the blocks" (FSDP wrapping,
    ZeRO-3 fetch order, depth replication) asks here."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if _BLOCK_INDEX.fullmatch(part):
            return ".".join(parts[: i + 1])
    return ""


def block_index(name: str) -> int | None:
    """The index of the block holding ``name`` in its stack, or None outside every block."""
    block = block_of(name)
    return int(block.rsplit(".", 1)[-1].split("c")[0]) if block else None


def is_frozen(param_name: str, module_is_embedding: bool, freeze: int) -> bool:
    """Layer freezing: a parameter of an embedding outside the blocks, or of one of the
    first ``freeze`` blocks (of each stack), does not train."""
    if not freeze:
        return False
    index = block_index(param_name)
    return module_is_embedding if index is None else index < freeze


def is_block(module_name: str) -> bool:
    """Whether the module named ``module_name`` is itself a transformer block."""
    return bool(module_name) and block_of(module_name) == module_name
