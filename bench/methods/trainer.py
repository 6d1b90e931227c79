"""Training steps of one cell through the Hugging Face ``transformers.Trainer`` (``loop: trainer``).

The Trainer runs the steps; bench only hands it what a user's script would:
the model, built as the recipe says (``training.build_model``), a synthetic
dataset of the cell's shape (random token ids, ``labels = input_ids``; an
encoder-decoder model gets ``target_seq`` label tokens), and
``TrainingArguments`` from the cell (``arguments``): batch, accumulation,
``max_steps = warmup + steps``, ``optim`` (``optimizer_names.TRAINER_NAMES``),
the ``bf16``/``fp16`` flag (``Recipe.trainer_precision``), gradient
checkpointing (non-reentrant, as the plain loop), ``deepspeed=`` with the
cell's DeepSpeed config. Everything else keeps the Trainer's defaults
(``max_grad_norm`` 1.0, linear schedule, no ``torch_empty_cache_steps``).

Order matters under ZeRO-3: the arguments are made before the model, so
their ``HfDeepSpeedConfig`` is alive and transformers builds the model under
``deepspeed.zero.Init`` itself (``zero_init: false`` builds it first, whole).

A ``TrainerCallback`` (``StepClock``) times each optimizer step between
``on_step_begin`` and ``on_step_end`` (device synchronized at both), runs the
hook before the first step, and reads the loss of each logged step; the
record has the plain loop's fields (``training.timing_record``).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from bench import dsconfig, models, optimizer_names, recipe as recipes
from bench.cell import Cell
from bench.methods import optimizers, parallel, ranks, storage, training


class SyntheticTokens(torch.utils.data.Dataset):
    """``length`` samples of random token ids, a fixed generator (the same batches every run);
    the labels as the recipe shapes them (``training.random_labels``)."""

    def __init__(self, cell: Cell, vocab: int, encoder_decoder: bool, length: int):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (length, cell.seq), generator=g)
        self.labels = training.random_labels(recipes.of(cell), self.ids, cell.decoder_seq, vocab, encoder_decoder, g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step_clock(device: str, before_first_step: Callable[[], None] | None) -> Any:
    """A ``TrainerCallback`` that times optimizer steps (see the module docstring)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.losses: list[float] = []
            self.after_build: int | None = None
            self._t0 = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            _sync(device)  # the model is wrapped and the optimizer (or DeepSpeed engine) made
            self.after_build = torch.cuda.memory_allocated() if device == "cuda" else None
            if before_first_step is not None:
                before_first_step()

        def on_step_begin(self, args, state, control, **kwargs):
            _sync(device)
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            self.times.append(time.perf_counter() - self._t0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return StepClock()


def arguments(cell: Cell, r: recipes.Recipe, spec: models.ModelSpec, device: str, output_dir: str) -> Any:
    """``TrainingArguments`` for the cell (see the module docstring)."""
    from transformers import TrainingArguments

    kwargs: dict[str, Any] = {}
    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns)
    ckpt = (
        "activation_checkpointing"
        if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
        else "gradient_checkpointing"
    )
    kwargs[ckpt] = r.grad_ckpt and not r.quantized_base  # QLoRA's base enables it itself
    kwargs[f"{ckpt}_kwargs"] = {"use_reentrant": False} if r.grad_ckpt else None
    if r.deepspeed:
        kwargs["deepspeed"] = dsconfig.deepspeed_config(cell, dsconfig.hidden_size_of(spec.config))
    if r.engine == "ddp":
        kwargs["ddp_find_unused_parameters"] = False
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=cell.batch,
        gradient_accumulation_steps=cell.grad_accum,
        max_steps=cell.warmup + cell.steps,
        learning_rate=optimizers.LR,
        optim=optimizer_names.TRAINER_NAMES[cell.optimizer],
        bf16=r.trainer_precision == "bf16",
        fp16=r.trainer_precision == "fp16",
        use_cpu=device == "cpu",
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=device == "cuda",
        seed=0,
        **kwargs,
    )


def train(
    cell: Cell, spec: models.ModelSpec, device: str, before_first_step: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Run the cell's steps through ``transformers.Trainer``; returns the training part of ``measured``."""
    from transformers import Trainer, default_data_collator
    from transformers.trainer_callback import PrinterCallback

    r = recipes.of(cell)
    if r.engine != "plain":  # the process group first: accelerate and DeepSpeed join it
        parallel.init(device)
    if r.deepspeed:
        parallel.deepspeed_ready(device)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as out:
        model = None
        build_rss: int | None = None
        if r.deepspeed and not r.zero_init:  # built whole, before the arguments make zero.Init the default
            model, build_rss = training.build_model(cell, spec, device, checkpointing=False)
        args = arguments(cell, r, spec, device, out)
        if model is None:  # under ZeRO-3 transformers enters zero.Init (the arguments' HfDeepSpeedConfig)
            model, build_rss = training.build_model(cell, spec, device, contextlib.nullcontext(), checkpointing=False)
        total, trainable = training.count_parameters(model)
        world = ranks.world_size()
        data = SyntheticTokens(
            cell,
            training.vocab_size(model, spec),
            spec.is_encoder_decoder,
            (cell.warmup + cell.steps) * cell.grad_accum * cell.batch * world,
        )
        clock = step_clock(device, before_first_step)
        trainer = Trainer(
            model=model, args=args, train_dataset=data, data_collator=default_data_collator, callbacks=[clock]
        )
        trainer.remove_callback(PrinterCallback)  # the logs of every step go to the clock, not stdout
        trainer.train()
        resident = resident_bytes(trainer)
    return training.timing_record(
        cell,
        spec,
        parameters=(total, trainable),
        after_build=clock.after_build,
        build_rss=build_rss,
        resident=resident,
        times=clock.times,
        loss=clock.losses[-1] if clock.losses else float("nan"),
    )


def resident_bytes(trainer: Any) -> dict[str, int]:
    """``storage.resident_bytes`` of what the Trainer built: its DeepSpeed engine, or the model
    and the torch optimizer inside accelerate's ``AcceleratedOptimizer``."""
    engine = getattr(trainer, "deepspeed", None)
    if engine is not None:
        return storage.resident_bytes(engine, None, True)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return storage.resident_bytes(trainer.model_wrapped, optimizer, False)
