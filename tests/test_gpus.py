"""The GPU catalog."""

import pytest

from bench import gpus
from bench.errors import UserError

NAMES = [
    "a100-40gb",
    "a100-80gb",
    "a10g",
    "b200-180gb",
    "gh200-96gb",
    "h100-80gb",
    "h100-nvl-94gb",
    "h100-pcie-80gb",
    "h20-96gb",
    "h200",
    "l4",
    "l40",
    "l40s",
    "rtx-a6000",
    "rtx3060",
    "rtx3070",
    "rtx3080",
    "rtx3080ti",
    "rtx3090",
    "rtx3090ti",
    "rtx4060",
    "rtx4060ti-16gb",
    "rtx4070",
    "rtx4080",
    "rtx4090",
    "rtx5090",
    "rtx6000-ada",
    "t4",
    "v100-16gb",
    "v100-32gb",
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
    assert str(err.value).startswith("gpu: 'k80' is not in the catalog")
    assert str(err.value).endswith(f"allowed: {', '.join(NAMES)}")


def test_memory_values():
    assert gpus.resolve("h200").memory_bytes == 150109880320
    assert gpus.resolve("h100-80gb").memory_bytes == 85520809984
    assert gpus.resolve("a100-80gb").memory_bytes == 85899345920
    assert gpus.resolve("v100-16gb").memory_bytes == 16945512448
    for name in NAMES:
        gpu = gpus.resolve(name)
        assert gpu.memory_bytes >= 7.5 * 2**30  # the 8 GB cards report a few MiB under 8 GiB
        assert gpu.bandwidth_gbps > 0 and gpu.source.startswith("https://")
    assert gpus.resolve("a100-40gb").memory_bytes < gpus.resolve("a100-80gb").memory_bytes


def test_bf16_and_flash_attention_flags():
    for name in NAMES:
        gpu = gpus.resolve(name)
        old = name in ("v100-16gb", "v100-32gb", "t4")
        assert gpu.bf16 is not old
        assert (gpu.tflops["bf16"] is None) is old
        assert gpu.supports_flash_attention is not old
        assert tuple(int(x) for x in gpu.compute_capability.split(".")) >= (7, 0)  # as numbers: "10.0" > "9.0"


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


@pytest.mark.parametrize(
    "nvml_name, memory, expected",
    [
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
        ("NVIDIA L40", None, "l40"),  # not the L40S, nor the L4
        ("NVIDIA GeForce RTX 4080", None, "rtx4080"),
        ("NVIDIA GeForce RTX 4080 SUPER", None, "rtx4080"),
        ("NVIDIA GeForce RTX 2080", None, None),
        ("AMD Instinct MI300X", None, None),
    ],
)
def test_from_nvml_name(nvml_name, memory, expected):
    gpu = gpus.from_nvml_name(nvml_name, memory)
    assert (gpu.name if gpu else None) == expected


CONSUMER_AND_NEW = [
    "rtx3060",
    "rtx3070",
    "rtx4060",
    "rtx3080",
    "rtx3080ti",
    "rtx3090ti",
    "rtx4060ti-16gb",
    "rtx4070",
    "rtx4080",
    "rtx5090",
    "rtx-a6000",
    "rtx6000-ada",
    "l40",
    "h100-pcie-80gb",
    "h100-nvl-94gb",
    "h20-96gb",
    "gh200-96gb",
    "b200-180gb",
]


@pytest.mark.parametrize("name", CONSUMER_AND_NEW)
def test_every_card_carries_what_the_predictor_reads(name):
    g = gpus.resolve(name)
    major, minor = (int(x) for x in g.compute_capability.split("."))
    assert 7 <= major <= 12 and g.source.startswith("http")
    assert 7.5 * 2**30 <= g.memory_bytes <= 200 * 2**30 and g.bandwidth_gbps > 0 and g.pcie_gbps > 0
    assert g.tflops["fp32"] > 0 and g.tflops["fp16"] >= g.tflops["fp32"] * 0.99
    assert g.fp8 == ((major, minor) >= (8, 9))
    assert gpus.from_nvml_name(g.nvml_names[0]) is g


def test_compute_capabilities_compare_as_numbers():
    b200, h100 = gpus.resolve("b200"), gpus.resolve("h100-80gb")
    assert b200.supports_flash_attention and h100.supports_flash_attention
    assert not gpus.resolve("v100-16gb").supports_flash_attention


@pytest.mark.parametrize(
    "spelling,name",
    [
        ("4090", "rtx4090"),
        ("RTX 4090", "rtx4090"),
        ("rtx-4090", "rtx4090"),
        ("a6000", "rtx-a6000"),
        ("3080", "rtx3080"),
        ("NVIDIA GeForce RTX 3060", "rtx3060"),
        ("B200", "b200-180gb"),
    ],
)
def test_common_spellings_resolve(spelling, name):
    assert gpus.resolve(spelling).name == name


def test_ambiguous_and_unknown_names_say_what_is_allowed():
    with pytest.raises(UserError, match=r"'a100' is ambiguous; allowed: a100-40gb or a100-80gb"):
        gpus.resolve("a100")
    with pytest.raises(UserError, match=r"did you mean rtx4090"):
        gpus.resolve("rtx4900")
