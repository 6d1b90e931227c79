"""The predictor against ``bench run`` on a GPU (H200, 2026-11-28).

``results/h200-2026-11-28/`` holds the records of ``scripts/gpu-check.sh`` and
``matrices/gpu-coverage.yaml`` run on one H200 (torch 2.11.0+cu130,
transformers 5.17.0, peft 0.21.0, deepspeed 0.19.8): GPT-2, Llama, Qwen,
Mistral, Pythia, OPT and T5 through full, LoRA, ZeRO-2 offload, ZeRO-3 and
generation. Each ``ok`` record's cell is predicted afresh and compared with its
measured peak NVML process memory.

Left out, and why:
- FSDP records: measured while the loop still held FSDP's output until the next
  forward; the loop now keeps only the loss (as the predictor and the reference
  protocol do), so those peaks are not the current loop's.
- T5 (flan-t5-large): predicted 28 % under; a known gap, marked xfail below.
  The gap is the attention probabilities: the predictor routes T5's SDPA call
  (a float additive mask: the relative position bias, which requires grad in
  self-attention; dropout 0.1) to a fused kernel that keeps only the output and a logsumexp,
  while the H200 run kept every attention layer's ``B x H x S x S``
  probabilities: traced with ``attn: eager`` (which keeps them) the same cell
  is predicted within 2 % of the measurement. Which CUDA constraint kept the
  fused kernels off (cuDNN refuses dropout that is not a multiple of 1/16,
  flash any mask; memory-efficient attention's refusal is not established
  without a GPU) decides the fix, so none is made here.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from bench.cell import normalize, replace
from bench.predict import predict

RUNS = Path(__file__).resolve().parents[1] / "results" / "h200-2026-11-28"
KNOWN_GAP = {"flan-t5-large"}


def records() -> list[dict]:
    out, seen = [], set()
    for f in sorted(RUNS.glob("*/*/*.json")):
        r = json.loads(f.read_text())
        if r["status"] != "ok":
            continue
        cell = normalize({k: v for k, v in r["cell"].items() if v is not None})
        if cell.strategy == "fsdp" or (cell.slug, cell.gpu) in seen:
            continue
        seen.add((cell.slug, cell.gpu))
        out.append({"cell": cell, "measured": r["measured"]["peak_nvml_process_bytes"]})
    return out


@pytest.fixture(scope="module")
def errors() -> dict[str, float]:
    out = {}
    for r in records():
        if r["cell"].model in KNOWN_GAP:
            continue
        p = predict(r["cell"])
        out[f"{r['cell'].slug}@{r['cell'].gpu}"] = (p.peak_bytes - r["measured"]) / r["measured"]
    return out


def test_the_gpu_records_cover_several_architectures_and_methods():
    cells = [r["cell"] for r in records()]
    assert len(cells) >= 15
    assert {c.model.split("-")[0] for c in cells} >= {"gpt2", "llama", "qwen2.5", "mistral", "pythia", "opt"}
    assert {c.method for c in cells} >= {"full", "lora", "zero2-offload", "zero3"}


def test_gpu_runs_median_error_at_most_2_percent(errors):
    table = {k: f"{v:+.1%}" for k, v in errors.items()}
    assert statistics.median(abs(e) for e in errors.values()) <= 0.02, table


def test_gpu_runs_no_error_above_6_percent(errors):
    bad = {k: f"{v:+.1%}" for k, v in errors.items() if abs(v) > 0.06}
    assert not bad, bad


@pytest.mark.xfail(
    strict=True, reason="T5 on CUDA measured 50.4 GiB, predicted 36 GiB: SDPA predicted fused, the GPU kept S x S"
)
def test_t5_within_6_percent():
    (r,) = [r for r in records() if r["cell"].model in KNOWN_GAP]
    p = predict(r["cell"])
    assert abs(p.peak_bytes - r["measured"]) / r["measured"] <= 0.06


def test_t5_gap_is_the_attention_probabilities():
    """With every attention layer keeping its S x S probabilities (the eager trace), the T5
    cell lands on its measurement: the missing memory is that, not weights, optimizer or logits."""
    (r,) = [r for r in records() if r["cell"].model in KNOWN_GAP]
    eager = predict(replace(r["cell"], attn="eager"))
    assert abs(eager.peak_bytes - r["measured"]) / r["measured"] <= 0.02, eager.peak_bytes / 2**30
    fused = predict(r["cell"])
    assert eager.breakdown["activations"] - fused.breakdown["activations"] > 0.8 * (r["measured"] - fused.peak_bytes)
