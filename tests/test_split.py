"""Generation split layer-wise over several cards: placement, per-card memory, the run path on the CPU."""

from __future__ import annotations

import pytest

from bench import cell as cellmod, models
from bench.errors import UserError
from bench.predict import predict, split
from bench.predict.program import CONTEXT, KV, WEIGHTS
from bench.recipe import block_index

GPTJ = dict(model="EleutherAI/gpt-j-6b", task="infer", precision="fp16", batch=1, seq=128, new_tokens=72, gpu="rtx3080")


def _cell(**kw):
    return cellmod.normalize({**GPTJ, "split": "layers", **kw})


def test_infer_on_several_gpus_needs_split():
    with pytest.raises(UserError, match="split: layers"):
        cellmod.normalize({**GPTJ, "gpus": 3})
    with pytest.raises(UserError, match="split"):
        cellmod.normalize({**GPTJ, "task": "train", "split": "layers", "gpus": 2})
    with pytest.raises(UserError, match="split_balance"):
        cellmod.normalize({**GPTJ, "split_balance": "sequential"})
    with pytest.raises(UserError, match="split: 'rows'"):
        cellmod.normalize({**GPTJ, "split": "rows"})


def test_new_fields_keep_old_cell_ids():
    plain = cellmod.normalize(GPTJ)
    spelled = cellmod.normalize(
        {**GPTJ, "split": "none", "split_balance": "balanced", "quant": "none", "quant_double": False}
    )
    assert plain.cell_id == spelled.cell_id
    assert _cell(gpus=3).cell_id != plain.cell_id


def test_gptj_on_three_3080s_fits_and_every_block_is_placed_once():
    c = _cell(gpus=3)
    p = predict(c)
    assert p.fits and p.devices == 3 and len(p.cards) == 3
    assert p.peak_bytes == max(card["peak_bytes"] for card in p.cards) <= p.capacity_bytes
    assert p.bottleneck == max(p.cards, key=lambda x: x["peak_bytes"])["index"]
    placed = [block_index(m) for m, d in p.placement.items() if block_index(m) is not None]
    assert sorted(placed) == list(range(models.resolve(c.model).layers))
    assert set(p.placement.values()) == {0, 1, 2}
    for card in p.cards:  # the context and the workspaces on every card, blocks on every card
        assert card["breakdown"][CONTEXT] >= 760 * 2**20
        assert any(block_index(m) is not None for m in card["modules"])


def test_weights_and_kv_cache_add_up_to_the_single_card_run():
    one = predict(cellmod.normalize({**GPTJ, "gpu": "h200"}))
    three = predict(_cell(gpus=3, gpu="h200", split_balance="sequential", gpu_memory="5GiB"))
    assert len({c["index"] for c in three.cards if c["breakdown"][WEIGHTS]}) >= 2
    weights = sum(c["breakdown"][WEIGHTS] for c in three.cards)
    assert abs(weights - one.breakdown[WEIGHTS]) < 2**20  # the same tensors, cut differently
    # each card peaks at the prefill here (its MLP intermediates outweigh its cache's growth):
    # the cache of each layer (keys and values of 128 tokens) lives on that layer's card
    per_layer = 2 * 128 * 4096 * 2
    for card in three.cards:
        blocks = sum(1 for m in card["modules"] if block_index(m) is not None)
        assert card["breakdown"][KV] == blocks * per_layer


def test_one_card_split_is_the_plain_run():
    plain = predict(cellmod.normalize({**GPTJ, "gpu": "h200"}))
    one = predict(_cell(gpus=1, gpu="h200"))
    assert one.placement == {"": 0}
    assert one.peak_bytes == plain.peak_bytes


def test_placement_is_accelerates_with_the_card_reserves():
    """The returned map is what ``infer_auto_device_map`` gives for the reserves the cards report."""
    c = _cell(gpus=3)
    pl = split.placement(c)
    again, _ = split.device_map(c, [card.reserve_bytes for card in pl.cards], None)
    assert again == pl.device_map


def test_sequential_fills_card_zero_first():
    seq = split.placement(_cell(gpus=3, split_balance="sequential"))
    bal = split.placement(_cell(gpus=3))
    first = lambda pl: sum(1 for m, d in pl.device_map.items() if d == 0 and block_index(m) is not None)  # noqa: E731
    assert first(seq) > first(bal)


def test_one_3080_does_not_fit_unless_the_host_takes_the_rest():
    c = _cell(gpus=1)
    p = predict(c)
    assert not p.fits and any("host-memory" in n for n in p.notes)
    hosted = predict(c, host_memory=64 * 2**30)
    assert hosted.fits and "cpu" in hosted.placement.values()
    assert hosted.host_bytes > 5 * 2**30  # the offloaded blocks live in host RAM
    from bench.predict.speed import speed

    slow = speed(c, host_memory=64 * 2**30)
    fast = speed(_cell(gpus=3))
    assert slow.step_time_seconds > 2 * fast.step_time_seconds  # weights over PCIe every token
    assert slow.parts["transfers"] > 0


