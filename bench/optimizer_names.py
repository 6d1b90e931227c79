"""Optimizer names: bench's own and the Hugging Face Trainer's ``optim`` values.

A cell names its optimizer with one of ``bench.cell.OPTIMIZERS``. Users arrive
with ``TrainingArguments.optim`` spellings (``transformers.training_args.OptimizerNames``),
so every place that takes an optimizer name accepts those too and turns them
into the bench optimizer whose memory they share:

- ``adamw_torch_fused`` is ``torch.optim.AdamW(fused=True)``: bench ``adamw``.
- ``adamw_torch`` is ``torch.optim.AdamW()`` with torch's default, the
  ``foreach`` implementation on CUDA: bench ``adamw-foreach``.
- ``adamw_bnb_8bit``, ``adamw_8bit``, ``paged_adamw_8bit``: bitsandbytes'
  8-bit AdamW, bench ``adamw-8bit``. The paged variant keeps the same states,
  in memory the driver may page out to the host under pressure; bench
  predicts it as the plain 8-bit optimizer (a note says so).
- ``adafactor`` is transformers' Adafactor; ``sgd`` is ``torch.optim.SGD``.

Names outside this table (``lion_8bit``, ``galore_adamw``, ...) are refused
with the full list of accepted names, rather than predicted as something else.
"""

from __future__ import annotations

from bench.errors import UserError

BENCH_NAMES = ("adamw", "adamw-foreach", "sgd", "adafactor", "adamw-8bit")
"""bench's own names (the ``Cell.optimizer`` values)."""

HF_NAMES = {
    "adamw_torch_fused": "adamw",
    "adamw_torch": "adamw-foreach",
    "adamw_bnb_8bit": "adamw-8bit",
    "adamw_8bit": "adamw-8bit",
    "paged_adamw_8bit": "adamw-8bit",
    "adafactor": "adafactor",
    "sgd": "sgd",
}
"""``TrainingArguments.optim`` value -> bench optimizer with the same memory."""

TRAINER_NAMES = {
    "adamw": "adamw_torch_fused",
    "adamw-foreach": "adamw_torch",
    "sgd": "sgd",
    "adafactor": "adafactor",
    "adamw-8bit": "adamw_bnb_8bit",
}
"""bench optimizer -> the ``TrainingArguments.optim`` the Trainer loop (``loop: trainer``) is given:
the inverse of ``HF_NAMES`` where one Trainer name stands for each bench optimizer."""

NOTES = {
    "paged_adamw_8bit": "optim paged_adamw_8bit: predicted as adamw-8bit on the GPU; paging states to the host "
    "under memory pressure is not modelled",
}


def allowed_names() -> tuple[str, ...]:
    """Every accepted spelling: bench's names, then the Trainer's."""
    return BENCH_NAMES + tuple(n for n in HF_NAMES if n not in BENCH_NAMES)


def canonical(name: object, key: str = "optimizer") -> str:
    """The bench optimizer for ``name`` (a bench or Trainer spelling, any case).

    Raises ``UserError`` naming ``key``, the value and every accepted name.
    """
    if isinstance(name, str):
        low = name.strip().lower()
        if low in BENCH_NAMES:
            return low
        if low in HF_NAMES:
            return HF_NAMES[low]
    raise UserError(f"{key}: {name!r} is not allowed; allowed: {', '.join(allowed_names())}")


def note(name: object) -> str | None:
    """What the prediction leaves out for a Trainer optimizer name, if anything."""
    return NOTES.get(name.strip().lower()) if isinstance(name, str) else None
