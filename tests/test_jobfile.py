"""Job files of other tools (tests/data/jobs/, written from each tool's documentation) read as cells."""

from __future__ import annotations

import json

import pytest

from bench import jobfile
from bench.cli import main
from bench.errors import UserError

JOBS = "tests/data/jobs"


def _load(repo, name):
    return jobfile.load(repo / JOBS / name)


def test_deepspeed_json_states_the_method(repo):
    z2 = _load(repo, "ds_zero2.json")
    assert z2.kind == "deepspeed"
    assert (z2.fields["strategy"], z2.fields["offload"]) == ("zero2", "none")
    assert "precision" not in z2.fields and "batch" not in z2.fields  # "auto": left to the cell
    z3 = _load(repo, "ds_zero3_offload.json")
    assert {k: z3.fields[k] for k in ("strategy", "offload", "precision", "batch", "grad_accum")} == {
        "strategy": "zero3",
        "offload": "all",
        "precision": "bf16",
        "batch": 2,
        "grad_accum": 4,
    }
    assert z3.fields["ds_config"].endswith("ds_zero3_offload.json")
    assert any(n.startswith("optimizer:") and "DeepSpeed builds this optimizer itself" in n for n in z3.notes)


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"zero_optimization": {"stage": 0}}, r"zero_optimization.stage: 0 is not allowed; allowed: 1, 2, 3"),
        (
            {
                "zero_optimization": {
                    "stage": 2,
                    "offload_param": {"device": "cpu"},
                    "offload_optimizer": {"device": "cpu"},
                }
            },
            r"offload_param needs stage 3",
        ),
    ],
)
def test_deepspeed_settings_bench_cannot_represent_are_refused(tmp_path, doc, message):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=message):
        jobfile.load(path)


def test_training_arguments_json_with_its_deepspeed_file(repo):
    job = _load(repo, "training_args.json")
    assert job.kind == "trainer"
    assert {k: job.fields[k] for k in ("batch", "grad_accum", "grad_ckpt", "precision", "optimizer", "strategy")} == {
        "batch": 4,
        "grad_accum": 8,
        "grad_ckpt": True,
        "precision": "bf16",
        "optimizer": "adamw",
        "strategy": "zero2",
    }
    assert job.fields["ds_config"].endswith("ds_zero2.json")
    noted = {n.split(":")[0] for n in job.notes}
    assert {"torch_compile", "neftune_noise_alpha"} <= noted
    assert not any(n.startswith("keys bench does not read") for n in job.notes)  # every key is known


def test_sft_config_yaml_notes_packing_and_liger(repo):
    job = _load(repo, "sft_config.yaml")
    assert job.fields["seq"] == 4096 and job.fields["optimizer"] == "adamw-8bit"
    noted = {n.split(":")[0].split()[-1] for n in job.notes}
    assert {"packing", "use_liger_kernel", "paged_adamw_8bit"} <= noted


def test_axolotl_qlora_yaml(repo):
    job = _load(repo, "axolotl_qlora.yml")
    assert job.kind == "axolotl"
    assert {
        k: job.fields[k]
        for k in (
            "model",
            "tuning",
            "lora_r",
            "lora_alpha",
            "lora_targets",
            "seq",
            "batch",
            "grad_accum",
            "grad_ckpt",
            "precision",
            "optimizer",
            "attn",
        )
    } == {
        "model": "meta-llama/Llama-3.2-1B",
        "tuning": "qlora",
        "lora_r": 32,
        "lora_alpha": 16,
        "lora_targets": "all-linear",
        "seq": 2048,
        "batch": 2,
        "grad_accum": 4,
        "grad_ckpt": True,
        "precision": "bf16",
        "optimizer": "adamw-8bit",
        "attn": "flash_attention_2",
    }
    assert [n.split(":")[0] for n in job.notes] == ["sample_packing"]


def test_llamafactory_yaml_with_its_defaults(repo):
    job = _load(repo, "llamafactory_lora_sft.yaml")
    assert job.kind == "llamafactory"
    assert {
        k: job.fields[k]
        for k in (
            "model",
            "tuning",
            "lora_r",
            "lora_alpha",
            "lora_dropout",
            "lora_targets",
            "seq",
            "batch",
            "grad_accum",
            "precision",
            "grad_ckpt",
        )
    } == {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "tuning": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_targets": "all-linear",
        "seq": 2048,
        "batch": 1,
        "grad_accum": 8,
        "precision": "bf16",
        "grad_ckpt": True,
    }
    assert [n.split(":")[0] for n in job.notes] == ["enable_liger_kernel"]
    ds = _load(repo, "llamafactory_qlora_ds3.yaml")
    assert (ds.fields["tuning"], ds.fields["strategy"], ds.fields["offload"]) == ("qlora", "zero3", "all")
    assert sum(n.startswith("packing") for n in ds.notes) == 1


