"""accelerate configs (tests/data/jobs/accelerate_*.yaml, as ``accelerate config`` writes them) read as cells,
checked against accelerate's own launcher where it is installed."""

from __future__ import annotations

import json

import pytest

from bench import dsconfig, jobfile
from bench.cli import main
from bench.errors import UserError
from bench.readers import deepspeed

JOBS = "tests/data/jobs"


def _load(repo, name):
    return jobfile.load(repo / JOBS / name)


def _heads(job) -> set[str]:
    return {n.split(":")[0] for n in job.notes}


def test_deepspeed_zero3_offload(repo):
    job = _load(repo, "accelerate_ds_zero3_offload.yaml")
    assert job.kind == "accelerate"
    assert job.fields == {
        "tuning": "full",
        "strategy": "zero3",
        "offload": "all",
        "gpus": 8,
        "precision": "bf16",
        "grad_accum": 4,
    }  # zero3_init_flag: true is the cell's default (zero_init unset); clipping and saving change nothing
    assert job.notes == ()


def test_deepspeed_config_file_is_read_beside_the_yaml(repo):
    job = _load(repo, "accelerate_ds_file.yaml")
    fields = dict(job.fields)
    assert fields.pop("ds_config").endswith("tests/data/jobs/ds_zero3_offload.json")
    assert fields == {
        "tuning": "full",
        "strategy": "zero3",
        "offload": "all",
        "gpus": 2,
        "precision": "bf16",
        "batch": 2,
        "grad_accum": 4,
        "zero_init": False,
    }
    assert [n.split(":")[:2] for n in job.notes] == [["deepspeed_config_file", " optimizer"]]


def test_fsdp2(repo):
    job = _load(repo, "accelerate_fsdp2.yaml")
    assert job.fields == {
        "tuning": "full",
        "strategy": "fsdp",
        "offload": "none",
        "gpus": 4,
        "precision": "bf16",
        "grad_ckpt": True,
    }
    (note,) = job.notes
    assert note.startswith("mixed_precision under FSDP: accelerate reduces gradients in bf16")


def test_multi_gpu(repo):
    job = _load(repo, "accelerate_multi_gpu.yaml")
    assert job.fields == {"tuning": "full", "strategy": "ddp", "offload": "none", "gpus": 2, "precision": "fp16"}
    assert job.notes == ()


def test_the_notes_name_every_unmodelled_key(repo):
    job = _load(repo, "accelerate_fsdp1_unmodelled.yaml")
    assert job.fields == {"tuning": "full", "strategy": "fsdp", "offload": "all", "gpus": 16, "precision": "bf16"}
    assert _heads(job) == {
        "mixed_precision",  # fp8, and FSDP's reduce dtype
        "mixed_precision under FSDP",
        "num_machines",
        "fsdp_config.fsdp_version",
        "fsdp_config.fsdp_sharding_strategy",
        "fsdp_config.fsdp_auto_wrap_policy",
        "dynamo_config",
    }
    notes = "\n".join(job.notes)
    assert "'fp8' is not modelled (FP8 matmuls through TE" in notes
    assert "torch.compile with backend 'INDUCTOR' (mode 'max-autotune', use_regional_compilation True)" in notes
    assert "HYBRID_SHARD is predicted as FULL_SHARD" in notes and "SIZE_BASED_WRAP is not modelled" in notes
    assert "num_machines: 2 is not modelled" in notes and "predicted as 16 GPUs" in notes
    # the FSDP1-only options that behave as FSDP2 (backward prefetch of one unit, original parameters) are not noted
    assert "fsdp_backward_prefetch" not in notes and "fsdp_use_orig_params" not in notes


