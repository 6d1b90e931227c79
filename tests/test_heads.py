"""Classification heads (cell field ``head``): encoder-only models and decoders fine-tuned with
``AutoModelForSequenceClassification`` / ``AutoModelForTokenClassification``, trained by the
runner and replayed by the predictor alike, and the one-line refusals."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bench import architectures, gpus, models, recipe
from bench.cell import normalize
from bench.errors import UserError
from bench.matrix import validate_cell
from bench.methods import adapters, training
from bench.predict import blocks, plain, predict, shapes

TINY_DEBERTA = {
    "model_type": "deberta-v2",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 256,
    "relative_attention": True,
    "position_buckets": 32,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "pos_att_type": "p2c|c2p",
    "position_biased_input": False,
    "max_relative_positions": -1,
    "type_vocab_size": 0,
}


def cell(**kw):
    raw = {"model": "tiny-bert", "gpu": "a100-80gb", "head": "seq-cls", "batch": 2, "seq": 16, "steps": 1}
    c = normalize({**raw, "warmup": 0, **kw})
    problems = validate_cell(c)
    if problems:
        raise UserError(*problems)
    return c


@pytest.fixture(scope="module")
def tiny_deberta(tmp_path_factory):
    path = tmp_path_factory.mktemp("deberta") / "config.json"
    path.write_text(json.dumps(TINY_DEBERTA))
    return str(path)


def _trained(c):
    return training.train(c, models.resolve(c.model), "cpu")


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"method": "lora"},
        {"head": "token-cls", "num_labels": 5},
        {"num_labels": 1},  # regression: one float per sample, MSE
        {"model": "tiny-llama"},  # a decoder's LlamaForSequenceClassification
        {"model": "tiny-llama", "method": "lora", "head": "token-cls"},
        {"loop": "trainer", "method": "lora"},
    ],
)
def test_the_runner_trains_what_the_predictor_counts(kw):
    """The CPU check of a prediction (as for layer freezing): the measured resident weights and
    optimizer states are the predicted ones, and the loss is the model's own."""
    c = cell(**kw)
    measured = _trained(c)
    assert measured["final_loss"] > 0 and 0 < measured["trainable_parameters"] <= measured["parameters"]
    predicted = predict(c).resident_bytes
    for part in ("weights", "optimizer_states"):
        assert predicted[part] == measured["resident_bytes"][part], part


def test_deberta_v3_trains_and_is_predicted(tiny_deberta):
    for method in ("full", "lora"):
        c = cell(model=tiny_deberta, method=method)
        measured = _trained(c)
        assert predict(c).resident_bytes["weights"] == measured["resident_bytes"]["weights"]


def test_lora_on_an_encoder_wraps_query_value_and_trains_the_classifier():
    c = cell(method="lora")
    a = recipe.of(c).adapters
    assert a is not None and a.task_type == "SEQ_CLS"
    assert recipe.of(cell(method="lora", head="token-cls")).adapters.task_type == "TOKEN_CLS"  # type: ignore[union-attr]
    config = adapters.lora_config(a, models.resolve("tiny-bert"))
    assert sorted(config.target_modules) == ["query", "value"]
    measured = _trained(c)
    lora = 2 * 2 * (64 * 16 + 16 * 64)  # query and value of 2 blocks, r = 16
    assert measured["trainable_parameters"] == lora + 64 * 2 + 2  # and the classifier (modules_to_save)


def test_labels_follow_the_head():
    assert recipe.labels("lm", 2, 4, 16, 16, False) == recipe.Labels(None, "int64", None)
    assert recipe.labels("lm", 2, 4, 16, 8, True).shape == (4, 8)
    assert recipe.labels("seq-cls", 3, 4, 16, 16, False) == recipe.Labels((4,), "int64", 3)
    assert recipe.labels("seq-cls", 1, 4, 16, 16, False).dtype == "fp32"
    assert recipe.labels("token-cls", 7, 4, 16, 16, False) == recipe.Labels((4, 16), "int64", 7)


@pytest.mark.parametrize("name", ["bert-base", "roberta-large", "deberta-v3-base"])
@pytest.mark.parametrize("head", ["seq-cls", "token-cls"])
def test_catalog_encoders_are_predicted(name, head):
    full = predict(normalize({"model": name, "gpu": "a100-80gb", "head": head, "precision": "bf16", "batch": 8}))
    lora = predict(normalize({"model": name, "gpu": "a100-80gb", "head": head, "method": "lora", "batch": 8}))
    assert full.peak_bytes == sum(full.breakdown.values()) and full.breakdown["activations"] > 0
    assert full.breakdown["optimizer_states"] > 100 * lora.breakdown["optimizer_states"] > 0


