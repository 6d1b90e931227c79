"""Architectures people fine-tune today: predicted, or refused with one line naming the model_type."""

from __future__ import annotations

import json

import pytest

from bench import architectures, cell as cellmod, matrix, models
from bench.errors import UserError
from bench.predict import predict

_BASE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 512,
    "max_position_embeddings": 4096,
}
CONFIGS = {
    "mixtral": {**_BASE, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {
        **_BASE,
        "model_type": "qwen2_moe",
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 64,
    },
    "qwen3_moe": {
        **_BASE,
        "model_type": "qwen3_moe",
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "head_dim": 16,
    },
    "olmoe": {**_BASE, "model_type": "olmoe", "num_experts": 4, "num_experts_per_tok": 2},
    "mistral": {**_BASE, "model_type": "mistral", "sliding_window": 64},
    "gemma2": {**_BASE, "model_type": "gemma2", "head_dim": 16, "sliding_window": 64},
    "gemma3_text": {**_BASE, "model_type": "gemma3_text", "head_dim": 16, "sliding_window": 64},
    "qwen3": {**_BASE, "model_type": "qwen3", "head_dim": 16},
    "phi3": {**_BASE, "model_type": "phi3", "pad_token_id": 0},
    "bert": {**_BASE, "model_type": "bert"},
    "roberta": {**_BASE, "model_type": "roberta"},
    "bart": {
        "model_type": "bart",
        "d_model": 64,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128,
        "vocab_size": 512,
        "max_position_embeddings": 1024,
    },
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arch")
    paths = {}
    for name, config in CONFIGS.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(config))
    return paths


def _cell(path, **fields):
    c = cellmod.normalize({"model": str(path), "gpu": "h100-80gb", "batch": 2, "seq": 128, **fields})
    problems = matrix.validate_cell(c)
    if problems:
        raise UserError(*problems)
    return c


@pytest.mark.parametrize("name", ["mistral", "gemma2", "gemma3_text", "qwen3", "phi3", "bart"])
@pytest.mark.parametrize("method, precision", [("full", "bf16"), ("lora", "bf16"), ("qlora", "bf16")])
def test_dense_architectures_are_predicted(configs, name, method, precision):
    c = _cell(configs[name], method=method, precision=precision)
    p = predict(c)
    assert p.breakdown["weights"] > 0 and p.peak_bytes == sum(p.breakdown.values())


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"])
def test_moe_trains_in_bf16_weights_and_lora_on_attention(configs, name):
    full = predict(_cell(configs[name], method="full", precision="pure-bf16"))
    lora = predict(_cell(configs[name], method="lora", precision="bf16", lora_targets=["q_proj", "v_proj"]))
    assert full.breakdown["optimizer_states"] > lora.breakdown["optimizer_states"] > 0
    zero3 = predict(_cell(configs[name], method="zero3", precision="bf16", gpus=2))
    assert zero3.peak_bytes == sum(zero3.breakdown.values()) and zero3.breakdown["weights"] > 0


def test_mixtral_lora_with_peft_default_targets_is_predicted(configs):
    p = predict(_cell(configs["mixtral"], method="lora", precision="bf16"))
    assert p.breakdown["optimizer_states"] > 0


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe", "olmoe"])
def test_qlora_on_moe_is_refused_at_validation(configs, name):
    with pytest.raises(
        UserError, match=rf"tuning: 'qlora' is not supported for the Mixture-of-Experts model_type '{name}'"
    ):
        _cell(configs[name], method="qlora", precision="bf16")


@pytest.mark.parametrize("name", ["olmoe", "qwen3_moe"])
def test_lora_on_fused_experts_is_refused(configs, name):
    """PEFT's all-linear (and its default where it has none) wraps the fused expert tensors."""
    for fields in ({}, {"lora_targets": "all-linear", "lora_dropout": 0.0}):
        with pytest.raises(UserError, match=rf"LoRA on the fused expert tensors .* model_type '{name}'"):
            predict(_cell(configs[name], method="lora", precision="bf16", **fields))


def test_moe_with_fp32_master_weights_is_refused(configs):
    with pytest.raises(UserError, match=r"model_type 'mixtral' is predicted with bf16 weights only .*pure-bf16"):
        predict(_cell(configs["mixtral"], method="full", precision="bf16"))


def test_moe_experts_implementation_follows_the_weight_dtype(configs):
    spec = models.resolve(str(configs["mixtral"]))
    assert models.build(spec, dtype="bfloat16").config._experts_implementation == "grouped_mm"
    assert models.build(spec).config._experts_implementation == "eager"
    assert architectures.experts_implementation(models.resolve("tiny-llama"), None) is None  # dense: untouched


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_encoder_only_models_are_refused_with_one_line(configs, name):
    with pytest.raises(UserError) as e:
        _cell(configs[name], method="lora", precision="bf16")
    assert len(e.value.problems) == 1
    assert f"head: 'lm' is not supported for the encoder-only model_type '{name}'" in e.value.problems[0]
    assert e.value.problems[0].endswith("allowed: seq-cls, token-cls")


def test_encoder_only_on_the_command_line_is_one_error_line(configs, capsys):
    from bench.cli import main

    assert main(["predict", "--model", str(configs["bert"]), "--gpu", "h100-80gb"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "encoder-only" in err


def test_all_linear_is_peft_shortcut_in_plan_and_run(configs):
    from bench import recipe
    from bench.methods import adapters

    default = predict(_cell("tiny-llama", method="lora", precision="bf16"))
    every = _cell("tiny-llama", method="lora", precision="bf16", lora_targets="all-linear")
    assert every.lora_targets == ("all-linear",)
    assert predict(every).breakdown["optimizer_states"] > default.breakdown["optimizer_states"]
    config = adapters.lora_config(recipe.of(every).adapters, models.resolve("tiny-llama"))
    assert config.target_modules == "all-linear"


def test_tables_and_slugs_name_a_config_file_by_its_folder(tmp_path):
    from bench.report import labels

    folder = tmp_path / "Qwen3-tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIGS["qwen3"]))
    c = _cell(folder / "config.json", method="lora", precision="bf16")
    assert c.slug.startswith("Qwen3-tiny-train-lora-bf16")
    assert labels.model(c.model) == "Qwen3-tiny" and labels.model("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"
