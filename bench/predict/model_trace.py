"""Run the real model's training micro-step on meta tensors and log it (the torch side).

``trace_now`` builds the cell's model (transformers from the catalog config,
PEFT LoRA when the cell says so, gradient checkpointing, attention
implementation) on the meta device, runs forward, loss and backward under
``MemoryLog`` and the CUDA emulations of ``trace``, and returns a ``TrainTrace``:
the parameters (what is static) and the event log of one micro-step (what
moves). ``bench.predict.generate.trace`` does the same for ``generate()`` with a KV cache.

Which key is traced, and how one trace serves every batch, length and depth
(and is cached on disk), is ``shapes``: this module runs only on a cache miss.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import transformers

from bench import architectures, models, recipe as recipes
from bench.dtypes import torch_dtype
from bench.errors import UserError
from bench.methods import adapters, freezing
from bench.predict import blocks, trace as tr
from bench.predict.shapes import (  # noqa: F401  re-exported: the tests and scripts read them here
    SENTINEL_BATCH,
    SENTINEL_SEQ,
    SENTINEL_TARGET,
    ShapeKey,
    layer_count,
    rescale as _rescale,
    shape_key,
    trace_train,
    traced as _trace_train,
)
from bench.predict.trace import Param, TrainTrace


def _recompute_context(key: ShapeKey):
    """Checkpoint recomputation runs inside autograd, outside our function
    modes; re-enter them there as the real checkpoint re-enters autocast."""

    @contextlib.contextmanager
    def recompute():
        with contextlib.ExitStack() as stack:
            stack.enter_context(tr.AttentionEmulation(key.sdpa_kernels))
            if key.autocast:
                stack.enter_context(tr.AutocastEmulation(torch_dtype(key.autocast)))
            yield

    return lambda: (contextlib.nullcontext(), recompute())


def all_labelled():
    """``nonzero`` on meta tensors counts every element: DeBERTa's classification loss keeps the
    samples whose label is >= 0 (``(labels >= 0).nonzero()``), which random class ids all are."""
    import torch.fx.experimental._config as fx_config

    return fx_config.patch(meta_nonzero_assume_all_nonzero=True)


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
        model = models.build(
            spec,
            device="meta",
            dtype=torch_dtype(key.weight_dtype),
            attn=key.attn,
            head=key.head,
            num_labels=key.num_labels,
            **overrides,
        )
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
        task_type=recipes.task_type(key.head, spec.is_encoder_decoder),
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
    want = recipes.labels(key.head, key.num_labels, key.batch, key.seq, key.target_seq, spec.is_encoder_decoder)
    if want.shape is None:
        return {"input_ids": ids, "labels": ids}
    dtype = torch.long if want.dtype == "int64" else torch_dtype(want.dtype)
    return {"input_ids": ids, "labels": torch.empty(want.shape, dtype=dtype, device="meta")}


RECORD_OPS = True
"""Count the step's kernels for the time prediction in the same pass (``op_log.Recording``);
off, the time prediction counts them in a pass of its own (``benchmarks/bench_speed.py``
turns it off to time the memory trace alone)."""


def _recording(key: ShapeKey, spec, model):
    if not RECORD_OPS:
        return None
    from bench.predict import op_log

    return op_log.Recording.of(key, spec, model)


def trace_now(key: ShapeKey) -> TrainTrace:
    """The micro-step of ``key``, traced now (``shapes.traced`` asks the cache first)."""
    model, spec = build(key)
    params = tuple(
        Param(n, p.numel(), p.numel() * p.element_size(), p.requires_grad, tuple(p.shape))
        for n, p in model.named_parameters()
    )
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    for t in [*model.parameters(), *model.buffers()]:
        t.untyped_storage()._bench_key = 0  # static: accounted by the caller
    trace = tr.Trace()
    rec = _recording(key, spec, model)
    log = rec.memory_log(trace) if rec is not None else tr.MemoryLog(trace)
    counting = rec.counting if rec is not None else contextlib.nullcontext
    out_emb = model.get_output_embeddings()
    hook = (
        out_emb.register_forward_pre_hook(lambda *_: setattr(log, "phase", "logits")) if out_emb is not None else None
    )
    marks, mark_hooks = blocks.attach_marks(model, log) if key.layers is not None else (None, [])
    modes = [tr.AttentionEmulation(key.sdpa_kernels), all_labelled()]
    if key.autocast:
        ac = tr.AutocastEmulation(torch_dtype(key.autocast))
        modes.append(ac)  # type: ignore[arg-type]
    if rec is not None:  # the innermost function mode (all_labelled is a config patch)
        inner = len(modes) - 1 if key.autocast else 0
        modes[inner] = rec.count(modes[inner])  # type: ignore[assignment]
    with rec.log if rec is not None else contextlib.nullcontext():
        inputs = _inputs(key, spec, 0)  # made outside the log, so the batch is tagged "input", not "forward"
    with log:
        for t in inputs.values():
            log.track(t, "input")
        input_bytes = sum(t.untyped_storage().nbytes() for t in {id(v): v for v in inputs.values()}.values())
        with contextlib.ExitStack() as stack:
            stack.enter_context(counting())
            for m in modes:
                stack.enter_context(m)
            out = model(**inputs)  # the training loop holds the output (logits, KV cache) until the step ends
        loss = out.loss
        if key.outputs_to_fp32:  # accelerate's wrapper, outside autocast; the half output is dropped
            from accelerate.utils.operations import convert_to_fp32

            out = convert_to_fp32(out)
            if rec is not None and out.loss is not loss:  # a cast the separate op count does not run
                rec.valid = False
            loss = out.loss
        trace.forward_end = len(trace.events)
        if key.autocast:
            ac.cache.clear()
        log.phase = "backward"
        if rec is not None:
            rec.log.phase = "backward"
        with counting():
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
    if rec is not None:
        from bench.predict import op_cost

        op_cost.record(rec.results())
    return TrainTrace(
        params=params,
        buffers_bytes=buffers,
        input_bytes=input_bytes,
        trace=trace,
        layers=key.layers or layer_count(spec),
        marks=marks,
    )
