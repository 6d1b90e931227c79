"""The shape of a result record, as the report and compare verbs read it.

A record is plain JSON that anyone can edit (or break), so the readers check
its fields before they use one: a record without ``cell``, with ``measured``
a list, ``tokens_per_second: "fast"`` or a status bench never writes would
otherwise end in a traceback deep in a table or be shown as if it were
fine. ``problems(record)`` returns one line per problem; the report and
compare verbs leave such a record out with a one-line warning.
``bench.store.load_record`` has already refused files that are no record at
all (no ``cell_id`` string, another schema version).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.limits import short
from bench.status import ALL as STATUSES

_TEXT_FIELDS = ("slug", "label", "matrix", "error", "started_at", "finished_at")
_SECTIONS = ("environment", "measured", "predicted")
_CELL_INTS = ("batch", "seq", "gpus", "grad_accum", "new_tokens", "steps", "warmup", "lora_r", "lora_alpha")
_CELL_TEXTS = ("task", "tuning", "strategy", "offload", "precision", "optimizer", "quant")
_CELL_OPTIONAL_TEXTS = ("attn", "ds_config", "label")
_CELL_FLAGS = ("grad_ckpt", "use_cache")
_NUMBER_SUFFIXES = (
    "_bytes",
    "_seconds",
    "_per_second",
    "_params",
    "_parameters",
    "_per_step",
    "_tokens",
    "_samples",
    "_retries",
    "_fraction",
    "_error",
)
_NUMBER_KEYS = frozenset({"mfu", "ooms", "world_size", "tflops_achieved", "final_loss", "memory_samples"})


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number_object(v: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and (x is None or _is_number(x)) for k, x in v.items())


def _numeric_key(key: str) -> bool:
    return key in _NUMBER_KEYS or key.endswith(_NUMBER_SUFFIXES)


def _section(name: str, section: Mapping[str, Any]) -> list[str]:
    out = []
    for key, v in section.items():
        where = f"{name}.{key}"
        if not isinstance(key, str):
            out.append(f"{name}: key {short(key)} is not allowed; allowed: text keys")
        elif isinstance(v, list) and key.endswith("_bytes_per_rank") and any(isinstance(x, dict) for x in v):
            # one breakdown in bytes per rank (``resident_bytes_per_rank``)
            if not all(isinstance(x, dict) and _number_object(x) for x in v):
                out.append(f"{where}: {short(v)} is not allowed; allowed: a list of objects of numbers")
        elif isinstance(v, list) and (key.endswith("_per_rank") or key.endswith("_seconds")):
            if not all(x is None or _is_number(x) for x in v):
                out.append(f"{where}: {short(v)} is not allowed; allowed: a list of numbers")
        elif isinstance(v, dict) and key.endswith("_bytes") and name != "environment":
            # a breakdown in bytes (``resident_bytes``: weights, gradients, optimizer states)
            if not _number_object(v):
                out.append(f"{where}: {short(v)} is not allowed; allowed: an object of numbers")
        elif _numeric_key(key) and v is not None and not _is_number(v):
            out.append(f"{where}: {short(v)} is not allowed; allowed: a number or null")
        elif name == "environment" and isinstance(v, (list, dict)) and key != "provenance":
            out.append(f"{where}: {short(v)} is not allowed; allowed: text, a number, true/false or null")
    if name == "predicted":
        if section.get("fits") is not None and not isinstance(section["fits"], bool):
            out.append(f"predicted.fits: {short(section['fits'])} is not allowed; allowed: true, false or null")
        breakdown = section.get("breakdown")
        if breakdown is not None and (
            not isinstance(breakdown, dict) or not all(_is_number(x) for x in breakdown.values())
        ):
            out.append(f"predicted.breakdown: {short(breakdown)} is not allowed; allowed: an object of numbers")
        for key in ("gpu",):
            if section.get(key) is not None and not isinstance(section[key], str):
                out.append(f"predicted.{key}: {short(section[key])} is not allowed; allowed: text")
    if name == "environment" and section.get("provenance") is not None and not isinstance(section["provenance"], dict):
        out.append(f"environment.provenance: {short(section['provenance'])} is not allowed; allowed: an object")
    return out


def _cell(cell: Any) -> list[str]:
    if not isinstance(cell, dict):
        return [f"cell: {short(cell)} is not allowed; allowed: the normalized cell (an object)"]
    out = []
    for key in ("model", "gpu"):
        if not isinstance(cell.get(key), str) or not cell.get(key):
            out.append(f"cell.{key}: {short(cell.get(key))} is not allowed; allowed: a non-empty name")
    for key in _CELL_INTS:
        if key in cell and not (isinstance(cell[key], int) and not isinstance(cell[key], bool)):
            out.append(f"cell.{key}: {short(cell[key])} is not allowed; allowed: an integer")
    if cell.get("target_seq") is not None and not (
        isinstance(cell["target_seq"], int) and not isinstance(cell["target_seq"], bool)
    ):
        out.append(f"cell.target_seq: {short(cell['target_seq'])} is not allowed; allowed: an integer or null")
    for key in _CELL_TEXTS:
        if key in cell and not isinstance(cell[key], str):
            out.append(f"cell.{key}: {short(cell[key])} is not allowed; allowed: text")
    for key in _CELL_OPTIONAL_TEXTS:
        if cell.get(key) is not None and not isinstance(cell[key], str):
            out.append(f"cell.{key}: {short(cell[key])} is not allowed; allowed: text or null")
    for key in _CELL_FLAGS:
        if key in cell and not isinstance(cell[key], bool):
            out.append(f"cell.{key}: {short(cell[key])} is not allowed; allowed: true, false")
    if "lora_dropout" in cell and not _is_number(cell["lora_dropout"]):
        out.append(f"cell.lora_dropout: {short(cell['lora_dropout'])} is not allowed; allowed: a number")
    targets = cell.get("lora_targets")
    if targets is not None and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        out.append(f"cell.lora_targets: {short(targets)} is not allowed; allowed: a list of names or null")
    return out


def problems(record: Mapping[str, Any]) -> list[str]:
    """Every field of ``record`` a reader cannot use, one line each (empty: the record is sound)."""
    out = []
    if not isinstance(record.get("cell_id"), str) or not record.get("cell_id"):
        out.append(f"cell_id: {short(record.get('cell_id'))} is not allowed; allowed: the cell's id (text)")
    if record.get("status") not in STATUSES:
        out.append(f"status: {short(record.get('status'))} is not allowed; allowed: {', '.join(STATUSES)}")
    out += _cell(record.get("cell"))
    for key in _TEXT_FIELDS:
        if record.get(key) is not None and not isinstance(record[key], str):
            out.append(f"{key}: {short(record[key])} is not allowed; allowed: text or null")
    if record.get("prediction_error") is not None and not _is_number(record["prediction_error"]):
        out.append(f"prediction_error: {short(record['prediction_error'])} is not allowed; allowed: a number or null")
    for name in _SECTIONS:
        section = record.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            out.append(f"{name}: {short(section)} is not allowed; allowed: an object or null")
        else:
            out += _section(name, section)
    return out
