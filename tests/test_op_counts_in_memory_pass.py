"""The step's op counts come from the memory trace's own pass, and answer as a pass of their own did.

A cold prediction runs the model once: the memory trace (``model_trace.trace_now``)
also records the kernels (``op_log.Recording``), and for a trace of
``blocks.TRACED`` blocks the counts of one and two blocks are cut from it. Each
cell here is predicted twice in this process, with an empty cache each time:
along the separate path (the recording off, each count a pass of its own on a
one- and a two-block model, ``op_log.trace_now``) and along the shared one. The
counts must be the same op for op and in the same order (the step time sums
over them in that order), the memory traces event for event, and the memory and
step-time predictions exactly equal.
"""

from __future__ import annotations

import dataclasses

import pytest

from bench import cell as cellmod
from bench.predict import estimate, model_trace, op_cost, op_log, shapes
from bench.predict.speed import speed

CELLS = {
    "full": {"model": "gpt2", "method": "full", "precision": "fp16"},
    "full-ckpt": {"model": "gpt2", "method": "full", "precision": "fp16", "grad_ckpt": True},
    "full-fp32": {"model": "gpt2", "method": "full", "precision": "fp32", "batch": 1},
    "lora": {"model": "gpt2", "method": "lora", "precision": "fp16"},
    "lora-ckpt": {"model": "gpt2-medium", "method": "lora", "precision": "fp16", "grad_ckpt": True},
    "zero2-offload-ckpt": {"model": "gpt2-medium", "method": "zero2-offload", "precision": "fp16", "grad_ckpt": True},
    "zero3-offload": {"model": "gpt2", "method": "zero3-offload", "precision": "fp16"},
    "llama-lora-ckpt": {"model": "llama-3.2-1b", "method": "lora", "precision": "fp16", "grad_ckpt": True},
    "gpt-neo-local-global": {"model": "gpt-neo-1.3b", "method": "zero2-offload", "precision": "fp16"},
}


def _cell(**kw):
    return cellmod.normalize({"gpu": "v100-16gb", "batch": 2, "seq": 256, **kw}, "")


def _cold(monkeypatch):
    """An empty cache, in this process too."""
    monkeypatch.setenv("BENCH_CACHE_DIR", "off")
    monkeypatch.setattr(op_cost, "_RECORDED", {})
    op_cost.micro_step.cache_clear()
    shapes.trace_train.cache_clear()
    estimate._REPLAYS.clear()


class Spy:
    """Calls of a traced pass and what they returned."""

    def __init__(self, monkeypatch, module, name: str):
        self.calls: list = []
        real = getattr(module, name)

        def spy(key):
            out = real(key)
            self.calls.append((key, out))
            return out

        monkeypatch.setattr(module, name, spy)


def _predicted(monkeypatch, cell, shared: bool, speed_first: bool = False):
    _cold(monkeypatch)
    monkeypatch.setattr(model_trace, "RECORD_OPS", shared)
    if not shared:  # as before the recording: no memory trace asked for on the counts' behalf
        monkeypatch.setattr(op_cost, "_known", lambda key: True)
    memory = Spy(monkeypatch, model_trace, "trace_now")
    ops = Spy(monkeypatch, op_log, "trace_now")
    if speed_first:
        s = speed(cell)
        p = estimate.predict(cell)
    else:
        p = estimate.predict(cell)
        s = speed(cell)
    monkeypatch.undo()
    return p, s, memory.calls, ops.calls


def _same_counts(got: op_cost.OpCounts, want: op_cost.OpCounts) -> None:
    assert list(got.kernels.items()) == list(want.kernels.items())
    assert list(got.views.items()) == list(want.views.items())
    assert got.params == want.params


