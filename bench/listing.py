"""The catalog verbs: ``bench models [PATTERN]`` and ``bench gpus [PATTERN]``, as tables.

One row per catalog entry: short name, Hugging Face id, published parameter
count (the catalog's ``published_params``, which a test checks against the
model built from the config) and architecture (``model_type``, with the
expert count of a Mixture-of-Experts model). ``PATTERN`` keeps the rows whose
name, hub id, alias or ``model_type`` contains it (any case), or matches it as
a shell glob (``qwen3-*``).

``bench gpus`` lists the GPU catalog (``bench/data/gpus.json``): memory as
NVML reports it (GiB = 2**30 bytes), compute capability, bf16 support, dense
peak TFLOP/s (fp32 on CUDA cores, bf16 or fp16 on tensor cores), HBM bandwidth
and the indicative price per GPU-hour where the catalog has one. ``PATTERN``
matches the name, the marketing name or an NVML name in the same way.

Both read the shipped JSON only: no torch, no network.
"""

from __future__ import annotations

import argparse
import fnmatch
import json

from tabulate import tabulate

from bench import architectures, gpus, models
from bench.errors import UserError


def _params(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _architecture(spec: models.ModelSpec) -> str:
    if not architectures.is_moe(spec):
        return spec.model_type
    c = spec.config
    experts = next(c[k] for k in ("num_local_experts", "num_experts", "n_routed_experts") if isinstance(c.get(k), int))
    return f"{spec.model_type} (MoE, {experts} experts, {c.get('num_experts_per_tok', '?')} per token)"


def _matches(spec: models.ModelSpec, aliases: list[str], pattern: str) -> bool:
    return _matches_any([spec.name, spec.hub_id or "", spec.model_type, *aliases], pattern)


def rows(pattern: str | None = None) -> list[dict]:
    """The catalog entries (matching ``pattern``), as dicts of name, hub_id, params, architecture."""
    out = []
    for name in models.names():
        spec = models.resolve(name)
        aliases = [k for k, v in models._catalog()[1].items() if v == name]
        if pattern and not _matches(spec, aliases, pattern):
            continue
        out.append(
            {"name": name, "hub_id": spec.hub_id, "params": spec.published_params, "architecture": _architecture(spec)}
        )
    return out


def _matches_any(keys: list[str], pattern: str) -> bool:
    low = pattern.lower()
    return any(low in k.lower() or fnmatch.fnmatch(k.lower(), low) for k in keys)


def cmd_models(a: argparse.Namespace) -> int:
    found = rows(a.pattern)
    if not found:
        raise UserError(f"models: nothing in the catalog matches {a.pattern!r}; run bench models to list it all")
    if a.json:
        print(json.dumps(found, indent=1))
        return 0
    table = [[r["name"], r["hub_id"] or "-", _params(r["params"]), r["architecture"]] for r in found]
    print(tabulate(table, headers=["name", "hub id", "params", "architecture"], colalign=("left", "left", "right")))
    return 0


def gpu_rows(pattern: str | None = None) -> list[dict]:
    """The GPU catalog's cards (matching ``pattern``), smallest memory first."""
    out = []
    for name in gpus.names():
        g = gpus.resolve(name)
        if pattern and not _matches_any([g.name, g.marketing_name, *g.nvml_names], pattern):
            continue
        out.append(
            {
                "name": g.name,
                "marketing_name": g.marketing_name,
                "memory_bytes": g.memory_bytes,
                "compute_capability": g.compute_capability,
                "bf16": g.bf16,
                "tflops": dict(g.tflops),
                "bandwidth_gbps": g.bandwidth_gbps,
                "usd_per_hour": g.usd_per_hour,
            }
        )
    return sorted(out, key=lambda r: (r["memory_bytes"], r["name"]))


def _tflops(value) -> str:
    return "-" if value is None else f"{value:g}"


def cmd_gpus(a: argparse.Namespace) -> int:
    found = gpu_rows(a.pattern)
    if not found:
        raise UserError(f"gpus: nothing in the catalog matches {a.pattern!r}; run bench gpus to list it all")
    if a.json:
        print(json.dumps(found, indent=1))
        return 0
    headers = ["name", "NVML GiB", "cc", "bf16", "fp32 TFLOP/s", "bf16/fp16 TFLOP/s", "HBM GB/s", "USD/h", "card"]
    table = [
        [
            r["name"],
            f"{r['memory_bytes'] / 2**30:.1f}",
            r["compute_capability"],
            "yes" if r["bf16"] else "no",
            _tflops(r["tflops"].get("fp32")),
            _tflops(r["tflops"].get("bf16") or r["tflops"].get("fp16")),
            f"{r['bandwidth_gbps']:g}",
            "-" if r["usd_per_hour"] is None else f"{r['usd_per_hour']:.2f}",
            r["marketing_name"],
        ]
        for r in found
    ]
    print(tabulate(table, headers=headers, disable_numparse=True, colalign=("left",) + ("right",) * 7 + ("left",)))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the model catalog (name, hub id, parameters, architecture)",
        description="The model catalog: short name, Hugging Face id, published parameter count and "
        "architecture. Any hub id outside it works too (its config.json is fetched, never weights).",
    )
    p.add_argument(
        "pattern",
        nargs="?",
        help="keep models whose name, hub id or model_type contains (or globs) this [default: every model]",
    )
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "gpus",
        help="list the GPU catalog (memory, compute capability, bf16, peaks, bandwidth, price)",
        description="The GPU catalog: memory as NVML reports it, compute capability, bf16 support, "
        "dense peak TFLOP/s, HBM bandwidth and the indicative price per GPU-hour where known. "
        "--gpu takes a name, a marketing or NVML name or a common spelling (4090, a6000).",
    )
    p.add_argument(
        "pattern",
        nargs="?",
        help="keep cards whose name, marketing or NVML name contains (or globs) this [default: every card]",
    )
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=cmd_gpus)
