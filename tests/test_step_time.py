"""The step-time predictor: its op counts, its model's behaviour, and its accuracy on real H200 runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import cell as cellmod, gpus, models
from bench.errors import UserError
from bench.predict import model_trace, op_cost, speed, step_time, time_accuracy
from bench.predict.speed_figures import apply, figures

ROOT = Path(__file__).resolve().parents[1]


def cell(**kw):
    raw = {"model": "gpt2", "gpu": "h200", "precision": "bf16", "batch": 4, "seq": 1024}
    return cellmod.normalize({**raw, **kw}, "")


def totals(counts: op_cost.OpCounts) -> tuple[float, float, float]:
    flops = sum(op[3] * n for op, n in counts.kernels.items())
    nbytes = sum(sum(op[4]) * n for op, n in counts.kernels.items())
    return flops, nbytes, sum(counts.kernels.values())


def test_rescaled_and_replicated_counts_equal_a_direct_full_depth_trace():
    key = speed.shape_key(cell(batch=3, seq=200, grad_ckpt=True))
    derived = op_cost.micro_step(key)  # sentinel shape, one and two blocks, rescaled and replicated
    direct = op_cost._trace_now(key)  # the real shape at the real depth
    for got, want in zip(totals(derived), totals(direct)):
        assert got == pytest.approx(want, rel=1e-3)


def test_matmul_flops_match_torch_flop_counter_on_a_real_cpu_step():
    """An independent count: torch's FlopCounterMode on a real (CPU, eager attention) forward+backward."""
    c = cell(model="gpt2", precision="fp32", batch=2, seq=64, attn="eager")
    key = dataclasses.replace(speed.shape_key(c), layers=2)
    ours = sum(op[3] * n for op, n in op_cost._trace_now(key).kernels.items())
    spec = models.resolve("gpt2")
    model = models.build(spec, device="cpu", dtype=torch.float32, attn="eager", **model_trace._layer_overrides(spec, 2))
    ids = torch.randint(0, 100, (2, 64))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    assert ours == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_parts_add_up_and_follow_the_work():
    f = figures(gpus.resolve("h200"))
    base = speed.speed(cell())
    assert sum(base.parts.values()) == pytest.approx(base.step_time_seconds)
    ga4 = speed.speed(cell(batch=1, grad_accum=4)).step_time_seconds
    assert ga4 > speed.speed(cell(batch=1)).step_time_seconds * 3
    assert speed.speed(cell(grad_ckpt=True)).step_time_seconds > base.step_time_seconds
    assert speed.speed(cell(method="zero2-offload")).parts["offload"] > 0
    assert (
        speed.speed(cell(model="gpt2-xl", gpu="a10g")).step_time_seconds
        > speed.speed(cell(model="gpt2-xl", gpu="h100-80gb")).step_time_seconds
    )
    fused = step_time.optimizer_seconds("adamw-fused", 1e9, 100, 4, 4, 4, f)
    assert step_time.optimizer_seconds("adamw-foreach", 1e9, 100, 4, 4, 4, f) > 2 * fused
    assert step_time.optimizer_seconds("sgd", 1e9, 100, 4, 4, 4, f) < fused


def test_generation_predicts_prefill_and_decode():
    s = speed.speed(
        cellmod.normalize(
            {
                "model": "gpt2-medium",
                "gpu": "h200",
                "task": "infer",
                "precision": "bf16",
                "batch": 1,
                "seq": 512,
                "new_tokens": 128,
            },
            "",
        )
    )
    assert s.prefill_seconds > 0 and s.decode_tokens_per_second > 0
    assert s.step_time_seconds == pytest.approx(s.prefill_seconds + 127 / s.decode_tokens_per_second)


