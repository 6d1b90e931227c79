"""Generation (``task: infer``): ``model.generate`` of ``new_tokens`` greedy tokens with a KV cache.

The run ``bench run`` measures (``bench/methods/generation.py``): weights in the
cell's dtype built on the GPU, a ``batch x seq`` prompt and its mask, then
``generate(max_new_tokens = min_new_tokens = new_tokens, do_sample=False)``.
``transformers/generation/utils.py`` (5.24) makes it a prefill forward and
``new_tokens - 1`` decode forwards (3208-3293) on a ``DynamicCache`` (2326;
``EncoderDecoderCache`` of two for encoder-decoder models, whose encoder
output is kept for every step) whose layers grow by ``torch.cat`` each step
(``cache_utils.py:136-137``: the old and the new tensor of one layer coexist).
The forward is asked for the last position's logits only where it takes
``logits_to_keep`` (2952-2956). Per step it copies those logits to fp32
(3248), ``MinNewTokensLengthLogitsProcessor`` clones and masks them
(``logits_process.py:227-233``), and ``input_ids`` and the attention mask are
re-concatenated one token longer (3286, 1286-1289).

The real model's prefill and two decode forwards are traced on meta tensors
(``trace.MemoryLog``); every event of a decode step is linear in the cache
length, so step ``t`` is the first decode step with its sizes extrapolated, the
cache tensors it frees and creates mapped to the cache's slots.
"""

from __future__ import annotations

import inspect

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench import models, overhead, recipe as recipes
from bench.dtypes import torch_dtype
from bench.predict import model_trace, plain, trace as tr
from bench.predict.program import ACTS, CONTEXT, KV, LOGITS, TRANSIENT, WEIGHTS, Outcome, Program


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


def trace(cell, layers: int | None = None, instruments: tuple = ()) -> dict:
    """Prefill and two decode forwards of the cell's model on meta, with their events.

    ``instruments``: objects with ``attach(model, log) -> [hook handles]``, called on the
    built model before it runs (their hooks allocate what the real run allocates beside
    the model's own ops: ``split``'s device copies, ``infer_quant``'s kernel workspaces),
    and ``finish(trace dict)``, called on the result."""
    from transformers import DynamicCache, EncoderDecoderCache

    spec = models.resolve(cell.model)
    attn = cell.attn or models.default_attn(spec)
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
    with torch.inference_mode(), log, tr.AttentionEmulation(), _Truth():
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


def _window(ev, lo: int, hi: int, old: list[int], new: list[int]) -> list[tuple]:
    """One decode forward's events; cache tensors it frees or creates as ('slot', i)."""
    old_s, new_s = {k: i for i, k in enumerate(old)}, {k: i for i, k in enumerate(new)}
    local = {k for kind, k, _, _ in ev[lo:hi] if kind == tr.ALLOC}
    out = []
    for kind, k, n, tag in ev[lo:hi]:
        if kind == tr.ALLOC:
            out.append((kind, ("slot", new_s[k]) if k in new_s else k, n, tag))
        elif k in old_s:
            out.append((kind, ("slot", old_s[k]), n, tag))
        elif k in local:
            out.append((kind, k, n, tag))
    return out


def _template(t: dict) -> list[tuple]:
    """Decode events as (kind, ref, size at step 0, growth per step, tag)."""
    ev, m, sl = t["events"], t["marks"], t["slots"]
    one, two = _window(ev, m[0], m[1], sl[0], sl[1]), _window(ev, m[1], m[2], sl[1], sl[2])
    shape = lambda w: [(e[0], isinstance(e[1], tuple), e[3]) for e in w]  # noqa: E731
    if shape(one) != shape(two):  # a step that differs: keep the first one's sizes
        return [(kind, ref, n, 0, tag) for kind, ref, n, tag in one]
    return [(kind, ref, n1, n2 - n1, tag) for (kind, ref, n1, tag), (_, _, n2, _) in zip(one, two)]


def program(cell, gpu, layers: int | None = None) -> tuple[Outcome, int, int]:
    """(outcome, host bytes, bytes outside the allocator) of a generation cell."""
    quantization = recipes.of(cell).quantization
    if quantization is None:
        t = trace(cell, layers)
        weights = t["params"]
    else:
        from bench.predict import infer_quant

        t = trace(cell, layers, (infer_quant.Workspaces(quantization),))
        weights = infer_quant.weight_bytes(t["named"], quantization)
    return replay(cell, gpu, t, weights).outcome(), overhead.HOST_BASE_BYTES, recipes.of(cell).outside_allocator_bytes


