"""Fuzz: generated model configs and DeepSpeed configs through ``validate`` (and ``predict``).

A model config is a shipped one (GPT-2, Llama, T5 shapes) with keys replaced by
hostile values; a DeepSpeed config is a ``zero_optimization`` section of
hostile values. ``predict`` runs on a few configs that pass ``validate`` (it
builds and traces the model, seconds each): whatever validation lets through
must predict or be refused in one line, never crash. See ``tests/fuzzing.py``.
"""

from __future__ import annotations

import json

from fuzzing import EXAMPLES, FUZZ, JSON_VALUES, NUMBERS, SCALARS, check_memory, outcome, peak_rss_bytes
from hypothesis import given, settings, strategies as st

from bench import configcheck, models

BASES = [models.resolve(n).config for n in ("tiny-gpt2", "tiny-llama", "tiny-t5")]
KEYS = st.one_of(
    st.sampled_from(
        [
            *configcheck.DIMENSIONS,
            "model_type",
            "is_encoder_decoder",
            "encoder",
            "decoder",
            "tie_word_embeddings",
            "rotary_dim",
            "layer_norm_epsilon",
            "rope_scaling",
            "torch_dtype",
            "auto_map",
            "architectures",
        ]
    ),
    st.text(max_size=8),
)
SMALL_INTS = st.integers(min_value=-2, max_value=70)
MODEL_TYPES = st.sampled_from(["gpt2", "llama", "t5", "encoder-decoder", "frobnet", "bert", "", "GPT2"])
VALUES = st.one_of(SMALL_INTS, MODEL_TYPES, SCALARS, JSON_VALUES)
CONFIGS = st.tuples(st.sampled_from(BASES), st.dictionaries(KEYS, VALUES, max_size=4)).map(lambda t: {**t[0], **t[1]})


def _matrix(folder, config: object, ds: object = None, method: str = "full") -> str:
    (folder / "config.json").write_text(json.dumps(config) if not isinstance(config, str) else config)
    extra = ""
    if ds is not None:
        (folder / "ds.json").write_text(json.dumps(ds) if not isinstance(ds, str) else ds)
        extra = f", ds_config: {folder / 'ds.json'}"
    m = folder / "m.yaml"
    m.write_text(
        f"name: t\ngpu: h200\ndefaults: {{method: {method}, seq: 32{extra}}}\n"
        f"sweep: {{model: [{folder / 'config.json'}], batch: [1]}}\n"
    )
    return str(m)


@FUZZ
@given(config=CONFIGS)
def test_fuzz_model_configs(tmp_path_factory, config):
    before = peak_rss_bytes()
    outcome("model configs", ["validate", _matrix(tmp_path_factory.mktemp("c"), config)])
    check_memory(before)


@FUZZ
@given(
    text=st.one_of(
        JSON_VALUES.map(json.dumps),
        st.text(max_size=60),
        st.sampled_from(
            [
                '{"model_type": "gpt2", "n_embd": NaN}',
                '{"a": 1, "a": 2}',
                "[" * 3000,
                '{"model_type": "gpt2"' + ', "x": {' * 40 + "}" * 40 + "}",
            ]
        ),
    )
)
def test_fuzz_model_config_text(tmp_path_factory, text):
    outcome("model config text", ["validate", _matrix(tmp_path_factory.mktemp("c"), text)])


PREDICTABLE = st.tuples(
    st.sampled_from(BASES[:2]),
    st.dictionaries(
        st.sampled_from(
            [
                "n_layer",
                "n_head",
                "n_embd",
                "num_hidden_layers",
                "num_attention_heads",
                "hidden_size",
                "num_key_value_heads",
                "intermediate_size",
                "vocab_size",
                "n_positions",
                "head_dim",
                "max_position_embeddings",
                "rotary_dim",
                "n_inner",
                "layer_norm_epsilon",
                "rms_norm_eps",
            ]
        ),
        st.one_of(SMALL_INTS, st.sampled_from([None, 0.5, "x", 1024, 4096])),
        max_size=3,
    ),
).map(lambda t: {**t[0], **t[1]})


@settings(FUZZ, max_examples=max(3, EXAMPLES // 20), deadline=None)  # seconds per example
@given(config=PREDICTABLE)
def test_fuzz_predict_what_validate_accepts(tmp_path_factory, config):
    folder = tmp_path_factory.mktemp("c")
    code, _, _ = outcome("model configs (validate before predict)", ["validate", _matrix(folder, config)])
    if code == 0:
        outcome(
            "model configs (predict)",
            ["predict", "--model", str(folder / "config.json"), "--gpu", "h200", "--seq", "32", "--json"],
        )


ZERO_KEYS = st.sampled_from(
    [
        "stage",
        "reduce_bucket_size",
        "allgather_bucket_size",
        "stage3_prefetch_bucket_size",
        "stage3_param_persistence_threshold",
        "stage3_max_live_parameters",
        "stage3_max_reuse_distance",
        "overlap_comm",
        "contiguous_gradients",
        "offload_optimizer",
        "offload_param",
        "cpu_offload",
        "cpu_offload_param",
        "cpu_offload_use_pin_memory",
    ]
)
ZERO = st.dictionaries(
    ZERO_KEYS,
    st.one_of(
        NUMBERS,
        SCALARS,
        st.just("auto"),
        JSON_VALUES,
        st.sampled_from([{"device": "cpu"}, {"device": "nvme", "pin_memory": 1}]),
    ),
    max_size=5,
)
DS = st.fixed_dictionaries(
    {},
    optional={
        "zero_optimization": ZERO | JSON_VALUES,
        "fp16": st.sampled_from([{"enabled": True}, {"enabled": "auto"}, [], None]),
        "bf16": JSON_VALUES,
        "bfloat16": JSON_VALUES,
    },
)


@FUZZ
@given(ds=DS, method=st.sampled_from(["zero2", "zero3", "zero2-offload", "zero3-offload", "zero1"]))
def test_fuzz_deepspeed_configs(tmp_path_factory, ds, method):
    text = json.dumps(ds)  # NaN and Infinity are written as such (not JSON; refused)
    outcome("DeepSpeed configs", ["validate", _matrix(tmp_path_factory.mktemp("d"), BASES[0], text, method)])