def test_deepspeed_paths_have_their_own_host_figures():
    """Without offload ZeRO pays the ops its code dispatches plus its own bookkeeping figures; the
    per-tensor figure of the CPU-offload path moves only offload cells, and ZeRO-3's per-module cost
    is paid once per module per pass (forward, recomputation, backward)."""
    f = figures(gpus.resolve("h200"))

    def seconds(c, **figs):
        return step_time.train_step(c, op_cost.micro_step(speed.shape_key(c)), apply(f, figs) if figs else f)

    z2, z3, off = cell(method="zero2"), cell(method="zero3"), cell(method="zero2-offload")
    assert seconds(z2, deepspeed_param_seconds=1.0).seconds == pytest.approx(seconds(z2).seconds)
    assert seconds(z3, deepspeed_param_seconds=1.0).seconds == pytest.approx(seconds(z3).seconds)
    assert seconds(off, zero_param_seconds=1.0, zero3_module_seconds=1.0).seconds == pytest.approx(seconds(off).seconds)
    counts = op_cost.micro_step(speed.shape_key(z3))
    assert counts.params["modules"] > counts.params["trainable_tensors"]  # gpt2: blocks, dropouts, norms ...
    for ckpt, passes in ((False, 2), (True, 3)):
        c = cell(method="zero3", grad_ckpt=ckpt)
        extra = seconds(c, zero3_module_seconds=f.zero3_module_seconds + 1e-3).seconds - seconds(c).seconds
        assert extra == pytest.approx(passes * op_cost.micro_step(speed.shape_key(c)).params["modules"] * 1e-3)
    ga2 = cell(method="zero2", batch=2, grad_accum=2)
    extra = seconds(ga2, zero_param_seconds=f.zero_param_seconds + 1e-3).seconds - seconds(ga2).seconds
    assert extra == pytest.approx(2 * counts.params["trainable_tensors"] * 1e-3)  # per tensor per micro-step
    # the step's overflow scan is dispatched for half gradients only
    scan = step_time.zero_host_seconds(2, 100, 0, 1, 2, 1, True, f) - step_time.zero_host_seconds(
        2, 100, 0, 1, 2, 1, False, f
    )
    assert scan == pytest.approx(100 * 7 * f.no_grad_forward_op_seconds)


def test_calibration_replaces_figures_and_rejects_unknown_ones():
    f = figures(gpus.resolve("h200"))
    g = apply(f, {"hbm_bytes_per_second": 1e12, "matmul_flops_per_second": {"bfloat16": 1e14}})
    assert g.hbm_bytes_per_second == 1e12 and g.matmul_flops_per_second["bfloat16"] == 1e14
    assert g.matmul_flops_per_second["float32"] == f.matmul_flops_per_second["float32"]
    with pytest.raises(UserError, match="hbm_gbps"):
        apply(f, {"hbm_gbps": 3000})


def test_catalog_speed_block_names_what_was_fitted_and_on_what():
    block = gpus.speed_figures()
    assert "h200-2026-11-28" in block["fitted_on"] and "h200-2026-11.jsonl" in block["fitted_on"]
    assert "hbm_fraction" in block["fitted"]
    priced = 0
    for name in gpus.names():
        g = gpus.resolve(name)
        assert g.pcie_gbps
        if g.usd_per_hour is not None:  # a price always says where and when it was read
            assert g.price_source and g.price_date
            priced += 1
    assert priced >= 10


@pytest.fixture(scope="module")
def accuracy():
    by_method: dict[str, list[float]] = {}
    errors = []
    for row in time_accuracy.training_rows():
        e = time_accuracy.error(row, speed.speed(row.cell).to_dict())
        errors.append(e)
        by_method.setdefault(time_accuracy.method(row.cell), []).append(e)
    return errors, by_method


