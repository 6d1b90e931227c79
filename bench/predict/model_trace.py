"""Run the real model's training micro-step or generation on meta tensors and log it.

``trace_train`` builds the cell's model (transformers from the catalog config,
PEFT LoRA when the cell says so, gradient checkpointing, attention
implementation) on the meta device, runs forward, loss and backward under
``MemoryLog`` and the CUDA emulations of ``trace``, and returns a ``TrainTrace``:
the parameters (what is static) and the event log of one micro-step (what
moves). ``bench.predict.generate.trace`` does the same for ``generate()`` with a KV cache.

Results are cached per shape-relevant key, so a plan of many cells that differ
only in method, optimizer or GPU traces each model shape once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from dataclasses import dataclass

import torch
import transformers

from bench import architectures, models, recipe as recipes
from bench.dtypes import torch_dtype
from bench.errors import UserError
from bench.methods import adapters, freezing
from bench.predict import blocks, trace as tr, trace_cache
from bench.predict.trace import Param, TrainTrace


@dataclass(frozen=True, kw_only=True)
class ShapeKey:
    """Everything about a cell that changes the traced step (not strategy/optimizer/GPU).

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
    layers: int | None = None


def shape_key(cell, layers: int | None = None) -> ShapeKey:
    """The traced step of a cell: the model and shape, with the recipe's dtypes
    (``Recipe.trace_dtypes``: the half-dtype weights DeepSpeed and FSDP compute
    on, or the build dtype with autocast in plain loops) and adapters."""
    r = recipes.of(cell)
    spec = models.resolve(cell.model)
    attn = cell.attn or models.default_attn(spec)
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
        layers=layers,
    )


def layer_count(spec) -> int:
    c = spec.config
    return int(c.get("num_hidden_layers") or c.get("n_layer") or c.get("num_layers") or 1)


def _recompute_context(key: ShapeKey):
    """Checkpoint recomputation runs inside autograd, outside our function
    modes; re-enter them there as the real checkpoint re-enters autocast."""

    @contextlib.contextmanager
    def recompute():
        with contextlib.ExitStack() as stack:
            stack.enter_context(tr.AttentionEmulation())
            if key.autocast:
                stack.enter_context(tr.AutocastEmulation(torch_dtype(key.autocast)))
            yield

    return lambda: (contextlib.nullcontext(), recompute())


def build(key: ShapeKey):
    """The model of a shape key on the meta device, in train mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        return _build(key)


def _build(key: ShapeKey):
    spec = models.resolve(key.model)
    if architectures.is_moe(spec) and key.weight_dtype != "bf16":
        raise UserError(architectures.moe_dtype_problem(spec, key.weight_dtype))
    overrides = {"use_cache": key.use_cache}
    if key.layers is not None:
        overrides.update(_layer_overrides(spec, key.layers))
    with torch.device("meta"):
        model = models.build(spec, device="meta", dtype=torch_dtype(key.weight_dtype), attn=key.attn, **overrides)
        if key.tuning in recipes.ADAPTER_TUNINGS:
            from peft import get_peft_model

            try:
                model = get_peft_model(model, adapters.lora_config(_adapters(key, spec), spec))
            except ValueError as e:  # PEFT's ParamWrapper (LoRA on fused experts) refuses lora_dropout
                if "ParamWrapper" not in str(e):
                    raise
                raise UserError(architectures.expert_lora_problem(spec)) from None
            if architectures.wraps_experts(model):
                raise UserError(architectures.expert_lora_problem(spec))
    freezing.apply(model, key.freeze)
    if key.grad_ckpt:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False, "context_fn": _recompute_context(key)}
        )
    model.train()
    return model, spec


def _adapters(key: ShapeKey, spec) -> recipes.Adapters:
    """The recipe's adapters, from the key's fields (the key is what the trace cache holds)."""
    return recipes.Adapters(
        r=key.lora_r,
        alpha=key.lora_alpha,
        dropout=key.lora_dropout,
        targets=key.lora_targets,
        task_type="SEQ_2_SEQ_LM" if spec.is_encoder_decoder else "CAUSAL_LM",
        dtype="fp32",
    )


def _layer_overrides(spec, n: int) -> dict:
    c = spec.config
    out: dict = {}
    for k in ("num_hidden_layers", "n_layer", "num_layers"):
        if k in c:
            out[k] = n
    if "num_decoder_layers" in c:
        out["num_decoder_layers"] = n
    if c.get("layer_types"):
        out["layer_types"] = list(c["layer_types"])[:n]
    if c.get("attention_types"):  # gpt-neo: [[["global", "local"], 12]] -> one entry per layer
        per_layer = [t for types, times in c["attention_types"] for _ in range(times) for t in types]
        out["attention_types"] = [[[t], 1] for t in per_layer[:n]]
        out["attention_layers"] = per_layer[:n]
    return out


def _inputs(key: ShapeKey, spec, vocab: int) -> dict:
    ids = torch.empty((key.batch, key.seq), dtype=torch.long, device="meta")
    if spec.is_encoder_decoder:
        labels = torch.empty((key.batch, key.target_seq), dtype=torch.long, device="meta")
        return {"input_ids": ids, "labels": labels}
    return {"input_ids": ids, "labels": ids}


# Sentinel sizes: primes no model dimension is a multiple of. A tensor's byte
# count then says how many batch, sequence and target dimensions it has (the
# power of each prime in it), so one trace serves every batch and length.
SENTINEL_BATCH, SENTINEL_SEQ, SENTINEL_TARGET = 1021, 1019, 1013


def _power(n: int, p: int) -> int:
    k = 0
    while n and n % p == 0:
        n //= p
        k += 1
    return k


def _rescale(n: int, key: ShapeKey) -> int:
    """Bytes at the sentinel shape -> bytes at ``key``'s batch and lengths."""
    for prime, real in ((SENTINEL_BATCH, key.batch), (SENTINEL_SEQ, key.seq), (SENTINEL_TARGET, key.target_seq)):
        k = _power(n, prime)
        if k:
            n = n // prime**k * real**k
    return n


