"""Generation of one ``task: infer`` cell: prefill and decode, KV cache on.

The weights are built in the cell's ``precision`` (``fp32``/``fp16``/``bf16``)
directly on the device. Each generation is ``model.generate`` of exactly
``new_tokens`` greedy tokens (``min_new_tokens = max_new_tokens``,
``do_sample=False``) after a ``seq``-token random prompt (the encoder input
for an encoder-decoder model). A streamer notes when the first new token
exists: that is the prefill time (time to first token); the rest is decode.

``split: layers``: the model is dispatched over the process's cards with the device map
the predictor computes (``bench.predict.split.placement``: accelerate's placement, one
decision for both sides) by ``accelerate.dispatch_model``, as ``from_pretrained(device_map=...)``
does; on ``--device cpu`` every card of the map becomes ``"cpu"`` and the hooks are forced
on, so the dispatch path runs without a GPU. ``quant``: the model is saved from its config
and loaded back by ``from_pretrained`` with the recipe's ``BitsAndBytesConfig`` (and the
device map when split), which needs bitsandbytes on a CUDA GPU.
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


def device_map(cell: Cell, device: str) -> dict[str, int | str]:
    """The split cell's device map (card indices), or on the CPU the same map onto ``"cpu"``."""
    from bench.predict import split

    placed = split.placement(cell).device_map
    if "disk" in placed.values():
        missing = [m for m, d in placed.items() if d == "disk"]
        raise RuntimeError(
            f"split: {len(missing)} modules fit on no card of {cell.gpus} x {cell.gpu} ({', '.join(missing[:3])}...)"
        )
    return {m: ("cpu" if device != "cuda" else d) for m, d in placed.items()}


def build(cell: Cell, spec: models.ModelSpec, device: str) -> Any:
    """The model as the recipe says: on one card, dispatched over several, or quantized."""
    r = recipes.of(cell)
    dtype = torch_dtype(r.build_dtype)
    placed = device_map(cell, device) if r.split != "none" else None
    if r.quantization is not None:
        return _quantized(cell, spec, device, placed, dtype)
    if placed is None:
        return models.build(spec, device="cuda:0" if device == "cuda" else "cpu", dtype=dtype, attn=cell.attn)
    from accelerate import dispatch_model

    model = models.build(spec, device="cpu", dtype=dtype, attn=cell.attn)
    return dispatch_model(
        model,
        placed,
        skip_keys=getattr(model, "_skip_keys_device_placement", None),
        force_hooks=device != "cuda",  # one device ("cpu"): the hooks still run, as on the cards
    )


def _quantized(cell: Cell, spec: models.ModelSpec, device: str, placed: dict | None, dtype) -> Any:
    q = recipes.of(cell).quantization
    assert q is not None
    if device != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(f"quant {q.kind} needs bitsandbytes on a CUDA GPU; it cannot run on --device cpu")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError(f"quant {q.kind} needs the bitsandbytes package (pip install bitsandbytes)") from None
    import tempfile

    from transformers import BitsAndBytesConfig

    kwargs = q.config_kwargs()
    if placed is not None and "cpu" in placed.values():  # transformers refuses offload of bnb modules otherwise
        kwargs["llm_int8_enable_fp32_cpu_offload"] = True
    if "bnb_4bit_compute_dtype" in kwargs:
        kwargs["bnb_4bit_compute_dtype"] = torch_dtype(kwargs["bnb_4bit_compute_dtype"])
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as folder:
        models.build(spec, device="cpu", dtype=dtype, attn=cell.attn).save_pretrained(folder)
        extra = {"attn_implementation": cell.attn} if cell.attn else {}
        return models.model_class(spec).from_pretrained(
            folder,
            quantization_config=BitsAndBytesConfig(**kwargs),
            dtype=dtype,
            device_map=placed if placed is not None else {"": 0},
            **extra,
        )


def card_peaks(cell: Cell, device: str) -> dict[str, Any]:
    """Per card torch peaks of a split cell, in the record's per-rank fields (one entry per card)."""
    cards = recipes.of(cell).devices
    if device != "cuda" or cards == 1:
        return {}
    return {
        "peak_torch_allocated_bytes_per_rank": [torch.cuda.max_memory_allocated(i) for i in range(cards)],
        "peak_torch_reserved_bytes_per_rank": [torch.cuda.max_memory_reserved(i) for i in range(cards)],
        "per_rank_is_per_card": True,
    }


def infer(
    cell: Cell, spec: models.ModelSpec, device: str, before_first_step: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Run ``warmup + steps`` generations; returns the timing part of ``measured``."""
    dev = "cuda:0" if device == "cuda" else "cpu"
    model = build(cell, spec, device)
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
    cards = recipes.of(cell).devices if device == "cuda" else 1
    after_build = sum(torch.cuda.memory_allocated(i) for i in range(cards)) if device == "cuda" else None
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
        **card_peaks(cell, device),
    }
