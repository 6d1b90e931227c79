"""The recipe: one place for the decisions the runner acts on and the predictor models.

- For every cell of every shipped matrix, the runner's child and the
  predictor read the same ``Recipe`` object.
- The torch side builds what the recipe says (dtypes, adapters, optimizer
  flavour), and the predictor traces what the recipe says.
- Neither side re-derives a method from the cell's strings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bench import matrix, models, recipe
from bench.cell import normalize
from bench.methods import optimizers, training
from bench.predict import estimate, model_trace

ROOT = Path(__file__).resolve().parents[1]
MATRICES = sorted((ROOT / "matrices").glob("*.yaml"))


@pytest.mark.parametrize("path", MATRICES, ids=lambda p: p.stem)
def test_runner_and_predictor_read_the_same_recipe(path):
    cells = matrix.load(path).cells
    assert cells
    for c in cells:
        assert training.recipe_for(c) is estimate.recipe_for(c), c.slug


def cell(**kw):
    return normalize({"model": "gpt2", "gpu": "h200", "batch": 1, "seq": 16, **kw})


@pytest.mark.parametrize(
    "method,precision,build,trace,autocast",
    [
        ("full", "fp32", "fp32", "fp32", None),
        ("full", "bf16", "fp32", "fp32", "bf16"),  # autocast over fp32 weights
        ("full", "pure-bf16", "bf16", "bf16", None),
        ("lora", "bf16", "bf16", "bf16", None),  # frozen base in the compute dtype
        ("zero2", "fp16", "fp32", "fp16", None),  # DeepSpeed casts the fp32 model itself
        ("fsdp", "bf16", "fp32", "bf16", None),  # MixedPrecisionPolicy(param_dtype=bf16)
    ],
)
def test_dtypes_of_each_method(method, precision, build, trace, autocast):
    r = recipe.of(cell(method=method, precision=precision))
    assert r.build_dtype == build
    assert r.trace_dtypes == (trace, autocast)


def test_the_child_builds_what_the_recipe_says():
    c = cell(method="lora", precision="bf16", lora_r=4)
    r = recipe.of(c)
    s = training.setup(c, models.resolve(c.model), "cpu")
    frozen = {p.dtype for p in s.module.parameters() if not p.requires_grad}
    adapters = {p.dtype for p in s.module.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and adapters == {torch.float32}
    assert s.autocast is None and s.scaler is None and r.holds_output
    assert {p.shape[0] for n, p in s.module.named_parameters() if "lora_A" in n} == {4}

    full = cell(precision="fp16")
    s = training.setup(full, models.resolve(full.model), "cpu")
    assert s.autocast == torch.float16 and s.scaler is not None
    assert {p.dtype for p in s.module.parameters()} == {torch.float32}


def test_the_predictor_traces_what_the_recipe_says():
    c = cell(method="lora", precision="bf16", lora_r=4)
    key = model_trace.shape_key(c)
    assert (key.weight_dtype, key.autocast) == recipe.of(c).trace_dtypes
    tt = model_trace.trace_train(key)
    lora_a = [p for p in tt.params if "lora_A" in p.name]
    assert lora_a and all(p.shape[0] == 4 and p.nbytes == 4 * p.numel for p in lora_a)
    assert all(p.nbytes == 2 * p.numel for p in tt.params if not p.trainable)


@pytest.mark.parametrize(
    "method,flavour",
    [("full", "adamw-fused"), ("ddp", "adamw-fused"), ("zero2", "adamw-foreach"), ("fsdp", "adamw-foreach")],
)
def test_optimizer_flavour(method, flavour):
    c = cell(method=method, precision="bf16", **({"gpus": 2} if method != "full" else {}))
    assert recipe.of(c).optimizer == flavour
    p = torch.nn.Parameter(torch.zeros(4))
    opt = optimizers.build(flavour, [p], "cpu")
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["foreach"]  # no fused AdamW off CUDA


def test_blocks_have_one_definition():
    assert recipe.block_of("model.layers.3.mlp.up_proj.weight") == "model.layers.3"
    assert recipe.block_of("encoder.block.0.layer.1.DenseReluDense.wi.weight") == "encoder.block.0"
    assert recipe.block_of("transformer.h.1c7.attn.c_attn.weight") == "transformer.h.1c7"
    assert recipe.block_of("lm_head.weight") == ""
    m = models.build(models.resolve("gpt2"), device="meta", n_layer=3)
    from bench.methods import parallel

    assert [type(b).__name__ for b in parallel.blocks(m)] == ["GPT2Block"] * 3


FORBIDDEN = [
    (r"startswith\(\"zero\"\)", "a ZeRO test on the strategy string"),
    (r"\(\"lora\", \"qlora\"\)", "the adapter tunings spelled out"),
    (r"\bcell\.(strategy|tuning|precision|optimizer)\s*(==|!=|in\b|not in\b)", "a decision on a cell field"),
]


def test_no_side_re_derives_a_method_from_strings():
    """The torch side, the child and the predictor read the recipe; only
    ``bench.recipe`` (and ``bench.dsconfig``, the strategy's settings) decide."""
    found = []
    for folder in ("methods", "worker", "predict"):
        for f in sorted((ROOT / "bench" / folder).glob("*.py")):
            for n, line in enumerate(f.read_text().splitlines(), 1):
                for pattern, what in FORBIDDEN:
                    if re.search(pattern, line):
                        found.append(f"{f.relative_to(ROOT)}:{n}: {what}: {line.strip()}")
    assert not found, "\n".join(found)
