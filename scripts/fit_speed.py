"""Fit the GPU catalog's ``speed`` block on the measured H200 step times.

    PYTHONPATH=. python scripts/fit_speed.py            # print the fitted block
    PYTHONPATH=. python scripts/fit_speed.py --write    # and store it in bench/data/gpus.json

The rows are ``bench.predict.time_accuracy.training_rows()`` (the reference
rows and the ``bench run`` records, all on one H200). Every figure is global:
one fraction of the datasheet peak per matmul dtype, for fused attention, HBM
and PCIe (bounded by what such kernels reach at best); how much of the host's
dispatch time the GPU's work hides; one fixed cost per kernel; the host's per-op dispatch costs, the
per-tensor cost of DeepSpeed's hooks with CPU offload and its Python bookkeeping per tensor
without, ZeRO-3's host cost per module per pass, the per-tensor cost of FSDP2's DTensor dispatch,
and the throughput of DeepSpeed's CPU Adam. Nothing is fitted per model or per row. A ZeRO-3
record is matched on its steps after DeepSpeed completed its trace (``Row.steady``).
``link_fraction``, ``comm_overlap`` and the CPU torch-AdamW rate have no rows
to fit on and keep their stated values; generation's host ratios
(``no_grad_op_fraction``, ``generate_token_ops``) are measured by
``scripts/measure_host_ratios.py``, not fitted.

The fit minimises ``median + p90 + max/2`` of ``|log(predicted / measured)|``:
random multiplicative perturbations (seeded), then coordinate descent in log
space, every figure within its bounds. The figures of one DeepSpeed code path
(``PATH_FIGURES``: the per-tensor cost with CPU offload, the per-tensor Python
bookkeeping without, ZeRO-3's cost per module per pass) move only the few rows
of that path, which that objective barely sees; each is set on its own rows
instead (``fit_paths``, before and after the global fit). ``--only`` fits a
subset of the global figures and keeps the rest as the catalog has them.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import statistics
from pathlib import Path

from bench import gpus
from bench.predict import op_cost, speed, step_time, time_accuracy
from bench.predict.speed_figures import figures

FITTED = [  # (path in the block, lower bound, upper bound)
    (("matmul_fraction", "bf16"), 0.2, 0.85),
    (("matmul_fraction", "fp32"), 0.2, 0.9),
    (("attention_fraction",), 0.1, 0.6),
    (("hbm_fraction",), 0.3, 0.92),
    (("pcie_fraction",), 0.2, 0.9),
    (("async_overlap",), 0.0, 1.0),
    (("kernel_seconds",), 1e-7, 2e-5),
    (("host", "forward_op_seconds"), 1e-6, 1e-4),
    (("host", "backward_op_seconds"), 1e-6, 1e-4),
    (("host", "recompute_op_seconds"), 1e-6, 2e-4),
    (("host", "view_op_seconds"), 1e-7, 2e-5),
    (("host", "dtensor_op_seconds"), 1e-6, 5e-4),
    (("host", "cpu_adam_params_per_second"), 1e7, 1e10),
]


PATH_FIGURES = [  # figures of one code path, each set by the rows it moves (``fit_paths``)
    (("host", "deepspeed_param_seconds"), 1e-6, 2e-3),
    (("host", "zero_param_seconds"), 1e-6, 5e-4),
    (("host", "zero3_module_seconds"), 1e-5, 5e-3),
]


def _get(block, path):
    for k in path[:-1]:
        block = block[k]
    return block[path[-1]]


def _set(block, path, value):
    for k in path[:-1]:
        block = block[k]
    block[path[-1]] = value
    if path == ("matmul_fraction", "bf16"):
        block["fp16"] = value  # one tensor-core fraction for both half dtypes


def objective(block, rows) -> float:
    h200 = gpus.resolve("h200")
    f = figures(h200, block=block)
    logs = sorted(
        abs(math.log(step_time.train_step(r.cell, counts, f).seconds / (r.steady or r.measured))) for r, counts in rows
    )
    return statistics.median(logs) + logs[round(0.9 * (len(logs) - 1))] + 0.5 * logs[-1]


def _moved_by(block, rows, path) -> list:
    """The rows whose predicted step time ``path``'s figure changes."""
    h200 = gpus.resolve("h200")
    before = [step_time.train_step(r.cell, c, figures(h200, block=block)).seconds for r, c in rows]
    trial = copy.deepcopy(block)
    _set(trial, path, _get(trial, path) * 2)
    after = [step_time.train_step(r.cell, c, figures(h200, block=trial)).seconds for r, c in rows]
    return [row for row, b, a in zip(rows, before, after) if abs(a / b - 1) > 1e-9]


