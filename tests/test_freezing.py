"""Layer freezing: the runner trains, and the predictor replays, the same frozen model."""

from __future__ import annotations

import pytest

from bench import models
from bench.cell import normalize
from bench.errors import UserError
from bench.matrix import validate_cell
from bench.methods import training
from bench.predict import predict


def cell(**kw):
    return normalize({"model": "tiny-llama", "gpu": "a100-80gb", "batch": 2, "seq": 16, "steps": 1, "warmup": 0, **kw})


def test_a_frozen_cell_trains_what_the_predictor_counts():
    c = cell(freeze=1)
    measured = training.train(c, models.resolve(c.model), "cpu")
    assert 0 < measured["trainable_parameters"] < measured["parameters"]
    predicted = predict(c).resident_bytes
    for part in ("weights", "optimizer_states"):  # AdamW states only for what trains
        assert abs(predicted.get(part, 0) - measured["resident_bytes"][part]) <= 512 * 64, part
    full = predict(cell())
    assert predict(c).resident_bytes["optimizer_states"] < full.resident_bytes["optimizer_states"]


def test_freezing_cuts_optimizer_states_and_activations_in_proportion():
    base = dict(model="gpt2-medium", gpu="h200", precision="bf16", batch=4, seq=512)
    p0, p12 = predict(normalize(base)), predict(normalize({**base, "freeze": 12}))
    assert p12.breakdown["optimizer_states"] < 0.5 * p0.breakdown["optimizer_states"]
    assert 0.4 < p12.breakdown["activations"] / p0.breakdown["activations"] < 0.6  # 12 of 24 blocks save nothing


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"method": "lora", "freeze": 2}, "freeze: 2 needs full tuning"),
        ({"task": "infer", "freeze": 2}, "freeze: 2 needs full tuning"),
        ({"freeze": -1}, "freeze: -1 is not allowed"),
    ],
)
def test_bad_freeze_is_one_line(raw, message):
    with pytest.raises(UserError, match=message):
        cell(**raw)


def test_freeze_beyond_the_depth_is_refused():
    assert any("exceeds" in p for p in validate_cell(cell(freeze=99)))
    assert cell(freeze=2).slug.endswith("freeze2") and cell().cell_id == cell(freeze=0).cell_id