@pytest.mark.parametrize("name", list(CELLS))
def test_shared_pass_predicts_as_separate_passes(monkeypatch, name):
    cell = _cell(**CELLS[name])
    p_old, s_old, memory_old, ops_old = _predicted(monkeypatch, cell, shared=False)
    p_new, s_new, memory_new, ops_new = _predicted(monkeypatch, cell, shared=True)
    assert ops_new == []  # no pass of the counts' own
    assert [k.layers for k, _ in ops_old] == [1, 2]
    assert [k for k, _ in memory_old] == [k for k, _ in memory_new] == [dataclasses.replace(ops_old[0][0], layers=3)]
    # the memory trace is the same event for event
    (_, old), (_, new) = memory_old[0], memory_new[0]
    assert new.trace.events == old.trace.events
    assert (new.trace.grad_keys, new.trace.forward_end) == (old.trace.grad_keys, old.trace.forward_end)
    assert (new.params, new.marks, new.input_bytes, new.buffers_bytes) == (
        old.params,
        old.marks,
        old.input_bytes,
        old.buffers_bytes,
    )
    # the counts cut from it are those of the one- and two-block passes, op for op and in order
    _cold(monkeypatch)
    model_trace.trace_now(memory_old[0][0])
    for key, want in ops_old:
        _same_counts(op_cost._RECORDED[key], want)
    monkeypatch.undo()
    assert p_new == p_old
    assert s_new == s_old
    assert s_new.step_time_seconds is not None
    # the time prediction alone (no memory prediction before it) traces the memory step for its counts
    p_alone, s_alone, memory_alone, ops_alone = _predicted(monkeypatch, cell, shared=True, speed_first=True)
    assert ops_alone == [] and len(memory_alone) == 1
    assert (s_alone, p_alone) == (s_old, p_old)


def test_counts_of_the_traced_key_itself_and_a_cut_refused(monkeypatch):
    """A trace at one or two blocks records its own counts; a model whose blocks have
    different ``layer_types`` (its masks before the blocks depend on the depth) is not cut."""
    key = shapes.sentinel(shapes.shape_key(_cell(model="gpt2", method="lora", precision="fp16", grad_ckpt=True)))
    two = dataclasses.replace(key, layers=2)
    _cold(monkeypatch)
    model_trace.trace_now(two)
    assert list(op_cost._RECORDED) == [two]
    _same_counts(op_cost._RECORDED[two], op_log.trace_now(two))
    monkeypatch.undo()

    spec = op_log.model_trace.models.resolve("gpt2")
    model, _ = model_trace.build(dataclasses.replace(key, layers=3))
    assert op_log._cuttable(dataclasses.replace(key, layers=3), spec, model)
    model.config.layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
    assert not op_log._cuttable(dataclasses.replace(key, layers=3), spec, model)


def test_a_counting_error_leaves_the_memory_trace_and_records_nothing(monkeypatch):
    key = shapes.sentinel(shapes.shape_key(_cell(model="gpt2", method="full", precision="fp16")))
    three = dataclasses.replace(key, layers=3)
    _cold(monkeypatch)
    monkeypatch.setattr(model_trace, "RECORD_OPS", False)
    want = model_trace.trace_now(three)
    monkeypatch.setattr(model_trace, "RECORD_OPS", True)

    def fails(*a, **kw):
        raise RuntimeError("no FLOP formula")

    monkeypatch.setattr(op_log.OpLog, "_count", fails)
    got = model_trace.trace_now(three)
    assert got.trace.events == want.trace.events
    assert op_cost._RECORDED == {}
    monkeypatch.undo()


@pytest.mark.slow
def test_every_shipped_matrix_cut_equals_separate_passes(monkeypatch, repo):
    """Every traced training step of every shipped matrix that is cut from a three-block trace."""
    from bench import matrix, models

    keys: dict = {}
    for path in sorted((repo / "matrices").glob("*.yaml")):
        for c in matrix.load(path).cells:
            if c.task == "train":
                keys.setdefault(shapes.sentinel(shapes.shape_key(c)), None)
    cut = 0
    for key in keys:
        spec = models.resolve(key.model)
        if spec.is_encoder_decoder or key.freeze or shapes.layer_count(spec) <= 3:
            continue
        _cold(monkeypatch)
        model_trace.trace_now(dataclasses.replace(key, layers=3))
        for n in (1, 2):
            kn = dataclasses.replace(key, layers=n)
            if kn in op_cost._RECORDED:
                _same_counts(op_cost._RECORDED[kn], op_log.trace_now(kn))
                cut += 1
        monkeypatch.undo()
    assert cut >= len(keys)  # most steps are cut, at two depths each
