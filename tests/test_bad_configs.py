"""Hostile model and DeepSpeed configs: refused by ``validate`` (and ``predict``) in one line each."""

from __future__ import annotations

import json
import time

import pytest
from badinput import cli, refused

from bench import configcheck, models
from bench.limits import MODEL_MAX

GPT2 = {"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 1024, "vocab_size": 100}


@pytest.fixture
def matrix_for(tmp_path):
    """``matrix_for(config)``: a matrix whose one cell uses ``config`` (a dict, or raw text/bytes)."""

    def make(config, method: str = "full", ds: object = None) -> str:
        path = tmp_path / "config.json"
        if isinstance(config, bytes):
            path.write_bytes(config)
        else:
            path.write_text(config if isinstance(config, str) else json.dumps(config))
        extra = ""
        if ds is not None:
            ds_path = tmp_path / "ds.json"
            ds_path.write_bytes(ds) if isinstance(ds, bytes) else ds_path.write_text(
                ds if isinstance(ds, str) else json.dumps(ds)
            )
            extra = f", ds_config: {ds_path}"
        m = tmp_path / "m.yaml"
        m.write_text(
            f"name: t\ngpu: h200\ndefaults: {{method: {method}, seq: 128{extra}}}\n"
            f"sweep: {{model: [{path}], batch: [1]}}\n"
        )
        return str(m)

    return make


def test_a_sound_config_is_valid(matrix_for):
    code, out, err = cli(["validate", matrix_for(GPT2)])
    assert code == 0 and "valid, 1 cells" in out, err


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"n_positions": "abc"}, "n_positions: 'abc' is not allowed; allowed: an integer >= 1"),
        ({"n_positions": [1024]}, "n_positions: [1024] is not allowed"),
        ({"vocab_size": -5}, "vocab_size: -5 is not allowed"),
        ({"n_embd": 1.5}, "n_embd: 1.5 is not allowed"),
        ({"n_layer": True}, "n_layer: True is not allowed"),
        ({"n_head": 5}, "n_head: 5 does not divide n_embd 64"),
        ({"n_layer": 1_000_000}, f"n_layer: 1000000 is too large to trace; the limit is {MODEL_MAX['layers']:,}"),
        ({"n_embd": 2**30, "n_head": 2**10}, "n_embd: 1073741824 is too large to trace; the limit is"),
        ({"vocab_size": 10**12}, "is too large to trace"),
        ({"model_type": "frobnet"}, "model_type: 'frobnet' is not supported"),
        ({"model_type": 7}, "has no 'model_type'"),
    ],
)
def test_bad_dimensions_and_types(matrix_for, change, needle):
    refused(["validate", matrix_for({**GPT2, **change})], needle)


def test_kv_heads_must_divide_the_heads(matrix_for):
    llama = dict(models.resolve("tiny-llama").config, num_key_value_heads=3)
    refused(["validate", matrix_for(llama)], "num_key_value_heads: 3 does not divide num_attention_heads")


def test_encoder_decoder_without_its_parts(matrix_for):
    refused(
        ["validate", matrix_for({"model_type": "encoder-decoder"})],
        "encoder: None is not allowed",
        "decoder: None is not allowed",
        lines=2,
    )
    t5 = models.resolve("tiny-t5").config
    refused(
        ["validate", matrix_for({"model_type": "encoder-decoder", "encoder": t5, "decoder": {"d_model": "x"}})],
        "decoder.model_type: None is not allowed",
    )


@pytest.mark.parametrize(
    "text", ['{"a":' * 100_000 + "1" + "}" * 100_000, '{"a":' * 40 + "1" + "}" * 40, "[" * 100_000]
)
def test_json_nested_deep(matrix_for, text):
    refused(["validate", matrix_for(text)], "nested")


@pytest.mark.parametrize(
    "content, needle",
    [
        (b'{"model_type": "gpt2", "n_embd": "\xff"}', "not UTF-8 text"),
        ('{"model_type": "gpt2", "n_embd": NaN}', "NaN is not a JSON number"),
        ("{oops", "not a readable JSON config"),
        ('"just a string"', "has no 'model_type'"),
    ],
)
def test_unreadable_configs(matrix_for, content, needle):
    refused(["validate", matrix_for(content)], needle)


def test_unsupported_model_type_is_refused_before_any_cell_runs(matrix_for, tmp_path):
    results = tmp_path / "results"
    refused(
        ["run", matrix_for({**GPT2, "model_type": "frobnet"}), "--device", "cpu", "--results", str(results)],
        "model_type: 'frobnet' is not supported",
    )
    assert not results.exists()


def test_predict_refuses_the_same_configs(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**GPT2, "n_layer": 1_000_000}))
    start = time.monotonic()
    refused(["predict", "--model", str(path), "--gpu", "h200", "--seq", "128"], "too large to trace")
    assert time.monotonic() - start < 5


def test_a_config_transformers_cannot_build_is_a_user_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**GPT2, "layer_norm_epsilon": "x"}))
    refused(["predict", "--model", str(path), "--gpu", "h200", "--seq", "128"], "transformers cannot build this config")


def test_every_catalog_config_passes():
    for name in models.names():
        assert configcheck.problems(models.resolve(name).config) == [], name


def test_the_model_types_read_from_source_are_the_ones_transformers_imports():
    from transformers.models.auto import modeling_auto as auto

    causal, seq2seq = configcheck.model_types()
    assert causal == set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    assert seq2seq == set(auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)


@pytest.mark.parametrize(
    "value, needle",
    [
        ("NaN", "NaN is not a JSON number"),
        ("Infinity", "Infinity is not a JSON number"),
        ("-Infinity", "-Infinity is not a JSON number"),
        ("-5", "reduce_bucket_size: -5 is not allowed; allowed: a number of elements from 0 to"),
        ("1e300", "reduce_bucket_size: 1e+300 is not allowed"),
        ('"lots"', "reduce_bucket_size: 'lots' is not allowed"),
    ],
)
def test_deepspeed_bucket_sizes(matrix_for, value, needle):
    ds = '{"zero_optimization": {"stage": 2, "reduce_bucket_size": ' + value + "}}"
    refused(["validate", matrix_for(GPT2, "zero2", ds)], needle)


def test_deepspeed_configs_that_cannot_be_read(matrix_for):
    refused(["validate", matrix_for(GPT2, "zero2", b'{"zero_optimization": {"stage": "\xff"}}')], "not UTF-8 text")
    refused(["validate", matrix_for(GPT2, "zero2", "[" * 100_000)], "nested too deep")
    code, out, err = cli(
        ["validate", matrix_for(GPT2, "zero2", '{"zero_optimization": {"stage": 2, "reduce_bucket_size": 0}}')]
    )
    assert code == 0, err
