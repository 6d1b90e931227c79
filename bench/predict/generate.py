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
(``generation_trace``, with ``trace.MemoryLog``; cached on disk); every event of a decode step is linear in the cache
length, so step ``t`` is the first decode step with its sizes extrapolated, the
cache tensors it frees and creates mapped to the cache's slots.
"""

from __future__ import annotations

import functools
import json

from bench import gpus, models, overhead, recipe as recipes
from bench.predict import events as tr, plain, shapes, trace_cache
from bench.predict.program import ACTS, CONTEXT, KV, LOGITS, TRANSIENT, WEIGHTS, Outcome, Program


def trace(cell, layers: int | None = None, instruments: tuple = ()) -> dict:
    """Prefill and two decode forwards of the cell's model on meta, with their events
    (``generation_trace``). ``instruments``: objects with ``attach(model, log) -> [hook
    handles]``, called on the built model before it runs (their hooks allocate what the
    real run allocates beside the model's own ops: ``split``'s device copies,
    ``infer_quant``'s kernel workspaces), and ``finish(trace dict)``, called on the result.
    Without instruments the trace is kept in the on-disk trace cache."""
    spec = models.resolve(cell.model)
    attn = cell.attn or shapes.default_attn(spec)
    if instruments:
        from bench.predict import generation_trace  # torch and transformers

        return generation_trace.trace_now(cell, attn, layers, instruments)
    return _cached(cell, attn, layers)


@functools.lru_cache(maxsize=64)
def _cached(cell, attn: str, layers: int | None) -> dict:
    kernels = shapes.sdpa_kernels(gpus.of_cell(cell), attn)
    key = ("generate", cell.model, recipes.of(cell).build_dtype, attn, kernels, cell.batch, cell.seq, layers)
    path = trace_cache._path(key)
    if path is not None and path.exists():
        try:
            d = json.loads(path.read_text())
            d["events"] = [tuple(e) for e in d["events"]]
            d["named"] = [(n, numel, nbytes, tuple(shape)) for n, numel, nbytes, shape in d["named"]]
            d["named_buffers"] = [tuple(b) for b in d["named_buffers"]]
            d["cache"], d["keep"] = set(d["cache"]), set(d["keep"])
            return d
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable entry: trace again and overwrite it
    from bench.predict import generation_trace  # torch and transformers: only on a cache miss

    t = generation_trace.trace_now(cell, attn, layers)
    if path is not None:
        trace_cache.store(path, {**t, "cache": sorted(t["cache"]), "keep": sorted(t["keep"])})
    return t


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