def test_other_unmodelled_and_unknown_keys_are_notes(tmp_path):
    path = tmp_path / "default_config.yaml"
    path.write_text(
        "distributed_type: DEEPSPEED\nnum_processes: 2\nuse_cpu: true\ndowncast_bf16: true\n"
        "deepspeed_config: {zero_stage: 3, offload_optimizer_device: nvme, offload_param_device: nvme,"
        " deepspeed_moe_layer_cls_names: MixtralSparseMoeBlock, my_flag: 1}\n"
        "fsdp_config: {fsdp_offload_params: true}\nparallelism_config: {parallelism_config_tp_size: 2}\n"
        "dynamo_backend: EAGER\nmy_key: 3\n"
    )
    job = jobfile.load(path)
    assert (job.fields["strategy"], job.fields["offload"]) == ("zero3", "all")
    heads = _heads(job)
    assert {
        "use_cpu",
        "downcast_bf16",
        "deepspeed_config.deepspeed_moe_layer_cls_names",
        "offload to nvme is predicted as offload to host memory (the GPU side is the same; the host figure is not)",
        "fsdp_config",  # set but unused under DEEPSPEED
        "parallelism_config",
        "dynamo_config",  # the older top-level dynamo_backend
    } <= heads
    assert job.notes[-1] == "keys bench does not read (assumed not to change memory): deepspeed_config.my_flag, my_key"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "distributed_type: MULTI_NPU\nnum_processes: 2\n",
            r"distributed_type: 'MULTI_NPU' is not allowed; allowed: NO,",
        ),
        ("distributed_type: NO\nnum_processes: 1\n", r"distributed_type: False .*reads an unquoted NO as false"),
        (
            "distributed_type: MULTI_GPU\nmixed_precision: fp32\n",
            r"mixed_precision: 'fp32' is not allowed; allowed: no,",
        ),
        (
            "distributed_type: MULTI_GPU\nnum_processes: 0\n",
            r"num_processes: 0 is not allowed; allowed: a whole number",
        ),
        (
            "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config: {zero_stage: 0}\n",
            r"deepspeed_config.zero_stage: 0 is not allowed; allowed: 1, 2, 3",
        ),
        (
            "distributed_type: DEEPSPEED\nnum_processes: 2\n"
            "deepspeed_config: {zero_stage: 2, offload_optimizer_device: cpu, offload_param_device: cpu}\n",
            r"deepspeed_config.offload_param_device: 'cpu' needs zero_stage 3, not 2",
        ),
        (
            "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config: {offload_optimizer_device: disk}\n",
            r"deepspeed_config.offload_optimizer_device: 'disk' is not allowed; allowed: none, cpu, nvme",
        ),
        (
            "distributed_type: DEEPSPEED\nnum_processes: 2\n"
            "deepspeed_config: {deepspeed_config_file: ds_zero2.json, zero_stage: 3}\n",
            r"deepspeed_config.zero_stage: 3 is not allowed beside deepspeed_config_file \(accelerate refuses it\)",
        ),
        (
            "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config: {deepspeed_config_file: nowhere.json}\n",
            r"deepspeed_config.deepspeed_config_file: 'nowhere.json' is not a file",
        ),
        (
            "distributed_type: FSDP\nnum_processes: 2\nfsdp_config: {fsdp_version: 1, fsdp_sharding_strategy: SHARD_GRAD_OP}\n",
            r"fsdp_config.fsdp_sharding_strategy: 'SHARD_GRAD_OP' is not modelled .*allowed: FULL_SHARD, HYBRID_SHARD",
        ),
        (
            "distributed_type: FSDP\nnum_processes: 2\nfsdp_config: {fsdp_version: 2, fsdp_reshard_after_forward: false}\n",
            r"fsdp_config.fsdp_reshard_after_forward: False is not modelled .*allowed: true",
        ),
        (
            "distributed_type: FSDP\nnum_processes: 2\nfsdp_config: {fsdp_version: 3}\n",
            r"fsdp_config.fsdp_version: 3 is not allowed; allowed: 1, 2",
        ),
        (
            "distributed_type: FSDP\nnum_processes: 2\nfsdp_config: {fsdp_offload_params: maybe}\n",
            r"fsdp_config.fsdp_offload_params: 'maybe' is not allowed; allowed: true, false",
        ),
    ],
)
def test_a_bad_value_is_one_line(tmp_path, repo, text, message):
    import shutil

    shutil.copy(repo / JOBS / "ds_zero2.json", tmp_path / "ds_zero2.json")
    path = tmp_path / "accelerate.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as e:
        jobfile.load(path)
    assert len(e.value.problems) == 1 and "\n" not in e.value.problems[0]
    assert e.value.problems[0].startswith("accelerate accelerate.yaml: ")


