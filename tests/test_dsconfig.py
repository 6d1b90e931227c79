"""DeepSpeed configs read the way DeepSpeed and the HF Trainer read them."""

from __future__ import annotations

import json

import pytest

from bench import dsconfig, matrix
from bench.cell import normalize
from bench.errors import UserError


@pytest.fixture
def ds(tmp_path):
    """``ds(config, method=..., precision=...)``: a cell pointing at that DeepSpeed JSON."""

    def make(config: dict, method: str = "zero2-offload", precision: str = "fp16"):
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(config))
        return normalize(
            {"model": "gpt2-xl", "gpu": "v100-16gb", "method": method, "precision": precision, "ds_config": str(path)}
        )

    return make


def test_legacy_cpu_offload_means_optimizer_offload_pinned(ds):
    s = dsconfig.settings(ds({"zero_optimization": {"stage": 2, "cpu_offload": True}}))
    assert (s.offload_optimizer, s.offload_param, s.pin_memory) == (True, False, True)


def test_legacy_pin_flag_and_param_offload(ds):
    cell = ds(
        {
            "zero_optimization": {
                "stage": 3,
                "cpu_offload": True,
                "cpu_offload_param": True,
                "cpu_offload_use_pin_memory": False,
            }
        },
        method="zero3-offload",
    )
    s = dsconfig.settings(cell)
    assert (s.offload_optimizer, s.offload_param, s.pin_memory) == (True, True, False)


