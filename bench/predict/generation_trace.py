"""Trace ``generate()``'s prefill and two decode forwards on meta tensors (the torch side of ``generate``).

``trace_now`` builds the cell's model in its dtype on the meta device and runs
the prefill and two decode forwards with a ``DynamicCache`` under
``trace.MemoryLog``; ``generate`` replays the events (and caches them).
"""

from __future__ import annotations

import inspect

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench import gpus, models, recipe as recipes
from bench.dtypes import torch_dtype
from bench.predict import model_trace, shapes, trace as tr


class _Truth(TorchDispatchMode):
    """``bool(tensor)`` on meta (``aten.is_nonzero``): what ``MemoryLog`` records for
    ``all``/``any``, else False, as ``MemoryLog`` answers ``item()``."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.is_nonzero.default:
            return bool(getattr(args[0], "_bench_value", False))
        return func(*args, **(kwargs or {}))


def _cache_tensors(cache, cross: bool = False) -> list[torch.Tensor]:
    """The cache's key/value tensors: its growing self-attention ones, or with
    ``cross`` also an encoder-decoder cache's cross-attention ones."""
    caches = [getattr(cache, "self_attention_cache", cache)]
    if cross and hasattr(cache, "cross_attention_cache"):
        caches.append(cache.cross_attention_cache)
    return [
        t
        for c in caches
        for layer in c.layers
        for t in (layer.keys, layer.values)
        if isinstance(t, torch.Tensor) and t.numel()
    ]


def _keys(tensors) -> list[int]:
    return [t.untyped_storage()._bench_key for t in tensors]


def trace_now(cell, attn: str, layers: int | None = None, instruments: tuple = ()) -> dict:
    """Prefill and two decode forwards of the cell's model on meta, with their events
    (``attn``: the cell's attention, its default resolved), with the attention kernels of
    the cell's card (``shapes.sdpa_kernels``).

    ``instruments``: objects with ``attach(model, log) -> [hook handles]``, called on the
    built model before it runs (their hooks allocate what the real run allocates beside
    the model's own ops: ``split``'s device copies, ``infer_quant``'s kernel workspaces),
    and ``finish(trace dict)``, called on the result."""
    from transformers import DynamicCache, EncoderDecoderCache

    spec = models.resolve(cell.model)
    kernels = shapes.sdpa_kernels(gpus.of_cell(cell), attn)
    overrides = model_trace._layer_overrides(spec, layers) if layers else {}
    model = models.build(
        spec,
        device="meta",
        dtype=torch_dtype(recipes.of(cell).build_dtype),
        attn="sdpa" if attn == "flash_attention_2" else attn,
        **overrides,
    )
    model.eval()
    for t in [*model.parameters(), *model.buffers()]:
        t.untyped_storage()._bench_key = 0
    sig = inspect.signature(model.forward).parameters
    name = "cache" if "cache" in sig else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in sig else {}
    cfg = model.config.get_text_config(decoder=True)
    b, s, enc_dec = cell.batch, cell.seq, spec.is_encoder_decoder
    log = tr.MemoryLog(tr.Trace())
    hooks = [model.register_forward_pre_hook(lambda *_: setattr(log, "phase", "forward"))]
    if model.get_output_embeddings() is not None:
        hooks.append(
            model.get_output_embeddings().register_forward_pre_hook(lambda *_: setattr(log, "phase", "logits"))
        )
    for instrument in instruments:
        hooks += instrument.attach(model, log)
    marks, slots = [], []
    with torch.inference_mode(), log, tr.AttentionEmulation(kernels), _Truth():
        ids = torch.empty((b, s), dtype=torch.long, device="meta")
        masks = [torch.empty((b, s + i), dtype=torch.long, device="meta") for i in range(3)]
        cache = DynamicCache(config=cfg)
        kw = {name: cache, "use_cache": True, **extra}
        keep = set()
        if enc_dec:
            kw[name] = cache = EncoderDecoderCache(cache, DynamicCache(config=cfg))  # type: ignore[assignment]
            enc = model.get_encoder()(input_ids=ids, attention_mask=masks[0])
            keep = set(_keys(t for t in enc.values() if isinstance(t, torch.Tensor)))
            kw["encoder_outputs"] = enc
        for step in range(3):
            first = ids if step == 0 else ids[:, :1]
            inputs = {"decoder_input_ids": first[:, :1]} if enc_dec else {"input_ids": first}
            out = model(**inputs, attention_mask=masks[0 if enc_dec else step], **kw)
            marks.append(len(log.trace.events))
            slots.append(_keys(_cache_tensors(cache)))
            if step == 0:
                cached = set(_keys(_cache_tensors(cache, cross=True)))
            del out
    for h in hooks:
        h.remove()
    out = {
        "params": [p.numel() * p.element_size() for p in model.parameters()],
        "named": [(n, p.numel(), p.numel() * p.element_size(), tuple(p.shape)) for n, p in model.named_parameters()],
        "named_buffers": [(n, x.numel() * x.element_size()) for n, x in model.named_buffers()],
        "buffers": sum(x.numel() * x.element_size() for x in model.buffers()),
        "events": log.trace.events,
        "marks": marks,
        "slots": slots,
        "cache": cached,
        "keep": keep,
        "vocab": int(cfg.vocab_size),
        "enc_dec": enc_dec,
    }
    for instrument in instruments:
        instrument.finish(out)
    return out
