"""Achieved model FLOPs and MFU of a measured cell.

Model FLOPs count the matrix multiplies the algorithm needs, per token, from
the parameter count ``N`` (the usual ``6 N`` rule, Kaplan et al. 2020, used by
PaLM's MFU): a forward pass costs ``2 N``; a backward pass ``2 N`` for the
gradient with respect to the inputs plus ``2 N`` for the gradient with
respect to the weights, the latter only for weights that train:

- full tuning: ``6 N`` per token;
- LoRA/QLoRA: ``4 N_frozen + 6 N_adapter`` per token (the frozen base still
  back-propagates to its inputs, but computes no weight gradient);
- generation: ``2 N`` per token of prompt and of output.

Attention's ``seq^2`` term and embedding lookups are left out, and so is the
recomputation of gradient checkpointing (model FLOPs, not hardware FLOPs), so
MFU is comparable across checkpointing settings. For an encoder-decoder model
each half of the parameters sees its own tokens, so the token count is
``(seq + target_seq) / 2``. MFU is achieved TFLOP/s per GPU over the dense
peak for the precision (``bench.gpus``) of the card that ran the cell (the
target when the catalog does not know it); ``None`` on the CPU.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench import recipe
from bench.cell import Cell


def tokens_per_sample(cell: Cell, encoder_decoder: bool) -> float:
    """Tokens each parameter sees per sample (see the module docstring)."""
    if cell.task == "infer":
        return cell.seq + cell.new_tokens
    return (cell.seq + cell.decoder_seq) / 2 if encoder_decoder else cell.seq


def flops_per_step(cell: Cell, parameters: int, trainable: int, encoder_decoder: bool) -> float:
    """Model FLOPs of one optimizer step (or one generation), per GPU (each rank runs its own micro-batches)."""
    tokens = cell.batch * tokens_per_sample(cell, encoder_decoder)
    if cell.task == "infer":
        return 2.0 * parameters * tokens
    tokens *= cell.grad_accum
    if recipe.of(cell).adapters is None:  # frozen bottom blocks (if any): forward only
        per_token = 2.0 * (parameters - trainable) + 6.0 * trainable
    else:  # a frozen base under adapters: forward and input gradients
        per_token = 4.0 * (parameters - trainable) + 6.0 * trainable
    return per_token * tokens


def peak_tflops(cell: Cell, gpu_name: str | None = None, memory_bytes: int | None = None) -> tuple[float | None, str]:
    """Dense peak TFLOP/s for the cell's precision, and the catalog card it is for.

    The card that ran the cell when the catalog knows it (its NVML name), else
    the cell's target: compute is never emulated, only memory is capped.
    """
    from bench import gpus
    from bench.errors import UserError

    card = gpus.from_nvml_name(gpu_name, memory_bytes) if gpu_name else None
    card = card or gpus.resolve(cell.gpu)
    try:
        return card.peak_tflops(cell.precision), card.name
    except UserError:  # a card without this precision: MFU is simply unknown
        return None, card.name


def throughput(
    cell: Cell, timing: dict[str, Any], encoder_decoder: bool, device: str, peak: float | None = None
) -> dict[str, Any]:
    """``step_time_median_seconds``, tokens/samples per second, TFLOP/s and MFU.

    ``peak`` is the card's dense peak TFLOP/s (``peak_tflops``); MFU is ``None``
    without one and always on the CPU.
    """
    times = timing.get("step_times_seconds") or []
    if not times:
        return {
            "step_time_median_seconds": None,
            "tokens_per_second": None,
            "samples_per_second": None,
            "tflops_achieved": None,
            "mfu": None,
        }
    median = statistics.median(times)
    flops = flops_per_step(cell, timing["parameters"], timing["trainable_parameters"], encoder_decoder)
    tflops = flops / median / 1e12
    return {
        "step_time_median_seconds": median,
        "tokens_per_second": timing["tokens_per_step"] / median,
        "samples_per_second": timing["samples_per_step"] / median,
        "tflops_achieved": tflops,
        "mfu": tflops / peak if device == "cuda" and peak else None,
    }
