"""Training steps of one cell: model, method, precision, optimizer, timed steps.

``train(cell, spec, device)`` builds the model from its config with random
weights, applies the cell (LoRA/QLoRA, ZeRO/FSDP/DDP, precision, gradient
checkpointing, optimizer) and runs ``warmup + steps`` real optimizer steps of
``grad_accum`` micro-batches of random token ids (``labels = input_ids``; an
encoder-decoder model gets ``seq`` source and ``target_seq`` label tokens; a
classification head random class ids, ``recipe.labels``).

Every decision the predictor models too (the dtype and place the model is
built in, autocast and loss scaling, adapters, the optimizer's flavour, what
the loop keeps between micro-steps) comes from the cell's ``bench.recipe``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bench import dsconfig, models, recipe as recipes
from bench.cell import Cell
from bench.dtypes import torch_dtype
from bench.methods import adapters, freezing, optimizers, parallel, ranks, storage
from bench.recipe import Recipe
from bench.worker import procmem


def recipe_for(cell: Cell) -> Recipe:
    """The recipe the child acts on (the predictor reads the same object)."""
    return recipes.of(cell)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters; PEFT's count where it knows 4-bit packing."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()  # type: ignore[operator]
        return int(total), int(trainable)
    trainable = sum(models.param_numel(p) for p in model.parameters() if p.requires_grad)
    return models.count_params(model), trainable


@dataclass
class Setup:
    """A model ready to step, and how to step it."""

    cell: Cell
    recipe: Recipe
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
    build_rss_increase: int | None = None
    """Peak host RSS while the model was built, over the RSS just before (libraries already loaded)."""
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    def batch(self) -> dict[str, torch.Tensor]:
        c = self.cell
        ids = torch.randint(0, self.vocab_size, (c.batch, c.seq), generator=self.generator)
        labels = random_labels(self.recipe, ids, c.decoder_seq, self.vocab_size, self.encoder_decoder, self.generator)
        return {"input_ids": ids.to(self.input_device), "labels": labels.to(self.input_device)}

    def micro_step(self) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns the (detached) loss without a device sync."""
        batch = self.batch()
        if self.deepspeed:
            loss = self.module(**batch).loss
            self.module.backward(loss)
            self.module.step()  # DeepSpeed steps the optimizer at the accumulation boundary
            return loss.detach()
        ctx = (
            torch.autocast(self.input_device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        with ctx:
            if self.recipe.holds_output:
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
            self.optimizer.step()  # type: ignore[union-attr]
        self.optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]


def random_labels(
    r: Recipe, ids: torch.Tensor, decoder_seq: int, vocab: int, encoder_decoder: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random ``labels`` for the samples of ``ids``, shaped as the recipe says (``recipe.labels``)."""
    want = recipes.labels(r.head, r.num_labels, ids.shape[0], ids.shape[1], decoder_seq, encoder_decoder)
    if want.shape is None:
        return ids
    if want.dtype == "fp32":
        return torch.randn(want.shape, generator=generator)
    return torch.randint(0, want.classes or vocab, want.shape, generator=generator)


def _host_mark() -> int:
    procmem.reset_peak_rss()
    return procmem.rss_bytes()


def _host_increase(before: int) -> int:
    return max(0, procmem.peak_rss_bytes() - before)


def build_model(
    cell: Cell, spec: models.ModelSpec, device: str, zero_init: Any = None, checkpointing: bool = True
) -> tuple[Any, int | None]:
    """The cell's model as its recipe builds it: (model, host RSS increase of the build).

    ``zero_init``: the ``deepspeed.zero.Init`` context ZeRO-3 builds under, or ``None`` for
    the plain loop's own (``parallel.zero_init``); the Trainer loop passes a null context,
    since transformers enters ``zero.Init`` itself once ``TrainingArguments(deepspeed=...)``
    exists. ``checkpointing`` False leaves gradient checkpointing to the caller (the Trainer).
    """
    r = recipe_for(cell)
    dtype = torch_dtype(r.build_dtype)
    here = f"cuda:{ranks.local_rank()}" if device == "cuda" else "cpu"
    models.model_class(spec, r.head)  # its modeling module imported before the build is measured
    if r.quantized_base:
        model = adapters.build_qlora_base(spec, cell, r, device, ranks.local_rank(), dtype)
        build_rss = None
    elif r.zero_init:
        parallel.init(device)
        ctx = parallel.zero_init(cell, dsconfig.hidden_size_of(spec.config), device) if zero_init is None else zero_init
        with ctx:
            before = _host_mark()
            model = models.build(spec, device=here, dtype=dtype, attn=cell.attn, **head_of(r))
            build_rss = _host_increase(before)
    else:
        where = here if r.build_on_device else ("meta" if r.build_on_meta else "cpu")
        before = _host_mark()
        model = models.build(spec, device=where, dtype=dtype, attn=cell.attn, **head_of(r))
        build_rss = None if r.build_on_meta else _host_increase(before)
    freezing.apply(model, r.freeze)
    if checkpointing and not r.quantized_base and r.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
    model.config.use_cache = r.use_cache  # type: ignore[union-attr]
    if r.adapters is not None:
        model = adapters.apply_lora(model, r.adapters, spec)
    return model, build_rss


def head_of(r: Recipe) -> dict[str, Any]:
    """``models.build``'s head arguments from the recipe."""
    return {"head": r.head, "num_labels": r.num_labels}


def vocab_size(model: Any, spec: models.ModelSpec) -> int:
    return int(getattr(model.config, "vocab_size", None) or spec.config["vocab_size"])


def setup(cell: Cell, spec: models.ModelSpec, device: str) -> Setup:
    """Build the model and apply every part of the cell's recipe to it."""
    r = recipe_for(cell)
    here = f"cuda:{ranks.local_rank()}" if device == "cuda" else "cpu"
    enc_dec = spec.is_encoder_decoder
    model, build_rss = build_model(cell, spec, device)
    vocab = vocab_size(model, spec)
    total, trainable = count_parameters(model)
    model.train()
    input_device = torch.device(here)
    s = Setup(
        cell=cell,
        recipe=r,
        module=model,
        input_device=input_device,
        vocab_size=vocab,
        encoder_decoder=enc_dec,
        parameters=total,
        trainable_parameters=trainable,
        build_rss_increase=build_rss,
    )
    if r.engine != "plain":
        parallel.init(device)
    if r.deepspeed:
        opt = optimizers.build(r.optimizer, model.parameters(), device)  # params still on the CPU here
        s.module = parallel.deepspeed_engine(model, opt, cell, dsconfig.hidden_size_of(spec.config), device)
        s.deepspeed = True
        return s
    if r.fsdp:
        s.module = parallel.fsdp(model, r, device)
        if r.build_on_meta:  # each rank allocates and initializes its own shards only
            before = _host_mark()
            parallel.materialize(model, "cpu" if r.offload == "all" else here)
            s.build_rss_increase = _host_increase(before)
    elif r.engine == "ddp":
        s.module = parallel.ddp(model, device)
    s.optimizer = optimizers.build(r.optimizer, model.parameters(), device)
    if r.autocast is not None:
        s.autocast = torch_dtype(r.autocast)
    if r.loss_scaling:
        s.scaler = torch.amp.GradScaler(input_device.type)
    return s


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train(
    cell: Cell, spec: models.ModelSpec, device: str, before_first_step: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Set the cell up and run its steps; returns the timing part of ``measured``.

    ``loop: trainer`` cells run through ``transformers.Trainer`` (``bench.methods.trainer``)
    and return the same fields."""
    if recipe_for(cell).loop == "trainer":
        from bench.methods import trainer

        return trainer.train(cell, spec, device, before_first_step)
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
    resident = storage.resident_bytes(s.module, s.optimizer, s.deepspeed)
    return timing_record(
        cell,
        spec,
        parameters=(s.parameters, s.trainable_parameters),
        after_build=after_build,
        build_rss=s.build_rss_increase,
        resident=resident,
        times=times,
        loss=float(loss),
    )


def timing_record(
    cell: Cell,
    spec: models.ModelSpec,
    *,
    parameters: tuple[int, int],
    after_build: int | None,
    build_rss: int | None,
    resident: dict[str, int],
    times: list[float],
    loss: float,
) -> dict[str, Any]:
    """The training part of ``measured``, the same for every loop."""
    world = ranks.world_size()
    return {
        "parameters": parameters[0],
        "trainable_parameters": parameters[1],
        "after_build_torch_allocated_bytes": after_build,
        "build_peak_host_rss_increase_bytes": build_rss,
        "resident_bytes": resident,
        "warmup_step_times_seconds": times[: cell.warmup],
        "step_times_seconds": times[cell.warmup :],
        "final_loss": loss if math.isfinite(loss) else None,
        "samples_per_step": cell.batch * cell.grad_accum * world,
        "tokens_per_step": cell.batch
        * cell.grad_accum
        * world
        * (cell.seq + (cell.decoder_seq if spec.is_encoder_decoder else 0)),
    }
