"""Matrix files: load, apply overrides, expand into cells, validate.

A matrix is YAML (loaded with ``bench.yamlsafe``: safe, no duplicate keys, bounded depth and aliases)::

    name: v100                 # results go to results/<gpu>/<name>/
    gpu: v100-16gb
    host_memory: 256GiB        # optional: the host RAM of one node, for bench plan
    defaults: {seq: 1024, steps: 5}
    sweep: {model: [...], method: [...], batch: [1, 2]}   # cartesian product, first key outermost
    exclude: [{model: ..., method: full}]                  # drop sweep cells matching every key
    include: [{label: seed, model: ..., batch: 8}]         # extra cells, appended as written
    include: [{from: axolotl.yml, gpus: 2}]                # a job file's cells (bench.jobfile), keys over it

An exclude rule matches a cell when every key matches; a list value matches
any of its items (``{model: gpt2-xl, batch: [12, 16]}``), a model matches by
catalog name, hub id or alias, a ``method`` by the (tuning, strategy, offload)
it stands for. Exclusion happens before validation, so a rule can drop the
combinations a sweep cannot run (``{model: gpt2, seq: 2048}``). Includes are
never excluded.

``host_memory`` (a size such as ``64GiB``, parsed as a cell's ``gpu_memory``) states the
host RAM of one node for every cell, as ``bench predict --host-memory`` does for one:
``bench plan`` then gives each cell a host-RAM verdict, and a ``split: layers`` cell
offloads to the host the blocks that fit on no card. Like ``gpu`` it is the machine's, so
it is a top-level key only (not in ``defaults``, ``sweep`` or an include), and no cell
field: cell ids and results do not depend on it. ``bench plan --host-memory SIZE`` or the
override ``host_memory=SIZE`` replaces it; ``bench run`` measures the real host and
leaves it aside.

``load`` checks the whole file and raises one ``UserError`` listing every
problem before anything runs: one line per distinct problem (key, bad value,
what is allowed), naming the cell it comes from, or how many cells share it.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import architectures, cell as cellmod, dsconfig, gpus, models, optimizer_names, recipe, userfile, yamlsafe
from bench.cell import Cell
from bench.errors import UserError, allowed
from bench.limits import MAX_CELLS, clip_line, short

TOP_KEYS = ("name", "gpu", "host_memory", "description", "defaults", "sweep", "exclude", "include")
CELL_KEYS = ("method", *cellmod.FIELD_NAMES)
SPLIT_MAX_GPUS = 16
"""Cards one process spreads a model over (``split: layers``): one node's."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TRIPLE = ("tuning", "strategy", "offload")
_CHOICES = {
    "task": cellmod.TASKS,
    "tuning": cellmod.TUNINGS,
    "strategy": cellmod.STRATEGIES,
    "offload": cellmod.OFFLOADS,
    "precision": cellmod.PRECISIONS,
    "optimizer": optimizer_names.allowed_names(),
    "quant": cellmod.QUANTS,
    "split": cellmod.SPLITS,
    "split_balance": cellmod.SPLIT_BALANCES,
    "attn": cellmod.ATTNS,
    "method": tuple(cellmod.METHODS),
}


@dataclass(frozen=True)
class Matrix:
    name: str
    """Results go to ``results/<gpu>/<name>/``."""
    gpu: str
    """Catalog name of the target GPU."""
    path: str
    cells: tuple[Cell, ...]
    """Sweep cells in expansion order (first sweep key outermost), then includes."""
    notes: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict, compare=False)
    """cell id -> what an include's ``from:`` job file asks for that is not modelled."""
    host_memory: int | None = None
    """The stated host RAM of one node in bytes (``host_memory``), or ``None``: not stated."""


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """``key=value`` strings (values parsed as YAML, so ``[1,2]`` is a list)."""
    out = []
    for a in args:
        key, sep, value = a.partition("=")
        key = key.strip()
        if not sep or not key or "" in key.split("."):
            raise UserError(f"override {a!r} is not key=value (e.g. batch=[1,2], gpu=a100-80gb or defaults.seq=512)")
        try:
            out.append((key, yamlsafe.loads(value, f"override {key}")))
        except yamlsafe.NotYaml:
            raise UserError(
                f"override {key}: {short(value)} is not a valid value; allowed: a YAML scalar or [list]"
            ) from None
    return out