def fit_paths(block, rows):
    """Each figure of ``PATH_FIGURES`` is set on the rows whose prediction it moves (the DeepSpeed rows of
    its path): the sum of their ``|log(predicted / measured)|``, by a log-spaced scan then bisection,
    every other figure held; twice over, since the paths share rows (ZeRO-3 has the per-tensor cost too).
    The global objective leaves these alone: one or two rows sit at none of its median, p90 or maximum."""
    h200 = gpus.resolve("h200")
    for _ in range(2):
        for path, lo, hi in PATH_FIGURES:
            moved = _moved_by(block, rows, path)
            if not moved:
                continue

            def loss(v, moved=moved, path=path):
                _set(block, path, v)
                f = figures(h200, block=block)
                return sum(
                    abs(math.log(step_time.train_step(r.cell, c, f).seconds / (r.steady or r.measured)))
                    for r, c in moved
                )

            grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
            best = min(grid, key=loss)
            a, b = best / (hi / lo) ** (1 / 200), best * (hi / lo) ** (1 / 200)
            for _ in range(60):
                m1, m2 = a + (b - a) / 3, b - (b - a) / 3
                a, b = (a, m2) if loss(m1) <= loss(m2) else (m1, b)
            _set(block, path, min(hi, max(lo, (a + b) / 2)))
    return block


def fit(block, rows, rounds: int = 8, trials: int = 600, seed: int = 0):
    """Random multiplicative perturbations of every figure (kept when better), then coordinate descent."""
    rng = random.Random(seed)
    best = objective(block, rows)
    for i in range(trials):
        sigma = 0.4 * (1 - i / trials) + 0.05
        trial = copy.deepcopy(block)
        for path, lo, hi in FITTED:
            _set(trial, path, min(hi, max(lo, _get(trial, path) * math.exp(rng.gauss(0, sigma)))))
        score = objective(trial, rows)
        if score < best:
            block, best = trial, score
    for step in [2.0, 1.4, 1.15, 1.05][: max(1, rounds // 2)] * 2:
        for path, lo, hi in FITTED:
            for factor in (step, 1 / step):
                while True:
                    old = _get(block, path)
                    new = min(hi, max(lo, old * factor))
                    if new == old:
                        break
                    _set(block, path, new)
                    score = objective(block, rows)
                    if score < best - 1e-6:
                        best = score
                    else:
                        _set(block, path, old)
                        break
    return block, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="store the fitted block in bench/data/gpus.json")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated names (the last part, e.g. recompute_op_seconds): fit only these of the global "
        "figures, the others stay as the catalog has them ('none': only the DeepSpeed path figures)",
    )
    a = ap.parse_args()
    global FITTED
    GLOBAL = list(FITTED)
    if a.only:
        names = set(a.only.split(",")) - {"none"}
        unknown = names - {p[-1] for p, _, _ in FITTED}
        if unknown:
            ap.error(f"--only: not a fitted figure: {', '.join(sorted(unknown))}")
        FITTED = [x for x in FITTED if x[0][-1] in names]
    rows = [(r, op_cost.micro_step(speed.shape_key(r.cell))) for r in time_accuracy.training_rows()]
    block = copy.deepcopy(gpus.speed_figures())
    print(f"start: objective {objective(block, rows):.4f} on {len(rows)} rows")
    block = fit_paths(block, rows)
    if FITTED:
        block, score = fit(block, rows)
        block = fit_paths(block, rows)
    score = objective(block, rows)
    block["fitted_on"] = (
        f"scripts/fit_speed.py on {len(rows)} H200 training rows: tests/data/h200-2026-11.jsonl "
        "(= shared/measurements) and results/h200-2026-11-28"
        + (f"; run with --only {a.only}, the other figures kept from the catalog" if a.only else "")
        + "; deepspeed_param_seconds, zero_param_seconds and zero3_module_seconds each set on the DeepSpeed rows "
        "it moves (fit_paths: the CPU-offload rows; the ZeRO-2 and ZeRO-3 rows without offload, the ZeRO-3 "
        "record on its steps after DeepSpeed's trace step)"
    )
    block["fitted"] = [".".join(p) for p, _, _ in GLOBAL + PATH_FIGURES]
    block["source"] = (
        "fractions of each card's datasheet peaks (its own source field) and host costs, fitted as "
        "fitted_on says; link_fraction, comm_overlap and cpu_torch_adam_params_per_second are unfitted "
        "estimates (no rows measure them); host_ratios says where generation's host ratios come from"
    )
    print(f"fitted: objective {score:.4f}")
    print(json.dumps(block, indent=2))
    if a.write:
        path = Path(__file__).resolve().parents[1] / "bench" / "data" / "gpus.json"
        doc = json.loads(path.read_text())
        doc["speed"] = {k: (round(v, 4) if isinstance(v, float) and v > 1e-3 else v) for k, v in block.items()}
        path.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