def test_an_encoders_blocks_are_replicated_as_a_full_depth_trace():
    c = normalize({"model": "bert-base", "gpu": "h200", "head": "seq-cls", "batch": 2, "seq": 256})
    key = shapes.shape_key(c)
    replicated = blocks.replicate(shapes.traced(dataclasses.replace(key, layers=blocks.TRACED)), 12)
    full = shapes.traced(key)
    assert replicated is not None
    assert sorted(e[2] for e in replicated.trace.events) == sorted(e[2] for e in full.trace.events)
    g = gpus.resolve("h200")
    a, b = plain.program(replicated, c, g), plain.program(full, c, g)
    assert (a.peak_allocated, a.peak_reserved) == (b.peak_allocated, b.peak_reserved)


def test_an_encoder_is_traced_at_its_length_and_rescaled_in_the_batch():
    """BERT's 512 positions are shorter than the sentinel length: one trace per length, any batch."""
    one = normalize({"model": "bert-base", "gpu": "h200", "head": "seq-cls", "batch": 3, "seq": 128})
    base = shapes.sentinel(shapes.shape_key(one))
    assert (base.batch, base.seq) == (shapes.SENTINEL_BATCH, 128)
    p3, p6 = predict(one), predict(normalize({**one.to_dict(), "batch": 6}))
    assert p6.breakdown["activations"] > 1.9 * p3.breakdown["activations"]


def test_the_head_is_part_of_the_cell_only_when_it_is_not_the_default():
    lm = normalize({"model": "tiny-llama", "gpu": "h200"})
    assert lm.cell_id == normalize({"model": "tiny-llama", "gpu": "h200", "head": "lm", "num_labels": 2}).cell_id
    cls = cell()
    assert cls.slug.endswith("-seq-cls") and cell(num_labels=5, head="token-cls").slug.endswith("-token-cls5")
    assert cls.cell_id != cell(num_labels=3).cell_id


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"head": "lm"}, "head: 'lm' is not supported for the encoder-only model_type 'bert' of tiny-bert"),
        ({"task": "infer"}, "head: 'seq-cls' needs task 'train'"),
        ({"model": "tiny-llama", "head": "lm", "num_labels": 3}, "num_labels: 3 needs head seq-cls or token-cls"),
        ({"model": "tiny-t5"}, "head: 'seq-cls' is not supported for the encoder-decoder model_type 't5'"),
        ({"head": "mlm"}, "head: 'mlm' is not allowed; allowed: lm, seq-cls, token-cls"),
        ({"num_labels": 0}, "num_labels: 0 is not allowed"),
        ({"seq": 300}, "seq: 300 exceeds tiny-bert's 256 positions"),
    ],
)
def test_what_cannot_be_run_is_one_line(raw, message):
    with pytest.raises(UserError) as e:
        cell(**raw)
    assert len(e.value.problems) == 1 and message in e.value.problems[0], e.value.problems


def test_an_encoder_without_a_head_on_the_command_line_is_one_error_line(capsys):
    from bench.cli import main

    assert main(["predict", "--model", "deberta-v3-large", "--gpu", "h100-80gb"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "encoder-only model_type 'deberta-v2'" in err and "seq-cls, token-cls" in err
    assert main(["predict", "--model", "roberta-base", "--gpu", "h100-80gb", "--head", "token-cls"]) == 0
    out = capsys.readouterr().out
    assert "num_labels 2" in out.splitlines()[0] and "token-cls" in out


def test_build_refuses_an_encoder_without_a_head_and_gives_decoders_a_pad_token():
    with pytest.raises(UserError, match="encoder-only"):
        models.build(models.resolve("bert-base"))
    assert architectures.is_encoder_only(models.resolve("deberta-v3-base"))
    llama = models.build(models.resolve("tiny-llama"), head="seq-cls", num_labels=4)
    assert type(llama).__name__ == "LlamaForSequenceClassification" and llama.config.num_labels == 4
    assert llama.config.pad_token_id == 1  # tiny-llama's eos_token_id
    assert models.resolve("roberta-base").max_positions == 512  # 514 less the padding offset
    assert models.resolve("deberta-v3-base").max_positions is None  # relative positions only


def test_a_class_count_equal_to_a_sentinel_size_is_traced_as_it_is():
    raw = {"model": "bert-base", "gpu": "h200", "head": "token-cls", "batch": 2, "seq": 128}
    odd = normalize({**raw, "num_labels": shapes.SENTINEL_BATCH})
    assert shapes.sentinel(shapes.shape_key(odd)) == shapes.shape_key(odd)
    logits = 2 * 128 * shapes.SENTINEL_BATCH * 4  # fp32 logits of every token
    assert predict(odd).peak_bytes > predict(normalize(raw)).peak_bytes + logits