def _card_of(tag: str) -> tuple[str, int]:
    """A traced event's tag and card: ``split`` tags events ``phase@card``; untagged: card 0."""
    phase, _, card = tag.partition("@")
    return phase, int(card) if card else 0


def replay(cell, gpu, t: dict, weights: list[int], card: int | None = None, buffers: int | None = None) -> Program:
    """The allocation program of a traced generation: the weights (bytes, in load order),
    the prompt, prefill and every decode step. ``card``: only what lives on that card of a
    ``split`` trace (its events, and ``weights``/``buffers`` as given for it); ``generate()``'s
    own tensors (ids, mask, the selected logits) live on card 0 with the inputs."""
    prog = Program()
    for _ in range(2):  # the cuBLAS and cuBLASLt workspaces torch holds after its first matmul
        prog.malloc(plain.cublas_workspace(gpu), CONTEXT)
    for n in weights:
        prog.malloc(n, WEIGHTS)
    buffers = t["buffers"] if buffers is None else buffers
    if buffers:
        prog.malloc(buffers, WEIGHTS)
    mine = lambda tag: card is None or _card_of(tag)[1] == card  # noqa: E731
    host_side = card is None or card == 0
    b, s, vocab = cell.batch, cell.seq, t["vocab"]
    prompt = [prog.malloc(b * s * 8, ACTS), prog.malloc(b * s * 8, ACTS)] if host_side else []  # ids and mask
    # what grows by a token per step: the ids and mask, or an encoder-decoder's decoder ids
    ids = ([prog.malloc(b * 8, ACTS)] if t["enc_dec"] else prompt) if host_side else []
    tags = {"logits": LOGITS, "workspace": TRANSIENT, "offloaded": WEIGHTS}  # split: weights streamed from the host
    keys: dict[int, int] = {}
    for kind, k, n, tag in t["events"][: t["marks"][0]]:  # encoder and prefill
        if not mine(tag):
            continue
        if kind == tr.ALLOC:
            keys[k] = prog.malloc(n, KV if k in t["cache"] else tags.get(_card_of(tag)[0], ACTS))
        elif k in keys:
            prog.free(keys.pop(k))
    slot = {i: keys.pop(k) for i, k in enumerate(t["slots"][0]) if k in keys}
    for k in t["cache"] | t["keep"]:  # cross-attention cache and encoder output: kept to the end
        keys.pop(k, None)
    _select(prog, b, vocab, keys, ids, 1 if t["enc_dec"] else s, host_side)
    template = _template(t)
    for step in range(cell.new_tokens - 1):
        local: dict[int, int] = {}
        grown: dict[int, int] = {}
        for kind, ref, n0, grow, tag in template:
            if not mine(tag):
                continue
            n = n0 + grow * step
            if isinstance(ref, tuple):
                if kind == tr.FREE:
                    if ref[1] in slot:
                        prog.free(slot.pop(ref[1]))
                else:
                    grown[ref[1]] = prog.malloc(n, KV)
            elif kind == tr.ALLOC:
                local[ref] = prog.malloc(n, tags.get(_card_of(tag)[0], ACTS))
            elif ref in local:
                prog.free(local.pop(ref))
        slot.update(grown)
        _select(prog, b, vocab, local, ids, (1 if t["enc_dec"] else s) + step + 1, host_side)
    return prog


def _select(
    prog: Program, b: int, vocab: int, outputs: dict[int, int], ids: list[int], length: int, host_side: bool = True
) -> None:
    """Greedy selection after a forward, ``del outputs``, the growing tensors one token longer."""
    if host_side:
        logits = prog.malloc(b * vocab * 4, LOGITS)  # outputs.logits[:, -1].to(fp32, copy=True)
        processed = prog.malloc(b * vocab * 4, LOGITS)  # MinNewTokens: scores.clone() / torch.where
        prog.transient(vocab * 8, TRANSIENT)  # torch.arange(vocab)
        prog.free(processed)
        prog.free(logits)
    for key in outputs.values():
        prog.free(key)
    outputs.clear()
    for i in range(len(ids)):
        new = prog.malloc(b * (length + 1) * 8, ACTS)
        prog.free(ids[i])
        ids[i] = new