def test_an_unknown_key_is_named_not_dropped(tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text("per_device_train_batch_size: 2\nmy_custom_flag: 3\n")
    (note,) = jobfile.load(path).notes
    assert note.endswith("my_custom_flag")


def test_unknown_optimizer_and_file_kind_are_one_line(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"per_device_train_batch_size": 2, "optim": "lion_32bit"}))
    with pytest.raises(UserError, match=r"optim: 'lion_32bit' is not allowed; allowed: adamw, .*adamw_torch_fused"):
        jobfile.load(path)
    path.write_text(json.dumps({"foo": 1}))
    with pytest.raises(UserError, match=r"is none of the files bench reads"):
        jobfile.load(path)


def test_predict_from_a_deepspeed_json_without_method(repo, capsys):
    code = main(
        [
            "predict",
            "--from",
            str(repo / JOBS / "ds_zero3_offload.json"),
            "--model",
            "tiny-llama",
            "--gpus",
            "2",
            "--seq",
            "256",
            "--gpu",
            "h100-80gb",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["cell"]["strategy"] == "zero3" and out["cell"]["offload"] == "all"
    assert out["cell"]["batch"] == 2 and out["cell"]["precision"] == "bf16"
    assert any("DeepSpeed builds this optimizer itself" in n for n in out["predicted"]["notes"])


def test_predict_from_axolotl_prints_its_notes(repo, capsys):
    code = main(["predict", "--from", str(repo / JOBS / "axolotl_qlora.yml"), "--batch", "1", "--gpu", "a100-80gb"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("llama-3.2-1b-train-qlora-bf16-b1-s2048-ga4-ckpt on a100-80gb")
    assert "  note: sample_packing: True is not modelled" in out


def test_predict_from_training_arguments_needs_a_model(repo, capsys):
    assert main(["predict", "--from", str(repo / JOBS / "training_args.json"), "--gpu", "h100-80gb"]) == 2
    assert "model: missing; give --model" in capsys.readouterr().err
    code = main(
        [
            "predict",
            "--from",
            str(repo / JOBS / "training_args.json"),
            "--model",
            "tiny-llama",
            "--method",
            "lora",
            "--gpu",
            "h100-80gb",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and (out["cell"]["tuning"], out["cell"]["strategy"]) == ("lora", "zero2")
    notes = out["predicted"]["notes"]
    assert any(n.startswith("trainer file gives no sequence length") for n in notes)
    assert any(n.startswith("the file does not say how many GPUs") for n in notes)


def test_matrix_include_from_a_job_file(repo, tmp_path, capsys):
    import shutil

    from bench import matrix

    for name in ("llamafactory_qlora_ds3.yaml", "ds_zero3_offload.json"):
        shutil.copy(repo / JOBS / name, tmp_path / name)
    path = tmp_path / "m.yaml"
    path.write_text(
        "gpu: h100-80gb\ninclude:\n  - {from: llamafactory_qlora_ds3.yaml, gpus: 2, model: tiny-llama}\n"
        "  - {from: llamafactory_qlora_ds3.yaml, model: tiny-llama, method: lora, batch: 1}\n"
    )
    m = matrix.load(path)
    first, second = m.cells
    assert (first.tuning, first.strategy, first.offload, first.gpus, first.batch) == ("qlora", "zero3", "all", 2, 2)
    assert (second.tuning, second.strategy, second.batch) == ("lora", "zero3", 1)
    assert any(n.startswith("packing") for n in m.notes[first.cell_id])
    assert main(["plan", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    entries = json.loads(captured.out)
    assert any(n.startswith("packing") for n in entries[0]["notes"])
    assert f"note: cell {first.cell_id} (tiny-llama): packing" in captured.err


def test_matrix_include_from_a_bad_file_is_reported(tmp_path):
    from bench import matrix

    (tmp_path / "args.json").write_text(json.dumps({"per_device_train_batch_size": 1, "optim": "lion"}))
    path = tmp_path / "m.yaml"
    path.write_text("gpu: h100-80gb\ninclude: [{from: args.json, model: gpt2}]\n")
    with pytest.raises(UserError, match=r"include\[0\].from: trainer args.json: optim: 'lion' is not allowed"):
        matrix.load(path)
