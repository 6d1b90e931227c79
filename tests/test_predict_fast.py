"""The predictor's fast paths give the answers of its plain ones.

- A prediction whose trace is cached runs without torch or transformers (a
  subprocess that prints the heavy modules it loaded).
- The cached path and the traced path give identical predictions: a sample of
  cells, one per trace group of every shipped matrix, here; every cell of every
  matrix in the slow test.
- One replay without a limit serves every card (``Outcome.under``): equal to
  replaying under each card's limit, as the predictor did before.
- The max-batch search and ``--gpu all`` reuse replays and answer as before.
- ``bench plan`` on several processes prints what one process prints.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cell as cellmod, gpus, matrix, recipe
from bench.cell import normalize
from bench.predict import allocator, estimate, planner
from bench.predict.program import Program

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
HEAVY = ("torch", "transformers", "peft")

# runs the CLI, then prints which heavy modules it loaded as the last line of stderr
WRAPPER = (
    "import atexit, runpy, sys\n"
    f"atexit.register(lambda: print('loaded:', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr))\n"
    "sys.argv = ['bench', *sys.argv[1:]]\n"
    "runpy.run_module('bench', run_name='__main__')\n"
)


def _bench(args: list[str], cache: Path, wrapped: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENCH_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", WRAPPER, *args] if wrapped else [sys.executable, "-m", "bench", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)


def _loaded(r: subprocess.CompletedProcess) -> list[str]:
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("loaded:"), r.stderr[-2000:]
    return json.loads(line.removeprefix("loaded:").strip().replace("'", '"'))


# --- a cached prediction loads no torch ----------------------------------------

PREDICT_LORA = [
    "predict",
    *("--model", "tiny-llama", "--method", "lora+zero3-offload", "--precision", "bf16"),
    *("--batch", "2", "--seq", "64", "--gpus", "8", "--gpu", "a100-80gb", "--json", "--max-batch"),
]


def test_a_cached_prediction_imports_neither_torch_nor_transformers(tmp_path):
    cold = _bench(PREDICT_LORA, tmp_path, wrapped=True)
    assert cold.returncode == 0, cold.stderr[-2000:]
    assert "torch" in _loaded(cold)  # the first one traces: the wrapper does see torch
    warm = _bench(PREDICT_LORA, tmp_path, wrapped=True)
    assert warm.returncode == 0, warm.stderr[-2000:]
    assert _loaded(warm) == []
    assert json.loads(warm.stdout) == json.loads(cold.stdout)


def test_a_cached_plan_of_every_program_imports_no_torch(tmp_path):
    """Plain, LoRA, ZeRO-2/3, FSDP, an encoder-decoder and generation, in one process."""
    args = ["plan", "matrices/smoke-cpu.yaml", "--json", "--jobs", "1"]
    cold = _bench(args, tmp_path)
    assert cold.returncode == 0, cold.stderr[-2000:]
    warm = _bench(args, tmp_path, wrapped=True)
    assert warm.returncode == 0, warm.stderr[-2000:]
    assert _loaded(warm) == []
    assert json.loads(warm.stdout) == json.loads(cold.stdout)


# --- the cached path and the traced path agree ------------------------------------


def _sample(per_matrix: int) -> list[dict]:
    """Up to ``per_matrix`` cells of each shipped matrix, each from another trace group,
    the smallest models first (a fast test)."""
    from bench import models

    out = []
    for path in sorted((ROOT / "matrices").glob("*.yaml")):
        groups: dict = {}
        for c in matrix.load(path).cells:
            if _fast_path(c):
                groups.setdefault(planner.trace_group(c), c)
        size = lambda c: (models.resolve(c.model).layers or 1) * len(str(models.resolve(c.model).config))  # noqa: E731
        picked = sorted(groups.values(), key=size)[:per_matrix]
        out += [c.to_dict() for c in picked]
    return out


DRIVER = (
    "import json, sys\n"
    "from bench.cell import normalize\n"
    "from bench.predict import planner\n"
    "cells = [normalize(d) for d in json.load(open(sys.argv[1]))]\n"
    "print(json.dumps(planner.entries(cells, want_max_batch=True, jobs=1)))\n"
    f"print('loaded:', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)\n"
)


def _predict_twice(tmp_path: Path, cells: list[dict]) -> tuple[subprocess.CompletedProcess, ...]:
    """The cells predicted from an empty cache (traced), then from the cache it filled."""
    path = tmp_path / "cells.json"
    path.write_text(json.dumps(cells))
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-c", DRIVER, str(path)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900
    )
    traced = run()
    assert traced.returncode == 0, traced.stderr[-2000:]
    cached = run()
    assert cached.returncode == 0, cached.stderr[-2000:]
    return traced, cached


def test_cached_and_traced_predictions_agree_on_a_sample_of_every_matrix(tmp_path):
    traced, cached = _predict_twice(tmp_path, _sample(per_matrix=3))
    assert "torch" in _loaded(traced) and _loaded(cached) == []
    entries = json.loads(cached.stdout)
    assert len(entries) >= 12 and all("predicted" in e for e in entries)
    assert entries == json.loads(traced.stdout)


def _fast_path(c) -> bool:
    """Whether a cache hit of ``c`` runs without torch: a split cell's placement and a quantized
    generation's kernels are traced afresh every time."""
    r = recipe.of(c)
    return r.split == "none" and r.quantization is None


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "matrices").glob("*.yaml")))
def test_cached_and_traced_predictions_agree_on_every_cell(tmp_path, name):
    cache = tmp_path / "cache"
    args = ["plan", f"matrices/{name}.yaml", "--json"]
    traced = _bench(args, cache)
    assert traced.returncode in (0, 2), traced.stderr[-2000:]
    cached = _bench(args, cache, wrapped=True)
    cells = matrix.load(ROOT / "matrices" / f"{name}.yaml").cells
    if all(_fast_path(c) for c in cells):
        assert _loaded(cached) == []
    assert json.loads(cached.stdout) == json.loads(traced.stdout)