@functools.lru_cache(maxsize=256)
def trace_train(key: ShapeKey) -> TrainTrace:
    """One forward + loss + backward micro-step, with grads starting at None.

    Meta tensors cost the same at any size, and every activation's size is a
    product of the batch, the sequence lengths and fixed model dimensions. So
    the step is traced once at the sentinel shape and each event's size
    rescaled to ``key``'s (``_rescale``); a size that is not such a product
    (e.g. ``seq + 1`` labels) keeps its sentinel value's scaling in the other
    dimensions only, a few bytes.

    Blocks are identical: a model deeper than ``blocks.TRACED`` blocks is
    traced at that depth and its middle block's events are replicated to the
    real depth (``blocks.replicate``), falling back to a full-depth trace if
    the blocks' event sequences do not line up.
    """
    spec = models.resolve(key.model)
    target = SENTINEL_TARGET if spec.is_encoder_decoder else SENTINEL_SEQ
    base = dataclasses.replace(key, batch=SENTINEL_BATCH, seq=SENTINEL_SEQ, target_seq=target)
    if key != base:
        if not spec.is_encoder_decoder:
            key = dataclasses.replace(key, target_seq=key.seq)
        t = trace_train(base)
        events = [(k, key_, _rescale(n, key), tag) for k, key_, n, tag in t.trace.events]
        trace = tr.Trace(events=events, grad_keys=t.trace.grad_keys, forward_end=t.trace.forward_end)
        return dataclasses.replace(t, trace=trace, input_bytes=_rescale(t.input_bytes, key))
    depth = layer_count(spec)
    if key.layers is None and depth > blocks.TRACED and not spec.is_encoder_decoder and not key.freeze:
        small = _trace_train(dataclasses.replace(key, layers=blocks.TRACED))
        full = blocks.replicate(small, depth)
        if full is not None:
            return full
    return _trace_train(key)


def _trace_train(key: ShapeKey) -> TrainTrace:
    return trace_cache.load(key, _trace_train_now)


def _trace_train_now(key: ShapeKey) -> TrainTrace:
    model, spec = build(key)
    params = tuple(
        Param(n, p.numel(), p.numel() * p.element_size(), p.requires_grad, tuple(p.shape))
        for n, p in model.named_parameters()
    )
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    for t in [*model.parameters(), *model.buffers()]:
        t.untyped_storage()._bench_key = 0  # static: accounted by the caller
    trace = tr.Trace()
    log = tr.MemoryLog(trace)
    out_emb = model.get_output_embeddings()
    hook = (
        out_emb.register_forward_pre_hook(lambda *_: setattr(log, "phase", "logits")) if out_emb is not None else None
    )
    marks, mark_hooks = blocks.attach_marks(model, log) if key.layers is not None else (None, [])
    modes = [tr.AttentionEmulation()]
    if key.autocast:
        ac = tr.AutocastEmulation(torch_dtype(key.autocast))
        modes.append(ac)  # type: ignore[arg-type]
    inputs = _inputs(key, spec, 0)  # made outside the log, so the batch is tagged "input", not "forward"
    with log:
        for t in inputs.values():
            log.track(t, "input")
        input_bytes = sum(t.untyped_storage().nbytes() for t in {id(v): v for v in inputs.values()}.values())
        with contextlib.ExitStack() as stack:
            for m in modes:
                stack.enter_context(m)
            out = model(**inputs)  # the training loop holds the output (logits, KV cache) until the step ends
        if key.outputs_to_fp32:  # accelerate's wrapper, outside autocast; the half output is dropped
            from accelerate.utils.operations import convert_to_fp32

            out = convert_to_fp32(out)
        loss = out.loss
        trace.forward_end = len(trace.events)
        if key.autocast:
            ac.cache.clear()
        log.phase = "backward"
        loss.backward()
        del loss
        trace.grad_keys = {p.grad.untyped_storage()._bench_key for p in model.parameters() if p.grad is not None}
        log.live = {}  # stop recording: grads, inputs and the output outlive the micro-step
    del out  # a training loop's `out = model(...)` holds it until the next forward returns
    if hook is not None:
        hook.remove()
    for h in mark_hooks:
        h.remove()
    trace.events = [(k, key_, n, "grad" if key_ in trace.grad_keys else tag) for k, key_, n, tag in trace.events]
    return TrainTrace(
        params=params,
        buffers_bytes=buffers,
        input_bytes=input_bytes,
        trace=trace,
        layers=key.layers or layer_count(spec),
        marks=marks,
    )
