"""Generation of one ``task: infer`` cell: prefill and decode, KV cache on.

The weights are built in the cell's ``precision`` (``fp32``/``fp16``/``bf16``)
directly on the device. Each generation is ``model.generate`` of exactly
``new_tokens`` greedy tokens (``min_new_tokens = max_new_tokens``,
``do_sample=False``) after a ``seq``-token random prompt (the encoder input
for an encoder-decoder model). A streamer notes when the first new token
exists: that is the prefill time (time to first token); the rest is decode.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bench import models, recipe as recipes
from bench.cell import Cell
from bench.dtypes import torch_dtype


class FirstTokenClock:
    """A ``generate`` streamer that records when the first generated token arrives.

    ``generate`` calls ``put`` with the prompt (or the decoder start token)
    first and then once per new token; ``.tolist()`` waits for the device.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            value.tolist()
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def infer(
    cell: Cell, spec: models.ModelSpec, device: str, before_first_step: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Run ``warmup + steps`` generations; returns the timing part of ``measured``."""
    dev = "cuda:0" if device == "cuda" else "cpu"
    model = models.build(spec, device=dev, dtype=torch_dtype(recipes.of(cell).build_dtype), attn=cell.attn)
    model.eval()
    vocab = int(getattr(model.config, "vocab_size", None) or spec.config["vocab_size"])
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (cell.batch, cell.seq), generator=gen).to(dev)
    mask = torch.ones_like(prompt)
    eos = model.generation_config.eos_token_id
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else (eos if eos is not None else 0)
    parameters = models.count_params(model)
    after_build = torch.cuda.memory_allocated() if device == "cuda" else None
    if before_first_step is not None:
        before_first_step()
    times: list[float] = []
    prefill: list[float] = []
    out_len = 0
    with torch.inference_mode():
        for _ in range(cell.warmup + cell.steps):
            clock = FirstTokenClock()
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.generate(
                input_ids=prompt,
                attention_mask=mask,
                max_new_tokens=cell.new_tokens,
                min_new_tokens=cell.new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad,
                streamer=clock,
            )
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            prefill.append((clock.first_token_at or time.perf_counter()) - t0)
            out_len = int(out.shape[-1])
    measured_times, measured_prefill = times[cell.warmup :], prefill[cell.warmup :]
    median_prefill, median_total = statistics.median(measured_prefill), statistics.median(measured_times)
    decode_s = median_total - median_prefill
    return {
        "parameters": parameters,
        "trainable_parameters": 0,
        "after_build_torch_allocated_bytes": after_build,
        "warmup_step_times_seconds": times[: cell.warmup],
        "step_times_seconds": measured_times,
        "prefill_seconds": median_prefill,
        "decode_tokens_per_second": cell.batch * (cell.new_tokens - 1) / decode_s if decode_s > 0 else None,
        "output_tokens": out_len,
        "samples_per_step": cell.batch,
        "tokens_per_step": cell.batch * cell.new_tokens,
    }