# --- one replay for every card ------------------------------------------------------


def _as_before(cell) -> estimate.Prediction:
    """What ``predict`` computed before replays were shared: the run under the card's
    limit, and the run without one when it did not fit, each replayed afresh."""
    limit = estimate.room(cell)
    with allocator.limited(limit):
        outcome, host, outside = estimate._program_now(cell, None)
    fits = not outcome.oom
    if not fits:
        outcome, host, outside = estimate._program_now(cell, None)
    shared = estimate._on_card
    try:
        estimate._on_card = lambda c, lim: (outcome, host, outside, fits)  # type: ignore[assignment]
        return estimate.predict(cell)
    finally:
        estimate._on_card = shared  # type: ignore[assignment]


CELLS = [
    dict(model="gpt2-xl", method="zero2", precision="fp16", batch=4, seq=1024),  # flat buffer beside or not
    dict(model="gpt2-xl", method="zero2-offload", precision="fp16", batch=8, seq=1024, grad_accum=2, grad_ckpt=True),
    dict(model="gpt2-large", method="full", precision="fp16", batch=4, seq=1024),
    dict(model="gpt2-medium", method="lora", precision="fp16", batch=8, seq=1024),
    dict(model="tiny-llama", method="qlora", precision="bf16", batch=64, seq=2048),
    dict(model="qwen2.5-0.5b", method="fsdp", precision="bf16", batch=8, seq=1024, gpus=2),
    dict(model="gpt2", task="infer", precision="fp16", batch=64, seq=1024, new_tokens=16),
]


@pytest.mark.parametrize("raw", CELLS, ids=lambda d: f"{d['model']}-{d.get('method', d.get('task'))}")
def test_one_replay_serves_every_card(raw):
    names = [n for n in gpus.names() if gpus.resolve(n).bf16 or raw["precision"] != "bf16"]
    verdicts = set()
    for name in names:
        c = normalize(dict(raw, gpu=name))
        assert estimate.predict(c) == _as_before(c), name
        verdicts.add(estimate.predict(c).fits)
    if raw["model"] in ("gpt2-xl", "gpt2-large"):
        assert verdicts == {True, False}  # the cards tell these cells apart


@pytest.mark.parametrize("seed", range(40))
def test_the_run_without_a_limit_tells_what_a_limit_changes(seed):
    """Random allocation sequences: where ``under`` answers, a replay under the limit agrees."""
    rng = random.Random(seed)
    ops: list[tuple[str, int]] = []
    live: list[int] = []
    for i in range(300):
        if live and rng.random() < 0.45:
            ops.append(("free", live.pop(rng.randrange(len(live)))))
        else:
            n = rng.choice([rng.randrange(1, 1 << 20), rng.randrange(1 << 20, 64 * MiB)])
            ops.append(("malloc", n))
            live.append(i)

    def run(limit):
        with allocator.limited(limit):
            prog = Program()
        keys: dict[int, int] = {}
        for i, (op, arg) in enumerate(ops):
            if op == "malloc":
                keys[i] = prog.malloc(arg, "transient")
            else:
                prog.free(keys.pop(arg))
        return prog.outcome()

    free = run(None)
    assert free.need == free.peak_reserved and free.floor <= free.peak_allocated
    for limit in range(free.floor - 64 * MiB, free.need + 64 * MiB, 7 * MiB):
        capped, verdict = run(limit), free.under(limit)
        if verdict is True:
            assert capped == free
        elif verdict is False:
            assert capped.oom


