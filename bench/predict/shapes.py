"""What a traced micro-step depends on (``ShapeKey``), and the trace of a key.

``trace_train(key)`` is what every training program replays. It is derived,
never traced twice: a key at a real batch and length is the trace at the
sentinel shape rescaled (``rescale``); a deep model's trace is three blocks
replicated to its depth (``blocks.replicate``); a traced key is read from the
on-disk cache (``trace_cache``). Only a cache miss runs the real model
(``model_trace.trace_now``, which imports torch and transformers), so a
prediction whose trace is cached stays in plain Python.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

from bench import gpus, models, recipe as recipes
from bench.predict import blocks, sdpa, trace_cache
from bench.predict.events import Trace, TrainTrace


@dataclass(frozen=True, kw_only=True)
class ShapeKey:
    """Everything about a cell that changes the traced step (not strategy/optimizer; of the GPU,
    only the class of attention kernels it runs, ``sdpa_kernels``).

    What the loop keeps between micro-steps (``Recipe.holds_output``, the Trainer's loop and
    the sharded ones keep only the loss) is not part of it: the replay drops the output from
    the traced step (``sharded.loss_only``), so both loops share one trace unless accelerate's
    fp32 conversion of the output (``outputs_to_fp32``) changes the step itself."""

    model: str
    tuning: str
    weight_dtype: str
    autocast: str | None
    batch: int
    seq: int
    target_seq: int
    grad_ckpt: bool
    attn: str
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_targets: tuple[str, ...] | None
    use_cache: bool = False
    """The model's KV cache left on in training (transformers turns it off under checkpointing)."""
    freeze: int = 0
    """Blocks (and embeddings) frozen; traced at full depth, as frozen and trainable blocks differ."""
    outputs_to_fp32: bool = False
    """accelerate's ``ConvertOutputsToFp32`` wraps the forward (``Recipe.outputs_to_fp32``)."""
    head: str = "lm"
    """The model's head (``Recipe.head``), which also shapes the labels (``recipe.labels``)."""
    num_labels: int = 2
    """Classes of a classification head (the logits' last dimension)."""
    layers: int | None = None
    sdpa_kernels: str = sdpa.DEFAULT
    """The card's class of SDPA kernels (``sdpa.kernels``); ``sdpa.DEFAULT`` where attention is not SDPA."""


def sdpa_kernels(gpu, attn: str) -> str:
    """The SDPA kernel class a card (``gpus.GPU``) runs attention ``attn`` with: its compute
    capability's class for SDPA (and flash_attention_2, traced as SDPA), else ``sdpa.DEFAULT``
    (no SDPA call, so one trace serves every card)."""
    return sdpa.kernels(gpu.compute_capability) if attn in ("sdpa", "flash_attention_2") else sdpa.DEFAULT


def default_attn(spec) -> str:
    """``models.default_attn`` (a question to transformers), remembered beside the traces
    so that a cached prediction does not import transformers to ask it again."""
    fact = ("default_attn", spec.model_type, spec.is_encoder_decoder)
    return trace_cache.fact(fact, lambda: models.default_attn(spec))


def shape_key(cell, layers: int | None = None, gpu=None) -> ShapeKey:
    """The traced step of a cell: the model and shape, with the recipe's dtypes
    (``Recipe.trace_dtypes``: the half-dtype weights DeepSpeed and FSDP compute
    on, or the build dtype with autocast in plain loops), adapters and the
    attention kernels of its card (``gpu``, default the cell's)."""
    r = recipes.of(cell)
    spec = models.resolve(cell.model)
    attn = cell.attn or default_attn(spec)
    kernels = sdpa_kernels(gpu or gpus.of_cell(cell), attn)
    if attn == "flash_attention_2":
        attn = "sdpa"  # same kernels' memory: out + logsumexp saved, no S x S matrix
    wdt, ac = r.trace_dtypes
    a = r.adapters
    return ShapeKey(
        model=cell.model,
        tuning=cell.tuning,
        weight_dtype=wdt,
        autocast=ac,
        batch=cell.batch,
        seq=cell.seq,
        target_seq=cell.decoder_seq,
        grad_ckpt=r.grad_ckpt,
        attn=attn,
        lora_r=cell.lora_r,
        lora_alpha=cell.lora_alpha,
        lora_dropout=cell.lora_dropout,
        lora_targets=a.targets if a else None,
        use_cache=r.use_cache,
        freeze=r.freeze,
        outputs_to_fp32=r.outputs_to_fp32,
        head=r.head,
        num_labels=r.num_labels,
        layers=layers,
        sdpa_kernels=kernels,
    )


