"""The ``models`` verb: the model catalog as a table, ``bench models [PATTERN]``.

One row per catalog entry: short name, Hugging Face id, published parameter
count (the catalog's ``published_params``, which a test checks against the
model built from the config) and architecture (``model_type``, with the
expert count of a Mixture-of-Experts model). ``PATTERN`` keeps the rows whose
name, hub id, alias or ``model_type`` contains it (any case), or matches it as
a shell glob (``qwen3-*``). Reads the shipped JSON only: no torch, no network.
"""

from __future__ import annotations

import argparse
import fnmatch
import json

from bench import architectures, models
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
    keys = [spec.name, spec.hub_id or "", spec.model_type, *aliases]
    low = pattern.lower()
    return any(low in k.lower() or fnmatch.fnmatch(k.lower(), low) for k in keys)


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


def cmd_models(a: argparse.Namespace) -> int:
    found = rows(a.pattern)
    if not found:
        raise UserError(f"models: nothing in the catalog matches {a.pattern!r}; run bench models to list it all")
    if a.json:
        print(json.dumps(found, indent=1))
        return 0
    width = max(len(r["name"]) for r in found)
    hub = max(len(r["hub_id"] or "-") for r in found)
    print(f"{'name':<{width}}  {'hub id':<{hub}}  {'params':>8}  architecture")
    for r in found:
        print(f"{r['name']:<{width}}  {r['hub_id'] or '-':<{hub}}  {_params(r['params']):>8}  {r['architecture']}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model catalog (name, hub id, parameters, architecture)")
    p.add_argument("pattern", nargs="?", help="keep models whose name, hub id or model_type contains (or globs) this")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)
