"""``speed(cell)``: how fast a cell runs on its GPU, before renting it.

Training: the time of one optimizer step (``step_time``: all ``grad_accum``
micro-steps and the step after them), tokens and samples per second over all
``gpus`` ranks, and MFU (model FLOPs, ``bench.worker.flops``, over the dense peak
of the precision). Generation: prefill seconds (time to the first token) and
decode tokens per second, each forward timed as a training phase is
(``generation_ops``), plus ``generate()``'s host work per token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bench import gpus, models
from bench.predict import generation_ops, op_cost, shapes, step_time
from bench.predict.speed_figures import figures


@dataclass(frozen=True)
class Speed:
    step_time_seconds: float | None = None
    """One optimizer step (all micro-steps), or one whole ``generate()`` call."""
    tokens_per_second: float | None = None
    samples_per_second: float | None = None
    mfu: float | None = None
    prefill_seconds: float | None = None
    decode_tokens_per_second: float | None = None
    parts: dict[str, float] = field(default_factory=dict)
    figures: str = ""

    def to_dict(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "figures"}
        out["time_figures"] = self.figures
        return out


def shape_key(cell, card=None) -> shapes.ShapeKey:
    """The micro-step ``card`` (default the cell's GPU) runs (the recipe's dtypes: ZeRO and
    FSDP compute on half weights without autocast; the card's attention kernels)."""
    return shapes.shape_key(cell, gpu=card)


def speed(cell, gpu: str | None = None, calibration: dict | None = None, host_memory: int | None = None) -> Speed:
    """Predicted speed of ``cell`` on ``gpu`` (default: the cell's); ``host_memory`` as ``predict``'s
    (a ``split: layers`` cell offloads to it what fits on no card)."""
    card = gpus.resolve(gpu or cell.gpu)
    if card.name == gpus.CUSTOM:
        return Speed(figures="no speed figures: a custom card is known by its memory only (gpu_memory)")
    if cell.task == "infer" and cell.quant != "none":
        return Speed(figures=f"not modelled: the time of bitsandbytes' {cell.quant} kernels (only their memory is)")
    f = figures(card, calibration)
    if cell.task == "infer":
        return _generation(cell, card, f, host_memory)
    from bench.worker import flops

    counts = op_cost.micro_step(shape_key(cell, card))
    st = step_time.train_step(cell, counts, f)
    spec = models.resolve(cell.model)
    samples = cell.batch * cell.grad_accum * max(1, cell.gpus)
    tokens = samples * flops.tokens_per_sample(cell, spec.is_encoder_decoder)
    model_flops = flops.flops_per_step(
        cell, int(counts.params["elements"]), int(counts.params["trainable"]), spec.is_encoder_decoder
    )
    mfu = model_flops / st.seconds / (1e12 * card.peak_tflops(cell.precision))
    return Speed(
        step_time_seconds=st.seconds,
        tokens_per_second=tokens / st.seconds,
        samples_per_second=samples / st.seconds,
        mfu=mfu,
        parts=st.parts,
        figures=f.source,
    )


def _generation(cell, card, f, host_memory: int | None = None) -> Speed:
    """``split: layers``: one card busy at a time, so the same kernels as on one card, plus
    the copies between cards and the offloaded weights over PCIe at every forward
    (``split.transfer_seconds``), which nothing overlaps."""
    attn = cell.attn or shapes.default_attn(models.resolve(cell.model))
    kernels = shapes.sdpa_kernels(card, attn)
    ops = generation_ops.generation(
        cell.model, cell.precision, cell.attn, cell.batch, cell.seq, cell.new_tokens, kernels
    )
    if ops is None:
        return Speed(figures=f.source)
    prefill, decode = ops
    moved = {"prefill": 0.0, "decode": 0.0}
    if cell.split != "none":
        from bench.predict import split

        moved = split.transfer_seconds(cell, f.host_link_bytes_per_second, host_memory)
    pre = _forward_seconds(prefill, f) + f.generate_token_seconds + moved["prefill"]
    per_token = _forward_seconds(decode, f) + f.generate_token_seconds + moved["decode"]
    total = pre + per_token * (cell.new_tokens - 1)
    n = prefill.params["elements"]
    mfu = 2 * n * cell.batch * (cell.seq + cell.new_tokens) / total / (1e12 * card.peak_tflops(cell.precision))
    return Speed(
        step_time_seconds=total,
        tokens_per_second=cell.batch * cell.new_tokens / total,
        samples_per_second=cell.batch / total,
        mfu=mfu,
        prefill_seconds=pre,
        decode_tokens_per_second=cell.batch / per_token,
        parts={
            "prefill": pre - moved["prefill"],
            "decode": (per_token - moved["decode"]) * (cell.new_tokens - 1),
            **(
                {"transfers": moved["prefill"] + moved["decode"] * (cell.new_tokens - 1)}
                if cell.split != "none"
                else {}
            ),
        },
        figures=f.source,
    )


def _forward_seconds(counts, f) -> float:
    """A forward of ``generate()``: under ``torch.no_grad``, so its ops dispatch without autograd."""
    nograd = dataclasses.replace(f, forward_op_seconds=f.no_grad_forward_op_seconds)
    gpu, host = step_time.phase_seconds(counts, "forward", nograd)
    return gpu + step_time.host_exposed(gpu, host, f)
