"""Matrix files: expansion order, exclude/include, overrides, catalogs, validation."""

from __future__ import annotations

import json
import shutil

import pytest

from bench import matrix, models
from bench.errors import UserError


def shape(m, *keys):
    return [tuple(getattr(c, k) for k in keys) for c in m.cells]


def problems(path, overrides=None) -> list[str]:
    with pytest.raises(UserError) as e:
        matrix.load(path, overrides)
    return e.value.problems


def test_first_sweep_key_is_outermost(write_matrix):
    m = matrix.load(write_matrix("gpu: t4\nsweep: {model: [gpt2, gpt2-medium], batch: [1, 2]}\n"))
    assert shape(m, "model", "batch") == [("gpt2", 1), ("gpt2", 2), ("gpt2-medium", 1), ("gpt2-medium", 2)]
    m = matrix.load(write_matrix("gpu: t4\nsweep: {batch: [1, 2], model: [gpt2, gpt2-medium]}\n"))
    assert shape(m, "batch", "model") == [(1, "gpt2"), (1, "gpt2-medium"), (2, "gpt2"), (2, "gpt2-medium")]


def test_matrix_names_the_results_folder(write_matrix):
    m = matrix.load(write_matrix("gpu: V100-16GB\nsweep: {model: [gpt2]}\n", "nightly.yaml"))
    assert (m.name, m.gpu, len(m.cells)) == ("nightly", "v100-16gb", 1)
    assert m.cells[0].gpu == "v100-16gb"


def test_defaults_sweep_and_includes(write_matrix):
    m = matrix.load(
        write_matrix(
            "gpu: t4\n"
            "defaults: {model: gpt2, seq: 256, batch: 3}\n"
            "sweep: {batch: [1, 2]}\n"
            "include: [{label: extra, batch: 5}]\n"
        )
    )
    assert shape(m, "batch", "seq", "label") == [(1, 256, ""), (2, 256, ""), (5, 256, "extra")]


def test_exclude_by_method_shorthand(write_matrix):
    m = matrix.load(
        write_matrix(
            "gpu: a100-80gb\n"
            "sweep: {model: [gpt2], method: [full, zero2-offload, lora+zero3-offload, lora]}\n"
            "exclude: [{method: zero2-offload}, {method: lora+zero3-offload}]\n"
        )
    )
    assert [c.method for c in m.cells] == ["full", "lora"]


def test_exclude_by_hub_id_matches_short_names_and_back(write_matrix):
    m = matrix.load(
        write_matrix(
            "gpu: t4\n"
            "sweep: {model: [gpt2-xl, gpt2, EleutherAI/gpt-neo-125m], method: [full, lora]}\n"
            "exclude:\n"
            "  - {model: openai-community/gpt2-xl}\n"
            "  - {model: gpt-neo-125m, method: full}\n"
        )
    )
    assert shape(m, "model", "method") == [("gpt2", "full"), ("gpt2", "lora"), ("gpt-neo-125m", "lora")]


def test_exclude_list_values_match_any_and_drop_cells_that_would_be_invalid(write_matrix):
    m = matrix.load(
        write_matrix(
            "gpu: t4\n"
            "sweep: {model: [gpt2, gpt-neo-125m], seq: [512, 2048], batch: [1, 2, 4]}\n"
            "exclude:\n"
            "  - {model: gpt2, seq: 2048}\n"
            "  - {batch: [2, 4], seq: 2048}\n"
        )
    )
    assert shape(m, "model", "seq", "batch") == [
        ("gpt2", 512, 1),
        ("gpt2", 512, 2),
        ("gpt2", 512, 4),
        ("gpt-neo-125m", 512, 1),
        ("gpt-neo-125m", 512, 2),
        ("gpt-neo-125m", 512, 4),
        ("gpt-neo-125m", 2048, 1),
    ]


def test_includes_are_appended_and_never_excluded(write_matrix):
    m = matrix.load(
        write_matrix(
            "gpu: t4\n"
            "sweep: {model: [gpt2], method: [full, lora]}\n"
            "exclude: [{method: lora}]\n"
            "include: [{label: mine, model: gpt2, method: lora, batch: 4}]\n"
        )
    )
    assert shape(m, "method", "batch", "label") == [("full", 1, ""), ("lora", 4, "mine")]


def test_an_include_repeating_a_sweep_cell_names_it(write_matrix):
    m = matrix.load(
        write_matrix(
            "gpu: t4\nsweep: {model: [gpt2], batch: [1, 2]}\ninclude: [{label: named, model: gpt2, batch: 1}]\n"
        )
    )
    assert shape(m, "batch", "label") == [(1, "named"), (2, "")]


