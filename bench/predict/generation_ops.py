"""The kernels of ``generate()``'s prefill and of one decode forward, for the time model.

As ``op_cost`` does for training: the real model runs on meta tensors under
``op_log.OpLog`` in inference mode, with a ``DynamicCache``; the prefill
forward sees the ``batch x seq`` prompt, and the decode forward one new token
per sequence against a cache of ``seq + new_tokens // 2`` positions (the mean
length over the generation: its attention and cache reads grow linearly).
One- and two-block models are traced and the second block replicated to the
real depth. Encoder-decoder models are not modelled (``None``). The counts are
kept in the trace cache (``trace_cache``): torch runs on a miss only.
"""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

from bench import models
from bench.predict import sdpa, shapes, trace_cache
from bench.predict.op_cost import OpCounts, rescaled


def generation(
    model: str,
    precision: str,
    attn: str | None,
    batch: int,
    seq: int,
    new_tokens: int,
    kernels: str = sdpa.DEFAULT,
) -> tuple[OpCounts, OpCounts] | None:
    """(prefill, one decode step) kernels at full depth, or None for an encoder-decoder model,
    with the attention kernels of class ``kernels`` (``shapes.sdpa_kernels``).

    Traced at the sentinel batch and length (``shapes``) and rescaled:
    the prefill to ``seq``, the decode step to a cache of ``seq + new_tokens // 2``."""
    traced = _sentinel(model, precision, attn, kernels)
    if traced is None:
        return None
    pre, dec = traced
    cache_len = seq + new_tokens // 2
    return (
        rescaled(pre, SimpleNamespace(batch=batch, seq=seq, target_seq=seq)),
        rescaled(dec, SimpleNamespace(batch=batch, seq=cache_len, target_seq=cache_len)),
    )


@functools.lru_cache(maxsize=64)
def _sentinel(model: str, precision: str, attn: str | None, kernels: str) -> tuple[OpCounts, OpCounts] | None:
    spec = models.resolve(model)
    if spec.is_encoder_decoder:
        return None
    depth = shapes.layer_count(spec)
    b, s = shapes.SENTINEL_BATCH, shapes.SENTINEL_SEQ
    traces = {}
    for layers in (1, 2):
        # the decode step after an ``s - 1`` prompt attends to ``s`` positions: sizes that rescale
        traces[layers] = (
            _trace(spec, precision, attn, kernels, layers, b, s)[0],
            _trace(spec, precision, attn, kernels, layers, b, s - 1)[1],
        )
    out = []
    for i in range(2):
        one, two = traces[1][i], traces[2][i]
        out.append(one.combine(two.combine(one, -1.0), float(depth - 1)))
    return out[0], out[1]


def _trace(
    spec, precision: str, attn: str | None, kernels: str, layers: int, b: int, s: int
) -> tuple[OpCounts, OpCounts]:
    """``_trace_now``, through the on-disk trace cache."""
    attn = attn or shapes.default_attn(spec)
    path = trace_cache._path(("generation_ops", spec.name, precision, attn, kernels, layers, b, s))
    if path is not None and path.exists():
        try:
            d = json.loads(path.read_text())
            return _counts(d[0]), _counts(d[1])
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass  # unreadable entry: trace again and overwrite it
    pre, dec = _trace_now(spec, precision, attn, kernels, layers, b, s)
    if path is not None:
        trace_cache.store(path, [_plain(pre), _plain(dec)])
    return pre, dec


def _plain(c: OpCounts) -> dict:
    return {"kernels": [[list(op), n] for op, n in c.kernels.items()], "views": c.views, "params": c.params}


def _counts(d: dict) -> OpCounts:
    return OpCounts({(*op[:4], tuple(op[4])): n for op, n in d["kernels"]}, d["views"], d["params"])


def _trace_now(spec, precision: str, attn: str, kernels: str, layers: int, b: int, s: int) -> tuple[OpCounts, OpCounts]:
    import inspect

    import torch
    from transformers import DynamicCache

    from bench.dtypes import torch_dtype
    from bench.predict import model_trace, trace as tr
    from bench.predict.op_log import AttentionCount, OpLog

    model = models.build(
        spec,
        device="meta",
        dtype=torch_dtype(precision),
        attn="sdpa" if attn == "flash_attention_2" else attn,
        **model_trace._layer_overrides(spec, layers),
    )
    model.eval()
    sig = inspect.signature(model.forward).parameters
    name = "cache" if "cache" in sig else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in sig else {}
    cfg = model.config.get_text_config(decoder=True)
    counts = []
    with torch.inference_mode():
        ids = torch.empty((b, s), dtype=torch.long, device="meta")
        cache = DynamicCache(config=cfg)
        for step in range(2):
            log = OpLog()
            mask = torch.empty((b, s + step), dtype=torch.long, device="meta")
            with log, tr.AttentionEmulation(kernels), AttentionCount(log, False):
                model(
                    input_ids=ids if step == 0 else ids[:, :1],
                    attention_mask=mask,
                    **{name: cache, "use_cache": True, **extra},
                )
            forward = {op: float(n) for op, n in log.kernels.items() if op[0] == "forward"}
            counts.append(OpCounts(forward, {"forward": log.views.get("forward", 0.0)}, _params(model)))
    return counts[0], counts[1]


def _params(model) -> dict[str, float]:
    params = list(model.parameters())
    return {
        "elements": float(sum(p.numel() for p in params)),
        "trainable": 0.0,
        "tensors": float(len(params)),
        "trainable_tensors": 0.0,
    }
