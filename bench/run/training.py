"""Training steps of one cell: model, method, precision, optimizer, timed steps.

``train(cell, spec, device)`` builds the model from its config with random
weights, applies the cell (LoRA/QLoRA, ZeRO/FSDP/DDP, precision, gradient
checkpointing, optimizer) and runs ``warmup + steps`` real optimizer steps of
``grad_accum`` micro-batches of random token ids (``labels = input_ids``; an
encoder-decoder model gets ``seq`` source and ``target_seq`` label tokens).

Precision, as in the reference protocol:

- ``fp32``: fp32 weights, no autocast;
- ``fp16``/``bf16`` (full tuning): fp32 weights under ``torch.autocast``,
  fp16 with a ``GradScaler``; under ZeRO the DeepSpeed ``fp16``/``bf16``
  sections instead, under FSDP its ``MixedPrecisionPolicy``;
- ``pure-bf16``: the weights themselves (hence grads and AdamW states) in bf16;
- LoRA/QLoRA: the frozen base in the compute dtype, no autocast (see
  ``bench.run.adapters``).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from bench import models
from bench.cell import Cell
from bench.run import adapters, optimizers, parallel, ranks

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "pure-bf16": torch.bfloat16}


def weight_dtype(cell: Cell) -> torch.dtype:
    """The dtype the model is built in (before any strategy converts it)."""
    if cell.strategy.startswith("zero"):
        return torch.float32
    if cell.tuning in ("lora", "qlora"):
        return DTYPES[cell.precision]
    return torch.bfloat16 if cell.precision == "pure-bf16" else torch.float32


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters; PEFT's count where it knows 4-bit packing."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(total), int(trainable)
    return models.count_params(model), sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class Setup:
    """A model ready to step, and how to step it."""

    cell: Cell
    module: Any
    """What the batch goes into: the model, its DDP wrapper or the DeepSpeed engine."""
    input_device: torch.device
    vocab_size: int
    encoder_decoder: bool
    parameters: int
    trainable_parameters: int
    optimizer: torch.optim.Optimizer | None = None
    deepspeed: bool = False
    autocast: torch.dtype | None = None
    scaler: Any = None
    out: Any = None
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    @property
    def hold_output(self) -> bool:
        """Keep the output until the next forward returns (plain loops); FSDP keeps only the loss."""
        return self.cell.strategy != "fsdp"

    def batch(self) -> dict[str, torch.Tensor]:
        c = self.cell
        ids = torch.randint(0, self.vocab_size, (c.batch, c.seq), generator=self.generator)
        labels = ids
        if self.encoder_decoder:
            labels = torch.randint(0, self.vocab_size, (c.batch, c.decoder_seq), generator=self.generator)
        return {"input_ids": ids.to(self.input_device), "labels": labels.to(self.input_device)}

    def micro_step(self) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns the (detached) loss without a device sync."""
        batch = self.batch()
        if self.deepspeed:
            loss = self.module(**batch).loss
            self.module.backward(loss)
            self.module.step()  # DeepSpeed steps the optimizer at the accumulation boundary
            return loss.detach()
        ctx = (torch.autocast(self.input_device.type, dtype=self.autocast) if self.autocast is not None
               else contextlib.nullcontext())
        with ctx:
            if self.hold_output:
                # `self.out = ...` keeps the previous output (logits, KV cache with use_cache) alive
                # until this forward returns, as a loop's `out = model(**batch)` does (the predictor models it)
                self.out = self.module(**batch)
                loss = self.out.loss / self.cell.grad_accum
            else:  # FSDP, like DeepSpeed above: the loop keeps only the loss
                loss = self.module(**batch).loss / self.cell.grad_accum
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return loss.detach() * self.cell.grad_accum

    def optimizer_step(self) -> None:
        if self.deepspeed:
            return
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def setup(cell: Cell, spec: models.ModelSpec, device: str) -> Setup:
    """Build the model and apply every part of the cell to it."""
    dtype = weight_dtype(cell)
    where = parallel.build_on(cell, device)
    enc_dec = spec.is_encoder_decoder
    if cell.tuning == "qlora":
        model = adapters.build_qlora_base(spec, cell, device, ranks.local_rank(), dtype)
    else:
        model = models.build(spec, device=where, dtype=dtype, attn=cell.attn)
        if cell.grad_ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = cell.use_cache
    vocab = int(getattr(model.config, "vocab_size", None) or spec.config["vocab_size"])
    if cell.tuning in ("lora", "qlora"):
        model = adapters.apply_lora(model, cell, spec)
    total, trainable = count_parameters(model)
    model.train()
    input_device = torch.device(f"cuda:{ranks.local_rank()}" if device == "cuda" else "cpu")
    s = Setup(cell=cell, module=model, input_device=input_device, vocab_size=vocab, encoder_decoder=enc_dec,
              parameters=total, trainable_parameters=trainable)
    if cell.strategy != "none":
        parallel.init(device)
    if cell.strategy.startswith("zero"):
        hidden = spec.config.get("hidden_size") or spec.config.get("d_model") or spec.config.get("n_embd")
        opt = optimizers.build(cell.optimizer, model.parameters(), device)  # params still on the CPU here
        s.module = parallel.deepspeed_engine(model, opt, cell, hidden, device)
        s.deepspeed = True
        return s
    if cell.strategy == "fsdp":
        s.module = parallel.fsdp(model, cell, device)
    elif cell.strategy == "ddp":
        s.module = parallel.ddp(model, device)
    s.optimizer = optimizers.build(cell.optimizer, model.parameters(), device, sharded=cell.strategy == "fsdp")
    half = cell.precision in ("fp16", "bf16")
    if half and cell.tuning == "full" and cell.strategy != "fsdp":
        s.autocast = DTYPES[cell.precision]
    if cell.precision == "fp16":
        s.scaler = torch.amp.GradScaler(input_device.type)
    return s


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train(cell: Cell, spec: models.ModelSpec, device: str,
          before_first_step: Callable[[], None] | None = None) -> dict[str, Any]:
    """Set the cell up and run its steps; returns the timing part of ``measured``."""
    s = setup(cell, spec, device)
    _sync(device)
    after_build = torch.cuda.memory_allocated() if device == "cuda" else None
    if before_first_step is not None:
        before_first_step()
    times: list[float] = []
    loss = torch.tensor(float("nan"))
    for _ in range(cell.warmup + cell.steps):
        t0 = time.perf_counter()
        for _ in range(cell.grad_accum):
            loss = s.micro_step()
        s.optimizer_step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    world = ranks.world_size()
    final = float(loss)
    return {
        "parameters": s.parameters,
        "trainable_parameters": s.trainable_parameters,
        "after_build_torch_allocated_bytes": after_build,
        "warmup_step_times_seconds": times[:cell.warmup],
        "step_times_seconds": times[cell.warmup:],
        "final_loss": final if math.isfinite(final) else None,
        "samples_per_step": cell.batch * cell.grad_accum * world,
        "tokens_per_step": cell.batch * cell.grad_accum * world * (
            cell.seq + (cell.decoder_seq if spec.is_encoder_decoder else 0)),
    }