def test_a_bad_value_exits_2_with_one_error_line(tmp_path, capsys):
    path = tmp_path / "default_config.yaml"
    path.write_text("distributed_type: XLA\nnum_processes: 8\nmixed_precision: bf16\n")
    assert main(["predict", "--from", str(path), "--model", "tiny-llama", "--gpu", "h100-80gb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: accelerate default_config.yaml: distributed_type: 'XLA'")


def test_predict_from_an_accelerate_config(repo, capsys):
    code = main(
        [
            "predict",
            "--from",
            str(repo / JOBS / "accelerate_multi_gpu.yaml"),
            "--model",
            "tiny-llama",
            "--seq",
            "256",
            "--gpu",
            "h100-80gb",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    cell = out["cell"]
    assert code == 0 and (cell["strategy"], cell["gpus"], cell["precision"]) == ("ddp", 2, "fp16")
    assert not any("does not say how many GPUs" in n for n in out["predicted"]["notes"])  # num_processes says


def test_matrix_include_from_an_accelerate_config(repo, tmp_path):
    import shutil

    from bench import matrix

    shutil.copy(repo / JOBS / "accelerate_fsdp2.yaml", tmp_path / "accelerate_fsdp2.yaml")
    path = tmp_path / "m.yaml"
    path.write_text(
        "gpu: h100-80gb\ninclude:\n  - {from: accelerate_fsdp2.yaml, model: tiny-llama, batch: 2}\n"
        "  - {from: accelerate_fsdp2.yaml, model: tiny-llama, method: lora, gpus: 2}\n"
    )
    first, second = matrix.load(path).cells
    assert (first.strategy, first.gpus, first.grad_ckpt, first.precision, first.batch) == ("fsdp", 4, True, "bf16", 2)
    assert (second.tuning, second.strategy, second.gpus) == ("lora", "fsdp", 2)


# accelerate's own reading of the same files: its launcher turns the config into the processes'
# environment, its plugins read that back (what `accelerate launch` runs)


def _launch_args(path):
    pytest.importorskip("accelerate")
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    return args, defaults, mp_from_config


@pytest.mark.parametrize("name", ["accelerate_ds_zero3_offload.yaml", "accelerate_ds_file.yaml"])
def test_deepspeed_files_as_accelerate_launches_them(repo, monkeypatch, name):
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    monkeypatch.chdir(repo / JOBS)  # accelerate opens deepspeed_config_file from the working directory
    args, defaults, mp_from_config = _launch_args(repo / JOBS / name)
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(env["ACCELERATE_MIXED_PRECISION"])
    ds = plugin.deepspeed_config  # the DeepSpeed config accelerate hands deepspeed.initialize
    strategy, offload, _ = deepspeed.strategy_of(ds, "")
    job = _load(repo, name)
    assert (job.fields["strategy"], job.fields["offload"]) == (strategy, offload)
    assert job.fields.get("precision", "fp32") == (dsconfig._precision(ds) or "fp32")
    assert job.fields.get("grad_accum", 1) == ds["gradient_accumulation_steps"]
    assert job.fields["gpus"] == args.num_processes
    assert job.fields.get("zero_init", True) == plugin.zero3_init_flag


@pytest.mark.parametrize(
    "name", ["accelerate_fsdp2.yaml", "accelerate_fsdp1_unmodelled.yaml", "accelerate_multi_gpu.yaml"]
)
def test_fsdp_and_ddp_files_as_accelerate_launches_them(repo, monkeypatch, name):
    args, _, _ = _launch_args(repo / JOBS / name)
    from accelerate.utils import launch

    monkeypatch.setattr(launch, "is_fp8_available", lambda: True)  # fp8 kernels need a GPU; their env does not
    env = launch.prepare_multi_gpu_env(args)
    job = _load(repo, name)
    assert job.fields["gpus"] == args.num_processes
    fsdp = env.get("ACCELERATE_USE_FSDP") == "true"
    assert job.fields["strategy"] == ("fsdp" if fsdp else "ddp")
    mixed = env["ACCELERATE_MIXED_PRECISION"]
    assert job.fields["precision"] == {"no": "fp32", "fp16": "fp16", "bf16": "bf16", "fp8": "bf16"}[mixed]
    if fsdp:
        assert job.fields["offload"] == ("all" if env["FSDP_OFFLOAD_PARAMS"] == "true" else "none")
        assert job.fields.get("grad_ckpt", False) == (env["FSDP_ACTIVATION_CHECKPOINTING"] == "true")
        assert ("fsdp_config.fsdp_version" in _heads(job)) == (env["FSDP_VERSION"] == "1")
    dynamo = env["ACCELERATE_DYNAMO_BACKEND"] != "NO"
    assert ("dynamo_config" in _heads(job)) == dynamo


def test_fsdp1_runs_fsdp_sharding_strategy_as_accelerate_does(tmp_path, monkeypatch):
    """``accelerate config`` writes FSDP1's strategy as fsdp_reshard_after_forward; ``accelerate launch``
    also passes fsdp_sharding_strategy (FULL_SHARD by default), which the FSDP1 plugin prefers."""
    path = tmp_path / "fsdp1.yaml"
    path.write_text(
        "distributed_type: FSDP\nnum_processes: 2\nfsdp_config: {fsdp_version: 1, fsdp_reshard_after_forward: "
        "SHARD_GRAD_OP, fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP, fsdp_use_orig_params: false}\n"
    )
    job = jobfile.load(path)
    assert (job.fields["strategy"], job.fields["offload"]) == ("fsdp", "none")
    notes = "\n".join(job.notes)
    assert "fsdp_reshard_after_forward: 'SHARD_GRAD_OP' is not what accelerate runs for FSDP1" in notes
    assert "its FSDP1-only options are not modelled (fsdp_use_orig_params False)" in notes

    args, _, _ = _launch_args(path)
    from accelerate.utils import FullyShardedDataParallelPlugin, launch

    for key, value in launch.prepare_multi_gpu_env(args).items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin(sync_module_states=False, cpu_ram_efficient_loading=False)
    assert (
        plugin.sharding_strategy.name == "FULL_SHARD"
    )  # what FSDP1 is given (sharding_strategy or reshard_after_forward)