def test_a_broken_exclude_rule_is_reported_and_drops_nothing(write_matrix):
    lines = problems(
        write_matrix(
            "gpu: t4\nsweep: {model: [gpt2], seq: [2048]}\nexclude: [{modle: gpt2}, {model: gpt5}, {method: ful}]\n"
        )
    )
    assert lines[0].startswith("exclude[0]: unknown key 'modle' (did you mean model?)")
    assert lines[1].startswith("exclude[1].model: 'gpt5' is not in the catalog")
    assert lines[2].startswith("exclude[2].method: 'ful' is not allowed")
    assert "seq: 2048 exceeds gpt2's 1024 positions" in lines[3]


SMALL = "name: small\ngpu: t4\ndefaults: {seq: 256}\nsweep: {model: [gpt2], batch: [1, 4], precision: [fp16]}\ninclude: [{label: inc, model: gpt2, batch: 8, seq: 128}]\n"


def test_override_list_replaces_the_axis_in_place(write_matrix):
    m = matrix.load(write_matrix(SMALL), ["batch=[2,3]"])
    assert shape(m, "batch", "label") == [(2, ""), (3, ""), (2, "inc"), (3, "inc")]


def test_override_gpu_and_name(write_matrix):
    m = matrix.load(write_matrix(SMALL), ["gpu=a100-80gb", "name=other"])
    assert (m.gpu, m.name) == ("a100-80gb", "other")
    assert {c.gpu for c in m.cells} == {"a100-80gb"}


def test_override_scalar_applies_everywhere(write_matrix):
    m = matrix.load(write_matrix(SMALL), ["seq=64", "precision=fp32"])
    assert shape(m, "seq", "precision") == [(64, "fp32")] * 3


def test_override_dotted_path_sets_only_that_place(write_matrix):
    m = matrix.load(write_matrix(SMALL), ["defaults.seq=512"])
    assert shape(m, "seq", "label") == [(512, ""), (512, ""), (128, "inc")]
    m = matrix.load(write_matrix(SMALL), ["sweep.batch=[16]"])
    assert shape(m, "batch") == [(16,), (8,)]


def test_override_method_replaces_tuning_fields(write_matrix):
    m = matrix.load(
        write_matrix("gpu: a100-80gb\ndefaults: {model: gpt2, tuning: lora}\nsweep: {batch: [1]}\n"),
        ["method=[zero3-offload, lora+zero3-offload]"],
    )
    assert [c.method for c in m.cells] == ["zero3-offload", "lora+zero3-offload"]


@pytest.mark.parametrize(
    "arg, message",
    [
        ("batch", "override 'batch' is not key=value"),
        ("=3", "override '=3' is not key=value"),
        ("batchsize=3", "override batchsize: unknown key"),
        ("batch=[1,", "override batch: '[1,' is not a valid value"),
    ],
)
def test_bad_overrides(write_matrix, arg, message):
    assert problems(write_matrix(SMALL), [arg])[0].startswith(message)


def test_parse_overrides_reads_yaml_values():
    assert matrix.parse_overrides(["batch=[1,2]", "gpu=a100-80gb", "grad_ckpt=true", "defaults.seq=512"]) == [
        ("batch", [1, 2]),
        ("gpu", "a100-80gb"),
        ("grad_ckpt", True),
        ("defaults.seq", 512),
    ]


def test_model_by_name_hub_id_alias_case_and_path(write_matrix, tmp_path):
    config = tmp_path / "mine" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(models.resolve("tiny-gpt2").config))
    m = matrix.load(
        write_matrix(
            "gpu: t4\ndefaults: {seq: 64}\n"
            "sweep:\n  model: [gpt2, openai-community/gpt2-medium, OPENAI-COMMUNITY/GPT2-LARGE, mine/config.json, mine]\n"
        )
    )
    assert [c.model for c in m.cells][:3] == ["gpt2", "gpt2-medium", "gpt2-large"]
    assert m.cells[3].model == str(config.resolve())
    assert len(m.cells) == 4  # the folder and its config.json are one model


def test_a_config_path_gives_the_same_id_wherever_it_lives(tmp_path, write_matrix):
    text = "gpu: t4\ndefaults: {seq: 64}\nsweep: {model: [cfg/config.json]}\n"
    ids = []
    for where in ("a", "b"):
        config = tmp_path / where / "cfg" / "config.json"
        config.parent.mkdir(parents=True)
        config.write_text(json.dumps(models.resolve("tiny-gpt2").config))
        ids.append(matrix.load(write_matrix(text, f"{where}/m.yaml")).cells[0].cell_id)
    assert ids[0] == ids[1]


def test_cell_ids_do_not_depend_on_how_the_matrix_path_is_spelled(repo, monkeypatch):
    monkeypatch.chdir(repo)
    a = matrix.load("matrices/v100.yaml")
    monkeypatch.chdir(repo / "matrices")
    b = matrix.load(str(repo / "matrices" / "v100.yaml"))
    assert [c.cell_id for c in a.cells] == [c.cell_id for c in b.cells]


