"""Matrix files: load, apply overrides, expand into cells, validate.

A matrix is YAML (loaded with ``yaml.safe_load``)::

    name: v100                 # results go to results/<gpu>/<name>/
    gpu: v100-16gb
    defaults: {seq: 1024, steps: 5}
    sweep: {model: [...], method: [...], batch: [1, 2]}   # cartesian product, first key outermost
    exclude: [{model: ..., method: full}]                  # drop cells matching every key
    include: [{label: seed, model: ..., batch: 8}]         # extra cells, appended as written

``load`` checks the whole file and raises one ``UserError`` listing every
problem (key, bad value, what is allowed) before anything runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import cell as cellmod
from bench import dsconfig, gpus, models
from bench.cell import Cell
from bench.errors import UserError

TOP_KEYS = ("name", "gpu", "description", "defaults", "sweep", "exclude", "include")


@dataclass(frozen=True)
class Matrix:
    name: str
    gpu: str
    path: str
    cells: tuple[Cell, ...]


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """``key=value`` strings (values parsed as YAML, so ``[1,2]`` is a list)."""
    out = []
    for a in args:
        key, sep, value = a.partition("=")
        if not sep or not key:
            raise UserError(f"override {a!r} is not key=value (e.g. batch=[1,2] or gpu=a100-80gb)")
        try:
            out.append((key.strip(), yaml.safe_load(value)))
        except yaml.YAMLError:
            raise UserError(f"override {key}: {value!r} is not a valid value (YAML scalar or [list])") from None
    return out


def apply_overrides(doc: dict[str, Any], overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """Set each override: top-level keys directly, dotted keys by path, cell
    fields everywhere (a list becomes a sweep axis, a scalar a default)."""
    doc = {**doc, "defaults": dict(doc.get("defaults") or {}), "sweep": dict(doc.get("sweep") or {}),
           "include": [dict(c) for c in doc.get("include") or [] if isinstance(c, dict)]}
    for key, value in overrides:
        if key in ("name", "gpu", "description"):
            doc[key] = value
        elif "." in key:
            node = doc
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise UserError(f"override {key}: {p!r} is not a mapping in the matrix")
            node[leaf] = value
        elif key in cellmod.FIELD_NAMES or key == "method":
            doc["sweep"].pop(key, None)
            doc["defaults"].pop(key, None)
            if isinstance(value, list):
                doc["sweep"][key] = value
            else:
                doc["defaults"][key] = value
            for inc in doc["include"]:
                inc.pop(key, None)
            if key == "method":
                for k in ("tuning", "strategy", "offload"):
                    doc["sweep"].pop(k, None)
                    doc["defaults"].pop(k, None)
        else:
            raise UserError(f"override {key}: unknown key; allowed: name, gpu, dotted paths, or a cell field ({', '.join(cellmod.FIELD_NAMES)})")
    if isinstance(doc.get("include"), list):
        doc["include"] = _expand_includes(doc["include"], {k: v for k, v in overrides if isinstance(v, list) and "." not in k})
    return doc


def _expand_includes(includes: list[dict], list_overrides: dict[str, list]) -> list[dict]:
    out = []
    for inc in includes:
        keys = [k for k in list_overrides]
        for combo in itertools.product(*(list_overrides[k] for k in keys)):
            out.append({**inc, **dict(zip(keys, combo))})
    return out


def _raw_cells(doc: dict[str, Any], problems: list[str]) -> list[dict[str, Any]]:
    defaults = doc.get("defaults") or {}
    sweep = doc.get("sweep") or {}
    if not isinstance(defaults, dict):
        problems.append(f"defaults: {defaults!r} is not allowed; allowed: a mapping of cell fields")
        defaults = {}
    if not isinstance(sweep, dict):
        problems.append(f"sweep: {sweep!r} is not allowed; allowed: a mapping of cell field -> list")
        sweep = {}
    axes = []
    for k, v in sweep.items():
        if not isinstance(v, list) or not v:
            problems.append(f"sweep.{k}: {v!r} is not allowed; allowed: a non-empty list")
            v = [v] if not isinstance(v, list) else [None]
        axes.append((k, v))
    base = {"gpu": doc.get("gpu"), **defaults}
    cells = [{**base, **dict(zip([k for k, _ in axes], combo))}
             for combo in itertools.product(*(v for _, v in axes))] if axes else []
    include = doc.get("include") or []
    if not isinstance(include, list):
        problems.append("include: must be a list of cells")
        include = []
    for i, inc in enumerate(include):
        if not isinstance(inc, dict):
            problems.append(f"include[{i}]: {inc!r} is not allowed; allowed: a mapping of cell fields")
            continue
        cells.append({**base, **inc, "_include": i})
    return cells


def _matches(c: Cell, rule: dict[str, Any]) -> bool:
    for k, v in rule.items():
        if k == "method":
            if cellmod.METHODS.get(v) != (c.tuning, c.strategy, c.offload):
                return False
        elif k == "model":
            try:
                if models.resolve(str(v)).name != c.model:
                    return False
            except UserError:
                return False
        elif getattr(c, k, object()) != v:
            return False
    return True


def validate_cell(c: Cell, where: str = "") -> list[str]:
    """Catalog-dependent checks for a grammatically valid cell."""
    p: list[str] = []
    spec = models.resolve(c.model)
    gpu = gpus.resolve(c.gpu)
    if c.precision in ("bf16", "pure-bf16") and not gpu.bf16:
        p.append(f"{where}precision: {c.precision!r} is not supported on {gpu.name} (no bf16); allowed: fp32, fp16")
    if c.attn == "flash_attention_2" and not gpu.supports_flash_attention:
        p.append(f"{where}attn: 'flash_attention_2' needs compute capability >= 8.0; {gpu.name} has {gpu.compute_capability}; allowed: sdpa, eager")
    limit = spec.max_positions
    total = c.seq + (c.new_tokens if c.task == "infer" else 0)
    if limit is not None and not spec.is_encoder_decoder and total > limit:
        what = "seq + new_tokens" if c.task == "infer" else "seq"
        p.append(f"{where}{what}: {total} exceeds {spec.name}'s {limit} positions; allowed: <= {limit}")
    if c.target_seq is not None and not spec.is_encoder_decoder:
        p.append(f"{where}target_seq: {c.target_seq} is only for encoder-decoder models; {spec.name} is decoder-only")
    if c.strategy.startswith("zero") and c.ds_config is not None:
        try:
            dsconfig.settings(c, spec.config.get("hidden_size") or spec.config.get("d_model"))
        except UserError as e:
            p += [f"{where}{m}" for m in e.problems]
    return p


def load(path: str | Path, overrides: list[str] | None = None) -> Matrix:
    """Read, override, expand and validate a matrix; every problem at once."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"matrix: {str(path)!r} cannot be read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"matrix: {str(path)!r} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise UserError(f"matrix: {str(path)!r} must be a YAML mapping with keys {', '.join(TOP_KEYS)}")
    doc = apply_overrides(doc, parse_overrides(overrides or []))
    problems = [f"unknown key {k!r}; allowed: {', '.join(TOP_KEYS)}" for k in doc if k not in TOP_KEYS]
    name = doc.get("name") or path.stem
    gpu_name = doc.get("gpu")
    try:
        doc["gpu"] = gpus.resolve(str(gpu_name)).name if gpu_name is not None else None
    except UserError as e:
        problems += e.problems
        gpu_name = None
    if gpu_name is None and not problems:
        problems.append(f"gpu: missing; allowed: {', '.join(gpus.names())}")

    cells: list[Cell] = []
    seen: set[str] = set()
    for i, raw in enumerate(_raw_cells(doc, problems)):
        inc = raw.pop("_include", None)
        where = f"include[{inc}]: " if inc is not None else f"cell {i + 1}: "
        if raw.get("ds_config") is not None:
            ds = Path(raw["ds_config"])
            raw["ds_config"] = str(ds if ds.is_absolute() or ds.exists() else path.parent / ds)
        try:
            model = models.resolve(str(raw.get("model")))
            raw["model"] = model.name
            c = cellmod.normalize(raw, where)
            problems += validate_cell(c, where)
        except UserError as e:
            problems += [m if m.startswith(where) else f"{where}{m}" for m in e.problems]
            continue
        if inc is None and any(_matches(c, rule) for rule in doc.get("exclude") or [] if isinstance(rule, dict)):
            continue
        if c.cell_id in seen:
            continue
        seen.add(c.cell_id)
        cells.append(c)
    for j, rule in enumerate(doc.get("exclude") or []):
        if not isinstance(rule, dict):
            problems.append(f"exclude[{j}]: {rule!r} is not allowed; allowed: a mapping of cell fields")
        else:
            problems += [f"exclude[{j}]: unknown key {k!r}" for k in rule if k not in cellmod.FIELD_NAMES and k != "method"]
    if problems:
        raise UserError(*dict.fromkeys(problems))
    if not cells:
        raise UserError(f"matrix: {str(path)!r} expands to no cells (empty sweep, or everything excluded)")
    return Matrix(name=str(name), gpu=doc["gpu"], path=str(path), cells=tuple(cells))