def test_step_time_accuracy_on_the_h200_runs(accuracy):
    """Every ok training row of the reference measurements and of results/h200-2026-11-28
    (README, "How step time is predicted", has the table this reproduces)."""
    errors, by_method = accuracy
    s = time_accuracy.summary(errors)
    assert s["rows"] >= 45
    assert set(by_method) >= {"full", "lora", "zero2", "zero2-offload", "zero3", "fsdp"}
    assert s["median"] <= 0.105
    assert s["p90"] <= 0.215
    assert s["worst_ratio"] < 1.8
    assert time_accuracy.summary(by_method["zero2-offload"])["worst"] <= 0.10
    assert time_accuracy.summary(by_method["zero2"])["worst"] <= 0.05


def test_zero3_record_is_predicted_after_deepspeeds_trace_step():
    """The one ZeRO-3 record warmed up one step; its first measured step (1.03 s) is DeepSpeed's
    trace-completing step, its second (0.48 s) the steady one the predictor targets."""
    (row,) = [r for r in time_accuracy.training_rows() if r.cell.strategy == "zero3"]
    assert row.steady is not None and row.steady < 0.8 * row.measured
    predicted = speed.speed(row.cell).step_time_seconds
    assert predicted == pytest.approx(row.steady, rel=0.10)


def test_generation_accuracy_on_the_h200_runs():
    """Prefill seconds and decode tokens/s of every generation record that splits them, within 25 %."""
    rows = time_accuracy.generation_rows()
    assert {r.what for r in rows} == {"prefill_seconds", "decode_tokens_per_second"}
    for row in rows:
        predicted = speed.speed(row.cell).to_dict()[row.what]
        assert abs(predicted / row.measured - 1) <= 0.25, (row.name, row.what, predicted, row.measured)


