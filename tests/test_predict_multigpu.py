"""Big models on many GPUs: the predictions a renting decision rests on.

Each prediction is per GPU (the largest rank). ZeRO-3 cells are built under
``deepspeed.zero.Init`` and FSDP2 cells sharded from the meta device, so no
rank counts the whole model; host RAM is per rank and per node (8 ranks).
"""

from __future__ import annotations

import pytest

from bench.cell import normalize
from bench.predict import predict

GiB = 2**30
BIG = dict(model="llama-3.1-70b", precision="bf16", batch=1, seq=2048, grad_ckpt=True, gpus=8, gpu="a100-80gb")


def test_70b_lora_zero3_on_8_a100_80gb_fits_with_an_eighth_of_the_weights():
    p = predict(normalize({**BIG, "method": "lora+zero3"}))
    whole = 2 * 70.55e9  # the bf16 model
    assert p.fits and p.ranks == 8
    assert 0.9 * whole / 8 < p.breakdown["weights"] < 1.25 * whole / 8


def test_70b_full_zero3_offload_on_8_a100_80gb_fits_and_needs_over_a_tib_of_host_ram():
    p = predict(normalize({**BIG, "method": "zero3-offload"}))
    assert p.fits
    assert p.host_node_bytes > 2**40 and p.host_node_bytes == 8 * p.host_bytes


def test_without_zero_init_the_whole_model_lands_on_every_rank():
    lazy = predict(normalize({**BIG, "method": "lora+zero3"}))
    whole = predict(normalize({**BIG, "method": "lora+zero3", "zero_init": False}))
    assert not whole.fits and whole.peak_bytes > 2 * lazy.peak_bytes


def test_qlora_under_sharding_counts_4_bit_weights_per_rank():
    lora = predict(normalize({**BIG, "method": "lora+zero3"}))
    for method in ("qlora+zero3", "qlora+fsdp"):
        q = predict(normalize({**BIG, "method": method}))
        assert q.fits and q.breakdown["weights"] < 0.45 * lora.breakdown["weights"], method


@pytest.mark.parametrize(
    "raw",
    [
        dict(model="flan-t5-xl", method="zero3-offload", gpus=2, gpu="rtx4090"),
        dict(model="codet5p-2b", method="zero3-offload", gpus=2, gpu="a100-40gb"),
        dict(model="llama-2-7b", method="fsdp", gpus=6, gpu="a100-40gb"),
    ],
    ids=["flan-t5-xl-2x4090", "codet5p-2b-2xa100-40", "llama-7b-fsdp-6xa100-40"],
)
def test_seed_rows_fit(raw):
    p = predict(normalize({**raw, "precision": "bf16", "batch": 1, "grad_accum": 4, "seq": 512}))
    assert p.fits, f"{p.peak_bytes / GiB:.1f} GiB on {p.gpu}"


def test_rank_count_does_not_grow_the_work():
    """512 ranks across nodes: the same trace, per-rank partitions a 512th of the model."""
    cells = [normalize({**BIG, "method": "zero3", "gpus": n}) for n in (64, 512)]
    p64, p512 = (predict(c) for c in cells)
    assert p512.resident_bytes["weights"] < p64.resident_bytes["weights"] / 6