def test_ds_config_is_relative_to_the_matrix(repo, tmp_path, write_matrix):
    shutil.copy(repo / "matrices" / "configs" / "ds_gptneo.json", tmp_path / "ds.json")
    m = matrix.load(
        write_matrix(
            "gpu: v100-16gb\ninclude: [{model: gpt-neo-2.7b, method: zero2-offload, precision: fp16, ds_config: ../ds.json}]\n",
            "sub/m.yaml",
        )
    )
    assert m.cells[0].ds_config == str((tmp_path / "ds.json").resolve())


def test_bf16_on_v100_is_rejected_once_for_all_its_cells(write_matrix):
    lines = problems(write_matrix("gpu: v100-16gb\nsweep: {model: [gpt2], precision: [fp16, bf16], batch: [1, 2]}\n"))
    assert lines == [
        "2 cells (cell 3-4): precision: 'bf16' is not supported on v100-16gb (no bf16); allowed: fp32, fp16"
    ]


def test_bf16_after_overriding_the_gpu_to_a_v100(repo):
    lines = problems(repo / "matrices" / "a100-80gb.yaml", ["gpu=v100-16gb"])
    assert lines == [
        "192 cells (cell 1-192): precision: 'bf16' is not supported on v100-16gb (no bf16); allowed: fp32, fp16"
    ]


def test_seq_beyond_gpt2_positions_is_rejected(write_matrix):
    lines = problems(write_matrix("gpu: t4\ninclude: [{model: gpt2, seq: 2048, batch: 2}]\n"))
    assert lines == ["include[0] (gpt2 b2 s2048): seq: 2048 exceeds gpt2's 1024 positions; allowed: <= 1024"]


def test_an_unknown_model_is_one_line_with_its_cells_counted(write_matrix):
    lines = problems(
        write_matrix(
            "gpu: t4\nsweep: {model: [gpt2, gpt5], method: [full, lora], batch: [1, 2, 4, 8, 12, 16], grad_ckpt: [true, false]}\n"
        )
    )
    assert lines == [
        "24 cells (cell 25-48): model: 'gpt5' is not in the catalog; closest: gpt2, gpt2-xl, opt-350m; "
        "or give a path to a config.json"
    ]


def test_an_unknown_gpu_is_one_line_listing_the_catalog(write_matrix):
    lines = problems(write_matrix("gpu: v200\nsweep: {model: [gpt2], batch: [1, 2, 4]}\n"))
    assert (
        len(lines) == 1
        and lines[0].startswith("gpu: 'v200' is not in the catalog")
        and "allowed: a100-40gb," in lines[0]
    )


def test_other_mistakes_still_show_beside_a_typo_shared_by_every_cell(write_matrix):
    lines = problems(
        write_matrix(
            "gpu: v100-16gb\ndefaults: {sequence: 512}\nsweep: {model: [gpt2], precision: [bf16], method: [zero2-ofload, full]}\n"
        )
    )
    assert len(lines) == 3
    assert lines[0].startswith("2 cells (cell 1-2): unknown key 'sequence'")
    assert "2 cells (cell 1-2): precision: 'bf16' is not supported on v100-16gb (no bf16); allowed: fp32, fp16" in lines
    assert any(
        line.startswith("cell 1 (gpt2 zero2-ofload bf16): method: 'zero2-ofload' is not allowed") for line in lines
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("sweep: {model: [gpt2]}\n", "gpu: missing; allowed: a100-40gb"),
        ("gpu: t4\nname: ../x\nsweep: {model: [gpt2]}\n", "name: '../x' is not allowed"),
        ("gpu: t4\nsweep: {model: [gpt2], gpu: [t4]}\n", "sweep.gpu: a matrix targets one GPU"),
        ("gpu: t4\nsweep: {model: gpt2}\n", "sweep.model: 'gpt2' is not allowed; allowed: a non-empty list"),
        ("gpu: t4\nsweep: [gpt2]\n", "sweep: ['gpt2'] is not allowed"),
        ("gpu: t4\ndefaults: [1]\nsweep: {model: [gpt2]}\n", "defaults: [1] is not allowed"),
        ("gpu: t4\nsweep: {model: [gpt2]}\ninclude: {model: gpt2}\n", "include: {'model': 'gpt2'} is not allowed"),
        ("gpu: t4\nsweep: {model: [gpt2]}\ninclude: [gpt2]\n", "include[0]: 'gpt2' is not allowed"),
        ("gpu: t4\nsweeps: {model: [gpt2]}\n", "unknown key 'sweeps'"),
        ("gpu: t4\nsweep: {model: [gpt2]}\nexclude: [{model: gpt2}]\n", "expands to no cells"),
        ("- just a list\n", "must be a YAML mapping"),
        ("gpu: [t4\n", "is not valid YAML"),
    ],
)
def test_file_level_mistakes(write_matrix, text, message):
    assert any(message in line for line in problems(write_matrix(text))), problems(write_matrix(text))


def test_a_missing_file_is_a_user_error(tmp_path):
    assert "cannot be read" in problems(tmp_path / "nope.yaml")[0]