def apply_overrides(doc: dict[str, Any], overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of ``doc`` with each override set.

    ``name``/``gpu``/``host_memory``/``description`` replace the top-level key; a dotted key
    (``defaults.seq``) sets that path only; a cell field applies everywhere: a
    list becomes the sweep axis (in place if the sweep had one), a scalar the
    default, and includes take the value too (one include per list item).
    """
    doc = copy.deepcopy(doc)
    for key, value in overrides:
        if key in ("name", "gpu", "host_memory", "description"):
            doc[key] = value
        elif "." in key:
            node = doc
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {}) if isinstance(node, dict) else None
                if not isinstance(node, dict):
                    raise UserError(
                        f"override {key}: {p!r} is not a mapping in the matrix; allowed: a path through mappings such as defaults.seq"
                    )
            node[leaf] = value
        elif key in CELL_KEYS:
            _override_field(doc, key, value)
        else:
            raise UserError(
                f"override {key}: unknown key; allowed: name, gpu, host_memory, description, a dotted path (defaults.seq) or a cell field ({', '.join(CELL_KEYS)})"
            )
    return doc


def _override_field(doc: dict[str, Any], key: str, value: Any) -> None:
    drop = (key, *_TRIPLE) if key == "method" else (key,)
    sections = {}
    for section in ("defaults", "sweep"):
        if doc.get(section) is None:
            doc[section] = {}
        sections[section] = doc[section] if isinstance(doc[section], dict) else {}  # a bad one is reported by load
    sweep, defaults = sections["sweep"], sections["defaults"]
    was_axis = any(k in sweep for k in drop)
    for k in drop:
        defaults.pop(k, None)
        if k != key:
            sweep.pop(k, None)
    if isinstance(value, list):
        sweep[key] = value  # keeps the axis's place when the sweep had it
    elif was_axis:
        sweep[key] = [value]  # a one-value axis: the only axis of a sweep must not vanish
    else:
        sweep.pop(key, None)
        defaults[key] = value
    include = doc.get("include")
    if isinstance(include, list):
        out = []
        for inc in include:
            if not isinstance(inc, dict):
                out.append(inc)
                continue
            inc = {k: v for k, v in inc.items() if k not in drop}
            out += [{**inc, key: v} for v in value] if isinstance(value, list) else [inc]
        doc["include"] = out


class _Problems:
    """Problems in the order found; the same message from many cells is one line."""

    def __init__(self) -> None:
        self._where: dict[str, list[tuple[int | str, str]]] = {}

    def add(self, message: str, where: tuple[int | str, str] | None = None) -> None:
        self._where.setdefault(message, [])
        if where is not None and where not in self._where[message]:
            self._where[message].append(where)

    def lines(self) -> list[str]:
        out = []
        for message, where in self._where.items():
            if not where:
                out.append(message)
            elif len(where) == 1:
                ref, desc = where[0]
                out.append(f"{_ref(ref)} ({desc}): {message}" if desc else f"{_ref(ref)}: {message}")
            else:
                out.append(f"{len(where)} cells ({_refs([r for r, _ in where])}): {message}")
        return out


def _ref(ref: int | str) -> str:
    return f"cell {ref}" if isinstance(ref, int) else ref


def _refs(refs: list[int | str], most: int = 8) -> str:
    """``cell 1-48, 97-144, include[0]``: runs of sweep cell numbers, then includes."""
    runs = []
    numbers = [r for r in refs if isinstance(r, int)]
    for _, run in itertools.groupby(enumerate(numbers), key=lambda t: t[1] - t[0]):
        run = [n for _, n in run]  # type: ignore[assignment]
        runs.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")  # type: ignore[arg-type, index]
    named = [r for r in refs if isinstance(r, str)]
    parts = [f"cell {', '.join(runs[:most])}{', …' if len(runs) > most else ''}"] if runs else []
    parts += named[:most] + (["…"] if len(named) > most else [])
    return ", ".join(parts)


def _describe(raw: dict[str, Any]) -> str:
    """A short reading of a raw cell for messages: ``gpt2-xl zero2-offload fp16 b8 s1024``."""
    if raw.get("label"):
        return clip_line(str(raw["label"]), 80)
    parts = [
        raw.get("model"),
        raw.get("method") or "-".join(str(raw[k]) for k in _TRIPLE if k in raw) or None,
        raw.get("precision"),
    ]
    parts += [f"{prefix}{raw[k]}" for k, prefix in (("batch", "b"), ("seq", "s")) if k in raw]
    return clip_line(" ".join(str(p) for p in parts if p is not None), 80)


def _triple(raw: dict[str, Any]) -> tuple[Any, Any, Any]:
    method = raw.get("method")
    if isinstance(method, str) and method in cellmod.METHODS:
        return cellmod.METHODS[method]
    return tuple(raw.get(k, cellmod.Cell.__dataclass_fields__[k].default) for k in _TRIPLE)


def _rules(doc: dict[str, Any], problems: _Problems) -> list[dict[str, list[Any]]]:
    """The exclude rules, checked; each key maps to the values it matches."""
    exclude = doc.get("exclude") or []
    if not isinstance(exclude, list):
        problems.add(f"exclude: {exclude!r} is not allowed; allowed: a list of mappings of cell fields")
        return []
    rules = []
    for j, rule in enumerate(exclude):
        if not isinstance(rule, dict) or not rule:
            problems.add(f"exclude[{j}]: {rule!r} is not allowed; allowed: a non-empty mapping of cell fields")
            continue
        checked: dict[str, list[Any]] = {}
        bad = []
        for k, v in rule.items():
            if k not in CELL_KEYS:
                bad.append(f"exclude[{j}]: {cellmod.unknown_key(k)}")
                continue
            options = v if isinstance(v, list) else [v]
            if k == "model":
                names = []
                for o in options:
                    try:
                        names.append(models.resolve(str(o)).name)
                    except UserError as e:
                        bad += [f"exclude[{j}].{m}" for m in e.problems]
                options = names
            elif k in _CHOICES:
                bad += [
                    f"exclude[{j}].{allowed(k, o, _CHOICES[k])}"
                    for o in options
                    if not isinstance(o, str) or o not in _CHOICES[k]
                ]
                if k == "optimizer" and not bad:
                    options = [optimizer_names.canonical(o) for o in options]
            checked[k] = options
        for m in bad:
            problems.add(m)
        if not bad:  # a broken rule must not drop cells it was never meant to
            rules.append(checked)
    return rules


def _excluded(raw: dict[str, Any], rule: dict[str, list[Any]]) -> bool:
    triple = _triple(raw)
    for k, options in rule.items():
        if k == "method":
            if triple not in [cellmod.METHODS.get(o) for o in options if isinstance(o, str)]:
                return False
        elif k in _TRIPLE:
            if triple[_TRIPLE.index(k)] not in options:
                return False
        else:
            default = cellmod.Cell.__dataclass_fields__[k].default
            value = raw.get(k, None if default is dataclasses.MISSING else default)
            if k == "optimizer" and value in optimizer_names.HF_NAMES:
                value = optimizer_names.HF_NAMES[value]
            if not any(value == o and type(value) is type(o) or _same_number(value, o) for o in options):
                return False
    return True


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (
        not isinstance(a, bool)
        and not isinstance(b, bool)
        and isinstance(a, numbers)
        and isinstance(b, numbers)
        and a == b
    )


def validate_cell(c: Cell, where: str = "") -> list[str]:
    """Catalog-dependent checks for a grammatically valid cell (model, GPU, ds_config)."""
    p: list[str] = []
    spec = models.resolve(c.model)
    gpu = gpus.resolve(c.gpu)
    p += architectures.problems(spec, c.tuning, where, c.head)
    if c.precision in ("bf16", "pure-bf16") and not gpu.bf16:
        p.append(f"{where}precision: {c.precision!r} is not supported on {gpu.name} (no bf16); allowed: fp32, fp16")
    if c.attn == "flash_attention_2" and not gpu.supports_flash_attention:
        p.append(
            f"{where}attn: 'flash_attention_2' needs compute capability >= 8.0; {gpu.name} has {gpu.compute_capability}; allowed: sdpa, eager"
        )
    limit = spec.max_positions
    total = c.seq + (c.new_tokens if c.task == "infer" else 0)
    if limit is not None and not spec.is_encoder_decoder and total > limit:
        what = "seq + new_tokens" if c.task == "infer" else "seq"
        p.append(f"{where}{what}: {total} exceeds {spec.name}'s {limit} positions; allowed: <= {limit}")
    if c.target_seq is not None and not spec.is_encoder_decoder:
        p.append(f"{where}target_seq: {c.target_seq} is only for encoder-decoder models; {spec.name} is decoder-only")
    blocks = spec.layers
    if c.freeze and blocks is not None and c.freeze > blocks:
        p.append(f"{where}freeze: {c.freeze} exceeds {spec.name}'s {blocks} blocks; allowed: 0 to {blocks}")
    if c.split != "none" and spec.is_encoder_decoder:
        p.append(
            f"{where}split: {c.split!r} is for decoder-only models; {spec.name} is an encoder-decoder; allowed: none"
        )
    if c.split != "none" and c.gpus > SPLIT_MAX_GPUS:
        p.append(
            f"{where}gpus: {c.gpus} is too many cards for one process (split: layers); allowed: 1 to {SPLIT_MAX_GPUS}"
        )
    if recipe.uses_deepspeed(c) and c.ds_config is not None:
        try:
            dsconfig.settings(c, dsconfig.hidden_size_of(spec.config))
        except UserError as e:
            p += [f"{where}{m}" for m in e.problems]
    return p


def _despite(raw: dict[str, Any], found: list[str], catalog: bool) -> list[str]:
    """The problems a cell has besides ``found``: its other keys checked on their own.

    Keys named by ``found`` are dropped (a bad method drops tuning, strategy and
    offload too) and the rest is checked again; messages that mention a dropped
    key are left out, since the default standing in for it is no user mistake.
    """
    bad = set()
    for m in found:
        hit = re.match(r"unknown key '([^']*)'|([a-z_]+)", m)
        key = hit and (hit.group(1) if hit.group(1) is not None else hit.group(2))
        if key:  # an empty unknown key names nothing to drop
            bad.add(key)
    if bad & {"method", *_TRIPLE}:
        bad |= {"method", *_TRIPLE}
    rest = {k: v for k, v in raw.items() if k in CELL_KEYS and k not in bad}
    try:
        c = cellmod.normalize(rest)
        more = validate_cell(c) if catalog else []
    except UserError as e:
        more = e.problems
    return [m for m in more if m not in found and not any(re.search(rf"\b{re.escape(k)}\b", m) for k in bad)]


def _raw_cells(
    doc: dict[str, Any], problems: _Problems, matrix_path: Path, notes: dict[str, tuple[str, ...]]
) -> list[tuple[int | str, dict[str, Any], bool]]:
    """(reference, raw cell, from include) in expansion order: sweep first, then includes."""
    defaults = doc.get("defaults") or {}
    sweep = doc.get("sweep") or {}
    if not isinstance(defaults, dict):
        problems.add(f"defaults: {defaults!r} is not allowed; allowed: a mapping of cell fields")
        defaults = {}
    if not isinstance(sweep, dict):
        problems.add(f"sweep: {sweep!r} is not allowed; allowed: a mapping of cell field -> list")
        sweep = {}
    axes = []
    for k, v in sweep.items():
        if not isinstance(v, list) or not v:
            problems.add(f"sweep.{k}: {short(v)} is not allowed; allowed: a non-empty list")
            if isinstance(v, list):
                continue
            v = [v]
        axes.append((k, v))
    base = {**defaults, "gpu": doc.get("gpu")}
    out: list[tuple[int | str, dict[str, Any], bool]] = []
    size = math.prod(len(v) for _, v in axes)
    if size > MAX_CELLS:
        problems.add(
            f"sweep: {' x '.join(f'{len(v)} {k}' for k, v in axes)} expands to {size:,} cells; "
            f"allowed: at most {MAX_CELLS:,} (split the matrix, or exclude combinations in it)"
        )
        axes = []
    if axes:
        for n, combo in enumerate(itertools.product(*(v for _, v in axes)), start=1):
            out.append((n, {**base, **dict(zip([k for k, _ in axes], combo))}, False))
    include = doc.get("include") or []
    if not isinstance(include, list):
        problems.add(f"include: {include!r} is not allowed; allowed: a list of mappings of cell fields")
        include = []
    for i, inc in enumerate(include):
        if not isinstance(inc, dict):
            problems.add(f"include[{i}]: {inc!r} is not allowed; allowed: a mapping of cell fields")
            continue
        if "from" in inc:
            inc = _from_job(inc, i, matrix_path, problems, notes)
            if inc is None:
                continue
        out.append((f"include[{i}]", {**defaults, **inc, "gpu": doc.get("gpu")}, True))
    return out


def _from_job(
    inc: dict[str, Any], i: int, matrix_path: Path, problems: _Problems, notes: dict[str, tuple[str, ...]]
) -> dict[str, Any] | None:
    """An include ``{from: FILE, ...}``: the job file's cell fields under the include's own keys.

    ``FILE`` is relative to the matrix file (then the working directory). A
    ``method`` in the include that names a tuning only (``lora``) keeps the
    file's ZeRO/FSDP setup; any other method replaces it.
    """
    from bench import jobfile

    inc = dict(inc)
    source = inc.pop("from")
    if not isinstance(source, str):
        problems.add(f"include[{i}].from: {source!r} is not allowed; allowed: a path to a job file")
        return None
    beside = matrix_path.parent / source
    try:
        job = jobfile.load(beside if beside.exists() else Path(source))
    except UserError as e:
        for m in e.problems:
            problems.add(f"include[{i}].from: {m}")
        return None
    fields = dict(job.fields)
    method = inc.get("method")
    if method in cellmod.TUNINGS:
        fields["tuning"] = inc.pop("method")
    elif method is not None:
        for k in _TRIPLE:
            fields.pop(k, None)
    notes[f"include[{i}]"] = job.notes
    return {**fields, **inc}


def _ds_path(value: Any, matrix_path: Path) -> Any:
    """A relative ``ds_config`` is relative to the matrix file (then to the working directory)."""
    if not isinstance(value, str):
        return value
    ds = userfile.expand(value)
    if not ds.is_absolute():
        beside = matrix_path.parent / ds
        ds = beside if userfile.exists(beside) or not userfile.exists(ds) else ds
    try:
        return str(ds.resolve())
    except (OSError, ValueError):  # a name no filesystem holds: reported when the file is read
        return value


def _resolve_model(value: str, matrix_path: Path) -> models.ModelSpec:
    """A catalog name or hub id, else a config path (relative to the matrix file, then the working
    directory), else a hub repository id not in the catalog (its config.json fetched)."""
    beside = matrix_path.parent / value
    if (
        not models.is_catalogued(value)
        and not Path(value).is_absolute()
        and userfile.exists(beside)
        and not userfile.exists(Path(value))
    ):
        return models.resolve(str(beside))
    return models.resolve(value)


def load(path: str | Path, overrides: list[str] | None = None) -> Matrix:
    """Read, override, expand and validate a matrix; every problem at once."""
    path = Path(path)
    text = userfile.read_text(path, "matrix")
    doc = yamlsafe.loads(text, f"matrix: {str(path)!r}")
    if not isinstance(doc, dict):
        raise UserError(f"matrix: {str(path)!r} must be a YAML mapping with keys {', '.join(TOP_KEYS)}")
    doc = apply_overrides(doc, parse_overrides(overrides or []))
    problems = _Problems()
    for k in doc:
        if k not in TOP_KEYS:
            problems.add(f"unknown key {k!r}; allowed: {', '.join(TOP_KEYS)}")
    name = doc.get("name", path.stem)
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        name = str(name)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        problems.add(
            f"name: {name!r} is not allowed; allowed: letters, digits, '.', '_' and '-' (it names the results folder)"
        )
    gpu = None
    if doc.get("gpu") is None:
        problems.add(f"gpu: missing; allowed: {', '.join(gpus.names())}")
    else:
        try:
            gpu = gpus.resolve(str(doc["gpu"])).name
        except UserError as e:
            problems.add(e.problems[0] if e.problems else str(e))
    doc["gpu"] = gpu or str(doc.get("gpu"))
    for section in ("defaults", "sweep"):
        if isinstance(doc.get(section), dict) and "gpu" in doc[section]:
            problems.add(
                f"{section}.gpu: a matrix targets one GPU; allowed: the top-level gpu (or the override gpu=NAME)"
            )
    for i, inc in enumerate(doc.get("include") or [] if isinstance(doc.get("include"), list) else []):
        if isinstance(inc, dict) and "gpu" in inc:
            problems.add(
                f"include[{i}].gpu: a matrix targets one GPU; allowed: the top-level gpu (or the override gpu=NAME)"
            )
    host_memory = _host_memory(doc, problems)
    rules = _rules(doc, problems)

    cells: dict[str, Cell] = {}
    job_notes: dict[str, tuple[str, ...]] = {}
    notes: dict[str, tuple[str, ...]] = {}
    for ref, raw, from_include in _raw_cells(doc, problems, path, job_notes):
        where = (ref, _describe(raw))
        spec, model_problems = None, []
        if not isinstance(raw.get("model"), str) or not raw["model"]:
            model_problems.append(
                f"model: {raw.get('model')!r} is not allowed; allowed: a catalog name "
                f"({', '.join(models.names())}), a hub id or a path to a config.json"
            )
        else:
            try:
                spec = _resolve_model(raw["model"], path)
                raw["model"] = spec.name
            except UserError as e:
                model_problems += e.problems
        if not from_include and any(_excluded(raw, rule) for rule in rules):
            continue
        for m in model_problems:
            problems.add(m, where)
        if "ds_config" in raw:
            raw["ds_config"] = _ds_path(raw["ds_config"], path)
        try:
            c = cellmod.normalize(raw)
        except UserError as e:
            found = [m for m in e.problems if not (model_problems and m.startswith("model:"))]
            for m in found + _despite(raw, e.problems, spec is not None and gpu is not None):
                problems.add(m, where)
            continue
        if spec is None or gpu is None:
            continue
        found = validate_cell(c)
        for m in found:
            problems.add(m, where)
        if found:
            continue
        if job_notes.get(str(ref)):
            notes[c.cell_id] = job_notes[str(ref)]
        first = cells.setdefault(c.cell_id, c)
        if first is not c and c.label and not first.label:
            cells[c.cell_id] = dataclasses.replace(first, label=c.label)  # an include names a sweep cell
    lines = problems.lines()
    if lines:
        raise UserError(*lines)
    if not cells:
        raise UserError(f"matrix: {str(path)!r} expands to no cells (empty sweep, or everything excluded)")
    return Matrix(
        name=str(name),
        gpu=gpu,  # type: ignore[arg-type]
        path=str(path),
        cells=tuple(cells.values()),
        notes=notes,
        host_memory=host_memory,
    )


def _host_memory(doc: dict[str, Any], problems: _Problems) -> int | None:
    """The top-level ``host_memory`` in bytes (parsed as ``gpu_memory`` is); one stated
    anywhere else is reported and dropped, so that no cell reads it as a field."""
    sections = [(s, doc.get(s)) for s in ("defaults", "sweep")]
    include = doc.get("include")
    sections += [(f"include[{i}]", inc) for i, inc in enumerate(include if isinstance(include, list) else [])]
    for where, section in sections:
        if isinstance(section, dict) and "host_memory" in section:
            section.pop("host_memory")
            problems.add(
                f"{where}.host_memory: a matrix states one host for all its cells; allowed: the top-level "
                "host_memory (or bench plan --host-memory SIZE)"
            )
    if doc.get("host_memory") is None:
        return None
    raw = {"host_memory": doc["host_memory"]}
    found: list[str] = []
    cellmod._size(raw, "host_memory", found, "")
    for m in found:
        problems.add(m)
    return None if found else int(raw["host_memory"])