def _max_batch_as_before(cell, limit: int = 1024) -> int:
    """The same search over predictions made afresh per batch (no shared replays)."""
    return estimate.search_max_batch(lambda b: _as_before(cellmod.replace(cell, batch=b)).fits, limit)


def test_a_replay_stopped_at_its_first_oom_says_what_the_whole_replay_says():
    c = normalize(dict(model="gpt2-large", method="full", precision="fp16", batch=16, seq=1024, gpu="v100-16gb"))
    whole = estimate._program_now(estimate.program_cell(c), None)
    with allocator.limited(estimate.room(c)):
        assert estimate._program_now(estimate.program_cell(c), None)[0].oom
    with pytest.raises(allocator.OutOfMemory), allocator.stop_at_oom(), allocator.limited(estimate.room(c)):
        estimate._program_now(estimate.program_cell(c), None)
    assert not estimate.fits(c) and not estimate.predict(c).fits
    assert estimate._program(c, None, None) == whole


@pytest.mark.parametrize("gpu", ["v100-16gb", "rtx4090", "a100-80gb"])
def test_max_batch_is_the_search_it_was(gpu):
    c = normalize(dict(model="gpt2-medium", method="full", precision="fp16", batch=2, seq=512, gpu=gpu))
    assert estimate.max_batch(c) == _max_batch_as_before(c) > 0
    assert estimate.max_batch(cellmod.replace(c, batch=7)) == estimate.max_batch(c)


# --- plan on several processes ------------------------------------------------------

PLAN = """
name: mixed
gpu: v100-16gb
defaults: {seq: 64}
sweep:
  model: [tiny-gpt2, tiny-llama, gpt2]
  method: [full, lora, zero2-offload]
  precision: [fp16]
  batch: [1, 8]
include:
  - {model: tiny-t5, method: lora, precision: fp16, batch: 2}
  - {model: tiny-gpt2, task: infer, precision: fp16, batch: 2, new_tokens: 4}
"""


def test_plan_on_several_processes_is_the_serial_plan(write_matrix):
    """In-process (the test process has loaded torch: workers come from a fork server)."""
    m = matrix.load(write_matrix(PLAN))
    unknown = normalize(dict(model="no-such-model-anywhere", gpu="v100-16gb", method="lora", precision="fp16"))
    cells = [*m.cells[:5], unknown, *m.cells[5:]]
    serial = planner.entries(cells, want_max_batch=True, jobs=1)
    parallel = planner.entries(cells, want_max_batch=True, jobs=3)
    assert json.dumps(parallel) == json.dumps(serial)
    errors = [e for e in serial if "error" in e]
    assert [e["cell"]["model"] for e in errors] == ["no-such-model-anywhere"]
    assert errors[0]["error"].startswith("model: 'no-such-model-anywhere' is not in the catalog")
    assert len({planner.trace_group(c) for c in m.cells}) > 3


def test_plan_command_on_several_processes_prints_the_serial_plan(write_matrix, tmp_path):
    """The CLI (no torch loaded: forked workers), table and JSON alike."""
    path = write_matrix(PLAN)
    for fmt in ([], ["--json"]):
        one = _bench(["plan", str(path), *fmt, "--max-batch", "--jobs", "1"], tmp_path)
        two = _bench(["plan", str(path), *fmt, "--max-batch", "--jobs", "2"], tmp_path)
        assert one.returncode == 0, one.stderr[-2000:]
        assert (two.returncode, two.stdout, two.stderr) == (one.returncode, one.stdout, one.stderr)


def test_plan_refuses_a_bad_jobs_count(repo):
    r = subprocess.run(
        [sys.executable, "-m", "bench", "plan", "matrices/smoke-cpu.yaml", "--jobs", "0"],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --jobs: 0 is not allowed; allowed: a positive number of processes"