def layer_count(spec) -> int:
    c = spec.config
    return int(c.get("num_hidden_layers") or c.get("n_layer") or c.get("num_layers") or 1)


# Sentinel sizes: primes no model dimension is a multiple of. A tensor's byte
# count then says how many batch, sequence and target dimensions it has (the
# power of each prime in it), so one trace serves every batch and length.
SENTINEL_BATCH, SENTINEL_SEQ, SENTINEL_TARGET = 1021, 1019, 1013


def short_positions(spec) -> bool:
    """Whether the model's fixed position table is shorter than the sentinel length."""
    limit = spec.max_positions
    return limit is not None and limit < SENTINEL_SEQ


def sentinel(key: ShapeKey) -> ShapeKey:
    """``key`` at the sentinel batch and lengths: the trace every batch and length derive from.
    A model whose fixed position table is shorter than the sentinel length (BERT's 512) is
    traced at its real lengths, the sentinel batch only."""
    spec = models.resolve(key.model)
    if any(key.num_labels % p == 0 for p in (SENTINEL_BATCH, SENTINEL_SEQ, SENTINEL_TARGET)):
        return key  # a class count the sentinel sizes would be read into: traced as it is
    if short_positions(spec):
        return dataclasses.replace(key, batch=SENTINEL_BATCH)
    target = SENTINEL_TARGET if spec.is_encoder_decoder else SENTINEL_SEQ
    return dataclasses.replace(key, batch=SENTINEL_BATCH, seq=SENTINEL_SEQ, target_seq=target)


def _power(n: int, p: int) -> int:
    k = 0
    while n and n % p == 0:
        n //= p
        k += 1
    return k


def rescale(n: int, key) -> int:
    """Bytes at the sentinel shape -> bytes at ``key``'s batch and lengths."""
    for prime, real in ((SENTINEL_BATCH, key.batch), (SENTINEL_SEQ, key.seq), (SENTINEL_TARGET, key.target_seq)):
        k = _power(n, prime)
        if k:
            n = n // prime**k * real**k
    return n


def rescaler(key) -> Callable[[int], int]:
    """``rescale`` for one key, remembering each size it has seen (a trace repeats few sizes)."""
    seen: dict[int, int] = {}

    def at(n: int) -> int:
        out = seen.get(n)
        if out is None:
            out = seen[n] = rescale(n, key)
        return out

    return at


@functools.lru_cache(maxsize=256)
def trace_train(key: ShapeKey) -> TrainTrace:
    """One forward + loss + backward micro-step, with grads starting at None.

    Meta tensors cost the same at any size, and every activation's size is a
    product of the batch, the sequence lengths and fixed model dimensions. So
    the step is traced once at the sentinel shape and each event's size
    rescaled to ``key``'s (``rescale``); a size that is not such a product
    (e.g. ``seq + 1`` labels) keeps its sentinel value's scaling in the other
    dimensions only, a few bytes.

    Blocks are identical: a model deeper than ``blocks.TRACED`` blocks is
    traced at that depth and its middle block's events are replicated to the
    real depth (``blocks.replicate``), falling back to a full-depth trace if
    the blocks' event sequences do not line up.
    """
    spec = models.resolve(key.model)
    base = sentinel(key)
    if key != base:
        if not spec.is_encoder_decoder:
            key = dataclasses.replace(key, target_seq=key.seq)
        t = trace_train(base)
        at = rescaler(key)
        events = [(k, key_, at(n), tag) for k, key_, n, tag in t.trace.events]
        trace = Trace(events=events, grad_keys=t.trace.grad_keys, forward_end=t.trace.forward_end)
        return dataclasses.replace(t, trace=trace, input_bytes=rescale(t.input_bytes, key))
    depth = layer_count(spec)
    if key.layers is None and depth > blocks.TRACED and not spec.is_encoder_decoder and not key.freeze:
        small = traced(dataclasses.replace(key, layers=blocks.TRACED))
        full = blocks.replicate(small, depth)
        if full is not None:
            return full
    return traced(key)


def traced(key: ShapeKey) -> TrainTrace:
    """The micro-step of ``key`` as traced (no rescaling, no replication): from the cache,
    or traced now by the real model on meta tensors."""

    def now(k: ShapeKey) -> TrainTrace:
        from bench.predict import model_trace  # torch and transformers: only on a cache miss

        return model_trace.trace_now(k)

    return trace_cache.load(key, now)
