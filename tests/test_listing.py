"""The catalog's newer models and the ``bench models`` verb."""

from __future__ import annotations

import json

from bench import models
from bench.cli import main

TODAY = [
    "qwen3-0.6b",
    "qwen3-1.7b",
    "qwen3-4b",
    "qwen3-8b",
    "qwen3-14b",
    "qwen3-32b",
    "qwen3-30b-a3b",
    "llama-3.3-70b",
    "gemma-3-1b",
    "mistral-nemo-12b",
    "mixtral-8x7b",
    "phi-4",
    "olmo-2-7b",
    "olmo-2-13b",
    "smollm2-135m",
    "smollm2-360m",
    "smollm2-1.7b",
    "deepseek-r1-distill-qwen-1.5b",
    "deepseek-r1-distill-qwen-7b",
    "deepseek-r1-distill-qwen-14b",
    "deepseek-r1-distill-qwen-32b",
    "deepseek-r1-distill-llama-8b",
    "deepseek-r1-distill-llama-70b",
]


def test_todays_models_are_catalogued_by_name_and_hub_id():
    """(Each is built on meta against its published size by test_models.)"""
    assert set(TODAY) <= set(models.names())
    assert models.resolve("Qwen/Qwen3-8B").name == "qwen3-8b"
    assert models.resolve("mistralai/Mixtral-8x7B-Instruct-v0.1").name == "mixtral-8x7b"


def test_models_lists_name_hub_id_params_and_architecture(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "hub", "id", "params", "architecture"]
    assert set(lines[1]) == {"-", " "}  # tabulate's rule under the header
    assert len(lines) == 2 + len(models.names())
    row = next(line for line in lines if line.startswith("mixtral-8x7b "))
    assert row.split()[1:4] == ["mistralai/Mixtral-8x7B-v0.1", "46.70B", "mixtral"]
    assert "(MoE, 8 experts, 2 per token)" in row


def test_models_pattern_and_json(capsys):
    assert main(["models", "qwen3-*", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert sorted(r["name"] for r in found) == sorted(n for n in TODAY if n.startswith("qwen3-"))
    assert main(["models", "PHI"]) == 0
    assert {line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]} == {"phi-3-mini-4k", "phi-4"}
    assert main(["models", "no-such-model"]) == 2
    assert capsys.readouterr().err.startswith("error: models: nothing in the catalog matches 'no-such-model'")


def test_gpus_lists_the_catalog_with_memory_peaks_bandwidth_and_price(capsys):
    from bench import gpus

    assert main(["gpus"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "NVML", "GiB", "cc"]
    assert len(lines) == 2 + len(gpus.names())
    h100 = gpus.resolve("h100-80gb")
    row = next(line for line in lines if line.startswith("h100-80gb ")).split()
    assert row[1] == f"{h100.memory_bytes / 2**30:.1f}" and row[2] == h100.compute_capability and row[3] == "yes"
    assert row[4] == f"{h100.tflops['fp32']:g}" and row[5] == f"{h100.tflops['bf16']:g}"
    assert row[6] == f"{h100.bandwidth_gbps:g}" and row[7] == f"{h100.usd_per_hour:.2f}"
    v100 = next(line for line in lines if line.startswith("v100-16gb ")).split()
    assert v100[3] == "no" and v100[5] == f"{gpus.resolve('v100-16gb').tflops['fp16']:g}"  # fp16 where no bf16


def test_gpus_pattern_json_and_no_match(capsys):
    assert main(["gpus", "H100", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in found} == {"h100-80gb", "h100-pcie-80gb", "h100-nvl-94gb"}
    assert [r["memory_bytes"] for r in found] == sorted(r["memory_bytes"] for r in found)
    assert main(["gpus", "GeForce RTX 4090"]) == 0  # a marketing name
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == ["rtx4090"]
    assert main(["gpus", "tpu"]) == 2
    assert capsys.readouterr().err.startswith("error: gpus: nothing in the catalog matches 'tpu'")
