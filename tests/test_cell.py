"""Cells: shorthand methods, grammar checks, and ids that never drift."""

from __future__ import annotations

import json

import pytest

from bench import cell
from bench.cell import METHODS, Cell, cell_id, normalize
from bench.errors import UserError

BASE = {"model": "gpt2", "gpu": "v100-16gb"}


@pytest.mark.parametrize(
    "method, triple",
    [
        ("full", ("full", "none", "none")),
        ("lora", ("lora", "none", "none")),
        ("qlora", ("qlora", "none", "none")),
        ("ddp", ("full", "ddp", "none")),
        ("zero1", ("full", "zero1", "none")),
        ("zero2", ("full", "zero2", "none")),
        ("zero3", ("full", "zero3", "none")),
        ("zero2-offload", ("full", "zero2", "optimizer")),
        ("zero3-offload", ("full", "zero3", "all")),
        ("fsdp", ("full", "fsdp", "none")),
        ("fsdp-offload", ("full", "fsdp", "all")),
        ("lora+zero3-offload", ("lora", "zero3", "all")),
        ("lora+zero2", ("lora", "zero2", "none")),
        ("qlora+fsdp", ("qlora", "fsdp", "none")),
    ],
)
def test_shorthand_methods_set_tuning_strategy_offload(method, triple):
    precision = "fp16" if triple[0] == "qlora" else "fp32"
    c = normalize({**BASE, "method": method, "precision": precision})
    assert (c.tuning, c.strategy, c.offload) == triple
    assert c.method == method


def test_every_shorthand_is_its_own_name():
    for name, triple in METHODS.items():
        assert cell.method_name(*triple) == name


def test_method_contradicting_tuning_is_an_error():
    with pytest.raises(UserError) as e:
        normalize({**BASE, "method": "lora", "tuning": "full"})
    assert e.value.problems == [
        "tuning: 'full' contradicts method 'lora'; allowed: 'lora' (what the method sets), or leave tuning out"
    ]


def test_method_agreeing_with_explicit_fields_is_fine():
    c = normalize({**BASE, "method": "zero2-offload", "strategy": "zero2", "offload": "optimizer"})
    assert c.method == "zero2-offload"


def test_bad_method_suggests_the_closest_and_lists_shorthands():
    with pytest.raises(UserError) as e:
        normalize({**BASE, "method": "zero2-ofload"})
    (line,) = e.value.problems
    assert line.startswith("method: 'zero2-ofload' is not allowed (did you mean zero2-offload")
    assert "lora+zero3-offload" in line


def test_unhashable_values_are_user_errors_not_crashes():
    with pytest.raises(UserError) as e:
        normalize({**BASE, "method": ["full"], "precision": ["fp16"], 3: "x"})
    text = "\n".join(e.value.problems)
    assert "method: ['full'] is not allowed" in text
    assert "precision: ['fp16'] is not allowed" in text
    assert "unknown key 3" in text


def test_every_problem_is_reported_at_once():
    with pytest.raises(UserError) as e:
        normalize({**BASE, "batchsize": 4, "batch": 0, "grad_ckpt": "yes", "optimizer": "adam"})
    keys = [p.split(":")[0] for p in e.value.problems]
    assert keys == ["unknown key 'batchsize' (did you mean batch?); allowed", "optimizer", "batch", "grad_ckpt"]


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"method": "qlora", "precision": "fp32"}, "precision: 'fp32' is not allowed for qlora"),
        ({"offload": "optimizer"}, "offload: 'optimizer' needs a ZeRO or FSDP strategy"),
        ({"method": "fsdp", "offload": "optimizer"}, "contradicts method 'fsdp'"),
        ({"gpus": 2}, "gpus: 2 needs a strategy"),
        ({"task": "infer", "method": "lora"}, "not allowed for task 'infer'"),
        ({"ds_config": "x.json"}, "ds_config: given but strategy is 'none'"),
    ],
)
def test_cross_field_rules(raw, message):
    with pytest.raises(UserError) as e:
        normalize({**BASE, **raw})
    assert any(message in p for p in e.value.problems), e.value.problems


# Pinned: if this changes, every stored result would be orphaned. Only change it
# together with a migration of results/ (and a new schema version).
PINNED = (
    {
        "model": "gpt2-xl",
        "gpu": "v100-16gb",
        "method": "zero2-offload",
        "precision": "fp16",
        "batch": 8,
        "seq": 1024,
        "grad_accum": 2,
        "grad_ckpt": True,
    },
    "fbe61d3555",
)


def test_cell_id_is_pinned():
    raw, expected = PINNED
    assert normalize(raw).cell_id == expected


def test_cell_id_ignores_the_label_and_key_order():
    raw, expected = PINNED
    assert normalize({**raw, "label": "seed"}).cell_id == expected
    assert normalize(dict(reversed(list(raw.items())))).cell_id == expected


def test_cell_id_changes_with_any_measured_field():
    raw, expected = PINNED
    for change in (
        {"batch": 12},
        {"grad_ckpt": False},
        {"gpu": "t4"},
        {"method": "zero3-offload"},
        {"quant": "none", "seq": 512},
    ):
        assert normalize({**raw, **change}).cell_id != expected


def test_defaults_spelled_out_keep_the_id():
    raw, expected = PINNED
    assert normalize({**raw, "quant": "none", "optimizer": "adamw", "task": "train"}).cell_id == expected
    assert normalize({**raw, "target_seq": 1024}).cell_id == expected


def test_cell_id_of_a_file_is_its_content_not_its_place(tmp_path):
    a, b = tmp_path / "a" / "ds.json", tmp_path / "b" / "ds.json"
    for p in (a, b):
        p.parent.mkdir()
        p.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    cells = [normalize({**BASE, "method": "zero2", "ds_config": str(p)}) for p in (a, b)]
    assert cells[0].cell_id == cells[1].cell_id
    b.write_text(json.dumps({"zero_optimization": {"stage": 2, "reduce_bucket_size": 2e8}}))
    assert cell_id(cells[1]) != cells[0].cell_id


def test_slug_reads_like_the_cell():
    c = normalize(
        {**BASE, "method": "lora+zero3-offload", "precision": "fp16", "batch": 4, "seq": 1024, "grad_ckpt": True}
    )
    assert c.slug == "gpt2-train-lora+zero3-offload-fp16-b4-s1024-ckpt"


def test_to_dict_round_trips():
    c = normalize({**BASE, "method": "lora", "lora_targets": ["c_attn"], "label": "x"})
    again = Cell(**{**c.to_dict(), "lora_targets": tuple(c.to_dict()["lora_targets"])})
    assert again == c and again.cell_id == c.cell_id