def test_generation_host_ratios_are_measured_not_fitted():
    """The catalog's generation host ratios are what scripts/measure_host_ratios.py measures
    here, within the spread a loaded machine gives; no fit names them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ratios", ROOT / "scripts" / "measure_host_ratios.py")
    ratios = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ratios)
    measured = ratios.measure(repeats=1)
    host = gpus.speed_figures()["host"]
    assert 0 < measured["no_grad_op_fraction"] < 1  # no graph recorded: cheaper than a training forward
    assert abs(measured["no_grad_op_fraction"] - host["no_grad_op_fraction"]) <= 0.25
    assert measured["generate_token_ops"] > 0
    assert not {"host.no_grad_op_fraction", "host.generate_token_ops"} & set(gpus.speed_figures()["fitted"])


def test_plan_json_has_speed_fields(tmp_path, capsys):
    from bench.cli import main

    m = tmp_path / "m.yaml"
    m.write_text(
        "name: m\ngpu: h200\ndefaults: {precision: bf16, batch: 2, seq: 256}\n"
        "sweep:\n  model: [gpt2]\n  method: [lora]\n"
    )
    assert main(["plan", str(m), "--json", "--tokens", "1000000", "--price", "h200=2"]) == 0
    e = json.loads(capsys.readouterr().out)[0]["predicted"]
    assert e["step_time_seconds"] > 0 and e["tokens_per_second"] > 0 and 0 < e["mfu"] < 1
    run = e["run"]
    assert run["seconds"] == pytest.approx(1e6 / e["tokens_per_second"])
    assert run["usd"] == pytest.approx(2 * run["seconds"] / 3600)
    assert main(["plan", str(m), "--tokens", "1000000"]) == 0
    header = capsys.readouterr().out.splitlines()
    assert any("Step (s)" in line and "Tokens/s" in line and "Cost (USD)" in line for line in header)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--price", "h200"], "--price: 'h200'"),
        (["--price", "h200=-1"], "--price h200"),
        (["--price", "nope=1"], "gpu: 'nope'"),
        (["--epochs", "1"], "--epochs: needs --dataset-tokens"),
        (["--tokens", "0"], "--tokens: 0"),
    ],
)
def test_bad_run_flags_are_one_line_and_exit_2(args, message, capsys):
    from bench.cli import main

    code = main(["predict", "--model", "gpt2", "--gpu", "h200", "--seq", "128", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_gpu_all_with_tokens_ranks_the_cards_that_fit_by_cost(capsys):
    from bench.cli import main

    assert (
        main(
            [
                "predict",
                "--model",
                "gpt2",
                "--method",
                "lora",
                "--precision",
                "fp16",
                "--batch",
                "2",
                "--seq",
                "256",
                "--gpu",
                "all",
                "--tokens",
                "1000000",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    fitting = [r for r in rows if r["fits"]]
    usd = [r["predicted"]["run"]["usd"] for r in fitting]
    priced = [u for u in usd if u is not None]
    assert len(priced) >= 5 and priced == sorted(priced)
    assert usd == priced + [None] * (len(usd) - len(priced))  # cards without a price come after the priced ones
    assert all("host_bytes" in r["predicted"] for r in fitting)


def test_autotune_finds_settings_that_fit_and_orders_them():
    from bench.predict import search

    found = search.search(
        "gpt2", "lora", "bf16", 256, 8, ["rtx4090", "h100-80gb"], None, {"rtx4090": 0.4, "h100-80gb": 3.0}, None
    )
    assert found and all(c.cell.batch * c.cell.grad_accum * c.cell.gpus == 8 for c in found)
    fastest = search.best(found, lambda c: c.step_time_seconds, 3)
    assert [c.step_time_seconds for c in fastest] == sorted(c.step_time_seconds for c in fastest)
    cheapest = search.best(found, lambda c: c.usd_per_million_tokens, 1)[0]
    assert cheapest.usd_per_million_tokens == min(c.usd_per_million_tokens for c in found)


def test_calibrate_on_the_cpu_writes_a_profile_the_predictor_uses(tmp_path, capsys):
    from bench import calibration
    from bench.cli import main

    out = tmp_path / "cal.json"
    assert calibration.main(["--device", "cpu", "-o", str(out)]) == 0
    assert "matmul TFLOP/s" in capsys.readouterr().out
    profile = json.loads(out.read_text())
    assert set(profile["matmul_flops_per_second"]) == {"float32", "float16", "bfloat16"}
    assert all(v > 0 for v in profile["matmul_flops_per_second"].values())
    assert profile["hbm_bytes_per_second"] > 0 and profile["kernel_seconds"] > 0
    assert profile["host_link_bytes_per_second"] > 0
    f = figures(gpus.resolve("h200"), profile)
    assert f.hbm_bytes_per_second == profile["hbm_bytes_per_second"] and f.source.startswith("calibration")
    slow = {**profile, "hbm_bytes_per_second": 1e9}
    out.write_text(json.dumps(slow))
    args = ["predict", "--model", "gpt2", "--gpu", "h200", "--seq", "128", "--json"]
    assert main(args) == 0
    base = json.loads(capsys.readouterr().out)["predicted"]["step_time_seconds"]
    assert main([*args, "--calibration", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["predicted"]["step_time_seconds"] > 2 * base
    h100 = {**slow, "gpu": "NVIDIA H100 80GB HBM3"}  # a profile of another card leaves the h200's figures alone
    assert (
        figures(gpus.resolve("h200"), h100).hbm_bytes_per_second == figures(gpus.resolve("h200")).hbm_bytes_per_second
    )


def test_report_shows_predicted_beside_measured_throughput():
    from bench.report import render

    records = []
    for f in sorted(time_accuracy.RUNS.glob("*/gpu-check/*.json")):
        r = json.loads(f.read_text())
        if r["status"] == "ok" and r["cell"]["task"] == "train":
            c = cellmod.normalize({k: v for k, v in r["cell"].items() if v is not None})
            r["predicted"].update(speed.speed(cellmod.replace(c, gpu="h200")).to_dict())
            records.append(r)
    page = render(records, "html")
    assert page.count("<svg") == 5 and "Predicted against measured training throughput" in page
    header = render(records, "md").splitlines()
    assert any("Predicted tokens/s" in line and "Tokens/s" in line for line in header)