def test_copies_between_cards_are_counted():
    pl = split.placement(_cell(gpus=3))
    hidden = 128 * 4096 * 2  # one boundary's hidden states at prefill (fp16)
    assert pl.copy_bytes["prefill"] >= 2 * hidden
    assert 0 < pl.copy_bytes["decode"] < pl.copy_bytes["prefill"]


def test_the_run_path_dispatches_with_the_predicted_map_on_the_cpu():
    """``bench run``'s model: the predictor's map, every card mapped onto "cpu", accelerate's hooks on."""
    from bench.methods import generation

    c = cellmod.normalize(
        dict(
            model="tiny-llama",
            task="infer",
            precision="fp32",
            batch=2,
            seq=16,
            new_tokens=4,
            split="layers",
            gpus=2,
            gpu="custom",
            gpu_memory="2GiB",
            steps=1,
            warmup=0,
        )
    )
    spec = models.resolve(c.model)
    placed = generation.device_map(c, "cpu")
    assert set(placed) == set(split.placement(c).device_map) and set(placed.values()) == {"cpu"}
    model = generation.build(c, spec, "cpu")
    assert hasattr(model, "_hf_hook")
    out = generation.infer(c, spec, "cpu")
    assert out["output_tokens"] == 16 + 4


def test_a_split_cell_runs_as_one_process():
    from pathlib import Path

    from bench import recipe
    from bench.run.executor import Job, worker_command

    c = _cell(gpus=3)
    job = Job(cell=c.to_dict(), cell_id=c.cell_id, slug=c.slug, matrix="m", gpus=3, ranks=recipe.of(c).ranks)
    argv = worker_command(job, Path("j"), Path("o"), python="py")
    assert "torch.distributed.run" not in argv


def test_a_split_record_keeps_every_cards_peaks():
    from bench.worker.child import per_card

    first = {"peak_nvml_process_bytes": 5 * 2**30}
    rest = [{"peak_nvml_process_bytes": 6 * 2**30}, {"peak_nvml_process_bytes": None}]
    measured = {"peak_torch_allocated_bytes": 1, "peak_torch_allocated_bytes_per_rank": [1, 3, 2]}
    out = per_card(first, rest, measured)
    assert out["peak_nvml_process_bytes_per_rank"] == [5 * 2**30, 6 * 2**30, None]
    assert out["peak_nvml_process_bytes"] == 6 * 2**30  # the bottleneck card decides
    assert out["peak_torch_allocated_bytes"] == 3


def test_predict_cli_prints_the_placement(capsys):
    from bench.cli import main

    args = ["predict", "--model", "EleutherAI/gpt-j-6b", "--task", "infer", "--precision", "fp16"]
    args += ["--batch", "1", "--seq", "128", "--new-tokens", "72", "--split", "layers", "--gpus", "3"]
    assert main([*args, "--gpu", "rtx3080"]) == 0
    text = capsys.readouterr().out
    assert "bottleneck" in text and "card 2:" in text and "blocks 0-" in text
    assert main([*args, "--gpu", "rtx3080", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)["predicted"]
    assert len(out["cards"]) == 3 and out["placement"]["lm_head"] in (0, 1, 2)
    assert out["peak_bytes"] == out["cards"][out["bottleneck_card"]]["peak_bytes"]


@pytest.mark.slow
def test_bench_run_measures_a_split_cell_on_the_cpu_and_refuses_a_quantized_one(tmp_path):
    """The whole runner path: one process (no torchrun) for a two-card split, dispatched with
    the predicted map onto the CPU; a quantized cell ends as an error naming what it needs."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    matrix = tmp_path / "split-cpu.yaml"
    matrix.write_text(
        "name: split-cpu\ngpu: custom\n"
        "defaults: {model: tiny-llama, task: infer, precision: fp16, batch: 2, seq: 16, new_tokens: 4,"
        " steps: 1, warmup: 0, gpu_memory: 2GiB}\n"
        "include:\n  - {split: layers, gpus: 2, precision: fp32}\n  - {quant: int8}\n"
    )
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(matrix), "--device", "cpu", "--results", str(results)],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=600,
    )
    records = {
        r["cell"]["split"]: r
        for r in (json.loads(f.read_text()) for f in (results / "custom" / "split-cpu").glob("*.json"))
    }
    assert records["layers"]["status"] == "ok", proc.stdout + proc.stderr
    assert records["layers"]["measured"]["output_tokens"] == 20
    assert records["none"]["status"] == "error"
    assert "needs bitsandbytes on a CUDA GPU" in records["none"]["error"]
