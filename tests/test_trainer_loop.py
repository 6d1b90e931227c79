"""The HF Trainer's loop (``loop: trainer``): the cell field, the recipe both sides read,
the real ``transformers.Trainer`` against what the predictor replays.

Fast tests check the grammar, the recipe and the predicted step; one runs the
real Trainer in this process on a tiny model (bf16 autocast works on the CPU)
and checks what its step keeps between forward and backward against the
recipe. The slow test runs the smoke matrix's Trainer cells with
``bench run --device cpu`` (ZeRO-3 on two gloo ranks) and compares each record
with the predictor's structural figures: parameter counts and every rank's
weight, gradient and optimizer-state storage after the last step.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import yaml

from bench import gpus, models, optimizer_names, recipe as recipes
from bench.cell import normalize
from bench.cli import main
from bench.errors import UserError
from bench.predict import model_trace, plain, trace as tr
from bench.predict.sharded import loss_only

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "matrices" / "smoke-cpu.yaml"
PARTS = ("weights", "gradients", "optimizer_states")


def cell(**kw):
    return normalize({"model": "tiny-gpt2", "gpu": "a100-80gb", "batch": 2, "seq": 32, **kw})


def test_loop_plain_is_todays_cell_and_trainer_is_a_new_one():
    today = cell()
    assert cell(loop="plain").cell_id == today.cell_id and cell(loop="plain").slug == today.slug
    t = cell(loop="trainer")
    assert t.cell_id != today.cell_id and t.slug == today.slug + "-trainer"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"loop": "hf"}, "loop: 'hf' is not allowed; allowed: plain, trainer"),
        ({"loop": "trainer", "method": "fsdp"}, "loop: 'trainer' with strategy 'fsdp' is not supported"),
        ({"loop": "trainer", "task": "infer"}, "loop: 'trainer' needs task 'train'"),
    ],
)
def test_bad_loop_is_one_problem_naming_the_key(raw, says):
    with pytest.raises(UserError) as e:
        cell(**raw)
    assert len(e.value.problems) == 1 and says in e.value.problems[0]


def test_bad_loop_on_the_command_line_exits_2_with_one_line(capsys):
    code = main(["predict", "--model", "tiny-gpt2", "--gpu", "a100-80gb", "--loop", "keras"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "loop: 'keras'" in err and "Traceback" not in err


def test_recipe_of_the_trainer_loop():
    r = recipes.of(cell(loop="trainer", precision="bf16"))
    assert r.loop == "trainer" and not r.holds_output and r.empty_cache_before_training
    assert r.autocast == "bf16" and r.outputs_to_fp32 and r.trainer_precision == "bf16"
    plain_r = recipes.of(cell(precision="bf16"))
    assert plain_r.holds_output and not plain_r.outputs_to_fp32 and not plain_r.empty_cache_before_training
    # accelerate's native AMP autocasts LoRA adapters over a half base too; bench's loop does not
    lora = recipes.of(normalize({"model": "tiny-llama", "gpu": "a100-80gb", "method": "lora", "precision": "bf16"}))
    lora_t = recipes.of(
        normalize({"model": "tiny-llama", "gpu": "a100-80gb", "method": "lora", "precision": "bf16", "loop": "trainer"})
    )
    assert lora.autocast is None and lora_t.autocast == "bf16" and lora_t.outputs_to_fp32
    # DeepSpeed casts itself (no native AMP); the Trainer's adamw is adamw_torch_fused there too
    z = recipes.of(cell(loop="trainer", method="zero2", precision="bf16"))
    assert z.autocast is None and not z.outputs_to_fp32 and z.trainer_precision == "bf16"
    assert (
        z.optimizer == "adamw-fused" and recipes.of(cell(method="zero2", precision="bf16")).optimizer == "adamw-foreach"
    )
    assert recipes.of(cell(loop="trainer", precision="pure-bf16")).trainer_precision is None
    assert recipes.of(cell(loop="trainer", method="zero2", precision="pure-bf16")).trainer_precision == "bf16"


def test_trainer_names_are_what_the_cell_reads_back():
    assert set(optimizer_names.TRAINER_NAMES) == set(optimizer_names.BENCH_NAMES)
    for bench_name, hf_name in optimizer_names.TRAINER_NAMES.items():
        assert optimizer_names.canonical(hf_name) == bench_name


def _live_at_end(tt):
    live = {}
    for kind, k, n, tag in tt.trace.events:
        if kind == tr.ALLOC:
            live[k] = (n, tag)
        else:
            live.pop(k, None)
    return {k: v for k, v in live.items() if k not in tt.trace.grad_keys}


def test_the_predicted_trainer_step_keeps_only_the_loss_and_converts_the_logits():
    """bf16 autocast: the traced forward ends with accelerate's fp32 copy of the logits (the
    bf16 logits are dropped as it is made); the Trainer's replay frees the output at the
    forward's end, bench's loop holds its logits into the next micro-step."""
    vocab = models.resolve("tiny-gpt2").config["vocab_size"]
    logits = 2 * 32 * vocab
    t_cell, p_cell = cell(loop="trainer", precision="bf16"), cell(precision="bf16")
    tt = model_trace.trace_train(model_trace.shape_key(t_cell))
    pt = model_trace.trace_train(model_trace.shape_key(p_cell))
    assert {n for n, _ in _live_at_end(pt).values()} >= {logits * 2}  # bench's loop: the bf16 logits held
    assert {n for n, _ in _live_at_end(tt).values()} >= {logits * 4}  # the Trainer's output: fp32 logits
    assert not [v for v in _live_at_end(loss_only(tt)).values() if v[1] != "input"]
    fwd = tt.trace.events[: tt.trace.forward_end]
    sizes = [n for kind, _, n, tag in fwd if kind == tr.ALLOC and tag == "logits"]
    assert logits * 2 in sizes and logits * 4 in sizes
    assert sizes.index(logits * 2) < len(sizes) - 1 - sizes[::-1].index(logits * 4)  # fp32 copy after bf16
    out_t = plain.program(tt, t_cell, gpus.resolve("a100-80gb"))
    assert out_t.resident.get("activations", 0) == 0  # nothing of the output outlives the step


def _tiny_trainer(c):
    """A Trainer over tiny-gpt2 as ``bench.methods.trainer`` builds it, recording for each
    micro-step the output's logits dtype and whether they are alive when backward starts."""
    import tempfile

    from transformers import Trainer, default_data_collator

    from bench.methods import trainer as hf, training

    spec = models.resolve(c.model)
    r = recipes.of(c)
    seen: list[tuple[object, bool]] = []
    ref: list[weakref.ref] = []

    class Watching(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            ref[:] = [weakref.ref(outputs.logits)]
            seen.append((outputs.logits.dtype, False))
            return (loss, outputs) if return_outputs else loss

    out = tempfile.mkdtemp(prefix="bench-test-trainer-")
    args = hf.arguments(c, r, spec, "cpu", out)
    model, _ = training.build_model(c, spec, "cpu", checkpointing=False)
    head = model.get_output_embeddings()

    def at_backward(module, grad_output):
        gc.collect()
        seen[-1] = (seen[-1][0], ref[0]() is not None)

    head.register_full_backward_pre_hook(at_backward)
    data = hf.SyntheticTokens(c, training.vocab_size(model, spec), False, c.steps * c.grad_accum * c.batch)
    Watching(model=model, args=args, train_dataset=data, data_collator=default_data_collator).train()
    return seen


def test_the_real_trainer_keeps_what_the_recipe_says(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # TrainingArguments sets it; restored after
    import torch

    c = cell(loop="trainer", precision="bf16", steps=1, warmup=0, grad_accum=2)
    r = recipes.of(c)
    seen = _tiny_trainer(c)
    assert len(seen) == 2
    for dtype, alive in seen:
        assert (dtype == torch.float32) == r.outputs_to_fp32 and alive == r.holds_output


@pytest.mark.slow
def test_the_smoke_matrix_trainer_cells_against_the_predictor(tmp_path):
    smoke = yaml.safe_load(SMOKE.read_text())
    cells = [c for c in smoke["include"] if c.get("loop") == "trainer"]
    assert len(cells) == 3 and any(c.get("gpus", 1) == 2 and c["method"].startswith("zero") for c in cells)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        yaml.safe_dump({"name": "trainer", "gpu": smoke["gpu"], "defaults": smoke["defaults"], "include": cells})
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(matrix), "--device", "cpu", "--results", str(tmp_path / "r")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recs = [json.loads(f.read_text()) for f in (tmp_path / "r" / smoke["gpu"] / "trainer").glob("*.json")]
    assert len(recs) == 3
    for rec in recs:
        assert rec["status"] == "ok", rec["error"]
        c = normalize({k: v for k, v in rec["cell"].items() if v is not None})
        m = rec["measured"]
        assert c.loop == "trainer" and rec["slug"].endswith("-trainer")
        assert len(m["step_times_seconds"]) == c.steps and len(m["warmup_step_times_seconds"]) == c.warmup
        assert all(t > 0 for t in m["step_times_seconds"]) and m["final_loss"] > 0
        assert m["samples_per_step"] == c.batch * c.grad_accum * c.gpus
        tt = model_trace.trace_train(model_trace.shape_key(c))
        assert m["trainable_parameters"] == sum(p.numel for p in tt.params if p.trainable)
        assert m["parameters"] == sum(p.numel for p in tt.params)
        predicted = rec["predicted"]["resident_bytes"]
        per_rank = m.get("resident_bytes_per_rank") or [m["resident_bytes"]]
        assert len(per_rank) == c.gpus
        for measured in per_rank:
            for part in PARTS:
                got, want = measured[part], predicted.get(part, 0)
                assert abs(want - got) <= max(0.01 * got, 512 * 64), (rec["slug"], part, want, got)
        assert per_rank[0]["optimizer_states"] > 0


def test_training_arguments_files_are_predicted_with_the_trainers_loop(tmp_path):
    from bench import jobfile

    job = jobfile.load(ROOT / "tests" / "data" / "jobs" / "training_args.json")
    assert job.fields["loop"] == "trainer" and job.fields["strategy"] == "zero2"
    fsdp = tmp_path / "fsdp_args.json"
    fsdp.write_text(json.dumps({"per_device_train_batch_size": 2, "bf16": True, "fsdp": "full_shard"}))
    job = jobfile.load(fsdp)
    assert "loop" not in job.fields and any(n.startswith("fsdp: predicted with bench's FSDP2 loop") for n in job.notes)


def test_report_rows_of_the_two_loops_read_differently():
    from bench.report import labels

    plain_row, trainer_row = cell(method="zero3").to_dict(), cell(method="zero3", loop="trainer").to_dict()
    assert labels.method(plain_row) == "Full, ZeRO-3"
    assert labels.method(trainer_row) == "Full, ZeRO-3 [HF Trainer]"


def test_training_arguments_say_what_the_recipe_says(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # TrainingArguments sets it; restored after
    from bench.methods import trainer as hf

    c = normalize(
        {
            "model": "tiny-llama",
            "gpu": "a100-80gb",
            "method": "lora",
            "precision": "bf16",
            "optimizer": "adafactor",
            "grad_ckpt": True,
            "grad_accum": 4,
            "batch": 3,
            "steps": 2,
            "warmup": 1,
            "loop": "trainer",
        }
    )
    r = recipes.of(c)
    args = hf.arguments(c, r, models.resolve(c.model), "cpu", str(tmp_path))
    assert args.optim == "adafactor" and optimizer_names.canonical(args.optim.value) == c.optimizer
    assert args.bf16 and not args.fp16 and r.trainer_precision == "bf16"
    assert args.per_device_train_batch_size == 3 and args.gradient_accumulation_steps == 4 and args.max_steps == 3
    assert args.gradient_checkpointing and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert args.deepspeed is None and args.torch_empty_cache_steps is None and args.max_grad_norm == 1.0
