"""The GPU catalog."""

import pytest

from bench import gpus
from bench.errors import UserError

NAMES = [
    "a100-40gb", "a100-80gb", "a10g", "h100-80gb", "h200", "l4", "l40s",
    "rtx3090", "rtx4090", "t4", "v100-16gb", "v100-32gb",
]


def test_names():
    assert gpus.names() == NAMES


def test_resolve_by_name_marketing_and_nvml_name_in_any_case():
    h200 = gpus.resolve("h200")
    assert gpus.resolve("H200") is h200
    assert gpus.resolve("NVIDIA H200") is h200
    assert gpus.resolve(h200.marketing_name.upper()) is h200
    assert gpus.resolve("Tesla V100-SXM2-16GB").name == "v100-16gb"
    assert gpus.resolve("nvidia a100-sxm4-80gb").name == "a100-80gb"


def test_unknown_gpu_is_one_line_listing_the_catalog():
    with pytest.raises(UserError) as err:
        gpus.resolve("k80")
    assert str(err.value) == f"gpu: 'k80' is not in the catalog; allowed: {', '.join(NAMES)}"


def test_memory_values():
    assert gpus.resolve("h200").memory_bytes == 150109880320
    assert gpus.resolve("h100-80gb").memory_bytes == 85520809984
    assert gpus.resolve("a100-80gb").memory_bytes == 85899345920
    assert gpus.resolve("v100-16gb").memory_bytes == 16945512448
    for name in NAMES:
        gpu = gpus.resolve(name)
        assert gpu.memory_bytes > 10 * 2**30
        assert gpu.bandwidth_gbps > 0 and gpu.source.startswith("https://")
    assert gpus.resolve("a100-40gb").memory_bytes < gpus.resolve("a100-80gb").memory_bytes


def test_bf16_and_flash_attention_flags():
    for name in NAMES:
        gpu = gpus.resolve(name)
        old = name in ("v100-16gb", "v100-32gb", "t4")
        assert gpu.bf16 is not old
        assert (gpu.tflops["bf16"] is None) is old
        assert gpu.supports_flash_attention is not old
        assert gpu.compute_capability >= "7.0"


def test_peak_tflops():
    a100 = gpus.resolve("a100-80gb")
    assert a100.peak_tflops("fp32") == 19.5
    assert a100.peak_tflops("fp16") == a100.peak_tflops("bf16") == a100.peak_tflops("pure-bf16") == 312.0
    assert gpus.resolve("h100-80gb").peak_tflops("bf16") == pytest.approx(989.4)
    assert gpus.resolve("t4").peak_tflops("fp16") == 65.0
    with pytest.raises(UserError, match="not supported on v100-16gb"):
        gpus.resolve("v100-16gb").peak_tflops("bf16")
    with pytest.raises(UserError, match="allowed: fp32, fp16, bf16, pure-bf16"):
        a100.peak_tflops("fp8")


@pytest.mark.parametrize("nvml_name, memory, expected", [
    ("NVIDIA H200", None, "h200"),
    ("NVIDIA H100 80GB HBM3", None, "h100-80gb"),
    ("NVIDIA A100-SXM4-40GB", None, "a100-40gb"),
    ("NVIDIA A100 80GB PCIe", None, "a100-80gb"),
    ("NVIDIA A100-SXM4-80GB", 85899345920, "a100-80gb"),
    ("NVIDIA A100-PCIE", 42949672960, "a100-40gb"),  # no size in the name: memory decides
    ("NVIDIA A100-PCIE", 85899345920, "a100-80gb"),
    ("Tesla V100-SXM2-32GB", None, "v100-32gb"),
    ("Tesla V100S-PCIE-32GB", None, "v100-32gb"),
    ("Tesla T4", 15843721216, "t4"),
    ("NVIDIA GeForce RTX 3090", None, "rtx3090"),
    ("GeForce RTX 3090", None, "rtx3090"),
    ("NVIDIA GeForce RTX 4090", None, "rtx4090"),
    ("NVIDIA H200 NVL", None, "h200"),
    ("NVIDIA L4", None, "l4"),
    ("NVIDIA L40S", None, "l40s"),
    ("NVIDIA A10G", None, "a10g"),
    ("NVIDIA A10", None, None),  # not the A10G, nor an A100
    ("NVIDIA L40", None, None),  # not the L40S, nor the L4
    ("NVIDIA GeForce RTX 4080", None, None),
    ("AMD Instinct MI300X", None, None),
])
def test_from_nvml_name(nvml_name, memory, expected):
    gpu = gpus.from_nvml_name(nvml_name, memory)
    assert (gpu.name if gpu else None) == expected