def test_current_offload_sections(ds):
    s = dsconfig.settings(
        ds({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": False}}})
    )
    assert (s.offload_optimizer, s.pin_memory) == (True, False)


def test_absent_keys_take_deepspeed_defaults(ds):
    s = dsconfig.settings(ds({"zero_optimization": {"stage": 2, "cpu_offload": True}}))
    assert (s.reduce_bucket_size, s.allgather_bucket_size) == (500_000_000, 500_000_000)
    assert (s.overlap_comm, s.contiguous_gradients) == (False, True)  # overlap defaults on for stage 3 only
    assert s.precision is None


def test_auto_values_resolve_from_the_hidden_size(ds):
    cell = ds(
        {
            "zero_optimization": {
                "stage": 3,
                "offload_optimizer": {"device": "cpu"},
                "offload_param": {"device": "cpu"},
                "reduce_bucket_size": "auto",
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                "overlap_comm": "auto",
            },
            "fp16": {"enabled": "auto"},
        },
        method="zero3-offload",
    )
    s = dsconfig.settings(cell, hidden_size=1600)
    assert s.reduce_bucket_size == 1600 * 1600
    assert s.prefetch_bucket_size == int(0.9 * 1600 * 1600)
    assert s.param_persistence_threshold == 16_000
    assert s.overlap_comm is True
    assert s.precision is None  # "auto": the cell decides


def test_hidden_size_under_each_spelling():
    assert dsconfig.hidden_size_of({"n_embd": 1600}) == 1600
    assert dsconfig.hidden_size_of({"hidden_size": 4096}) == 4096
    assert dsconfig.hidden_size_of({"d_model": 1024}) == 1024
    assert dsconfig.hidden_size_of({"encoder": {"n_embd": 2560}}) == 2560
    assert dsconfig.hidden_size_of({}) is None


def test_stage_contradiction_is_an_error(ds):
    with pytest.raises(UserError) as e:
        dsconfig.settings(ds({"zero_optimization": {"stage": 3, "cpu_offload": True}}))
    assert len(e.value.problems) == 1
    assert "zero_optimization.stage 3 contradicts the cell's strategy 'zero2'; allowed: 2" in e.value.problems[0]


def test_precision_contradiction_is_an_error(ds):
    with pytest.raises(UserError) as e:
        dsconfig.settings(
            ds({"zero_optimization": {"stage": 2, "cpu_offload": True}, "fp16": {"enabled": True}}, precision="bf16")
        )
    (line,) = e.value.problems
    assert "precision 'fp16' contradicts the cell's precision 'bf16'; allowed: bf16.enabled true" in line


def test_legacy_bfloat16_section_counts_as_bf16(ds):
    with pytest.raises(UserError, match="precision 'bf16' contradicts the cell's precision 'fp16'"):
        dsconfig.settings(ds({"zero_optimization": {"stage": 2, "cpu_offload": True}, "bfloat16": {"enabled": True}}))


def test_a_disabled_section_means_fp32(ds):
    with pytest.raises(UserError, match="precision 'fp32' contradicts"):
        dsconfig.settings(ds({"zero_optimization": {"stage": 2, "cpu_offload": True}, "fp16": {"enabled": False}}))


def test_offload_contradiction_and_every_problem_at_once(ds):
    with pytest.raises(UserError) as e:
        dsconfig.settings(ds({"zero_optimization": {"stage": 3}, "fp16": {"enabled": True}}, precision="fp32"))
    text = "\n".join(e.value.problems)
    assert len(e.value.problems) == 3
    assert "zero_optimization.stage 3 contradicts" in text
    assert "offload 'none' (optimizer=False, param=False) contradicts the cell's offload 'optimizer'" in text
    assert "precision 'fp16' contradicts the cell's precision 'fp32'" in text


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"zero_optimization": {"stage": 2, "cpu_offload": True, "reduce_bucket_size": "2e8"}},
            "reduce_bucket_size: '2e8' is not allowed",
        ),
        (
            {"zero_optimization": {"stage": 2, "offload_optimizer": "cpu"}},
            "zero_optimization.offload_optimizer: 'cpu' is not allowed",
        ),
        ({"zero_optimization": [2]}, "zero_optimization: [2] is not allowed"),
        ([], "must hold a JSON object"),
    ],
)
def test_malformed_files_are_user_errors(ds, config, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        dsconfig.settings(ds(config))


def test_unreadable_and_invalid_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for path, message in ((tmp_path / "missing.json", "cannot be read"), (bad, "is not valid JSON")):
        cell = normalize({"model": "gpt2", "gpu": "t4", "method": "zero2", "ds_config": str(path)})
        with pytest.raises(UserError, match=message):
            dsconfig.settings(cell)


def test_shipped_seed_configs(repo):
    m = matrix.load(repo / "matrices" / "v100.yaml")
    seeds = {c.label: c for c in m.cells if c.label.startswith("seed-")}
    assert sorted(seeds) == ["seed-gpt2xl-b12", "seed-gpt2xl-b16", "seed-gpt2xl-b8", "seed-gptneo-b4"]
    xl = dsconfig.settings(seeds["seed-gpt2xl-b8"], 1600)
    assert (xl.stage, xl.offload_optimizer, xl.offload_param, xl.pin_memory) == (2, True, False, True)
    assert (xl.reduce_bucket_size, xl.allgather_bucket_size) == (200_000_000, 200_000_000)
    assert (xl.overlap_comm, xl.contiguous_gradients, xl.precision) == (True, True, "fp16")
    neo = dsconfig.settings(seeds["seed-gptneo-b4"], 2560)
    assert (neo.reduce_bucket_size, neo.allgather_bucket_size, neo.offload_optimizer) == (50_000_000, 50_000_000, True)


def test_deepspeed_config_carries_the_file_settings(ds):
    cfg = dsconfig.deepspeed_config(
        ds(
            {
                "zero_optimization": {"stage": 2, "cpu_offload": True, "reduce_bucket_size": 2e8},
                "train_micro_batch_size_per_gpu": "auto",
            }
        )
    )
    zo = cfg["zero_optimization"]
    assert zo["stage"] == 2 and zo["reduce_bucket_size"] == 200_000_000
    assert zo["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert "offload_param" not in zo
    assert cfg["fp16"]["enabled"] is True and cfg["train_micro_batch_size_per_gpu"] == 1


def test_generated_settings_without_a_file():
    cell = normalize({"model": "gpt2", "gpu": "t4", "method": "zero3-offload"})
    s = dsconfig.settings(cell)
    assert (s.stage, s.offload_optimizer, s.offload_param, s.overlap_comm) == (3, True, True, True)
    assert "stage3_prefetch_bucket_size" in dsconfig.deepspeed_config(cell)["zero_optimization"]


def test_settings_refuse_a_cell_without_zero():
    with pytest.raises(ValueError):
        dsconfig.settings(normalize({"model": "gpt2", "gpu": "t4", "method": "fsdp"}))
