"""A training job written for another tool, read as that tool reads it: ``bench predict --from FILE``.

``load(path)`` recognizes the file by its keys and hands it to its reader in
``bench.readers``: a DeepSpeed JSON, HF ``TrainingArguments`` (JSON or YAML of
its fields, TRL's ``SFTConfig`` spellings included), an axolotl YAML, a
LLaMA-Factory YAML or an accelerate config (``accelerate config``'s YAML). The result is a ``Job``: the cell fields the file states
and one note per key that changes memory or time but that bench does not
model (packing, Liger kernels, ``torch_compile``, NEFTune, ...), so nothing the
file asks for is silently dropped. Keys known not to move memory (learning
rate, logging, saving, data paths ...) are read and ignored; any other key is
named in a note as not read.

A value bench cannot represent at all (an optimizer it has no model of,
ZeRO stage 0, FSDP's ``shard_grad_op``) is a ``UserError`` naming the key, the
value and what is allowed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import UserError


@dataclass(frozen=True)
class Job:
    """What a job file says, in cell terms."""

    kind: str
    """``deepspeed``, ``trainer``, ``axolotl``, ``llamafactory`` or ``accelerate``."""
    path: str
    fields: dict[str, Any] = field(hash=False)
    """Raw cell fields (``bench.cell.normalize`` input); ``method`` may stand for tuning/strategy/offload."""
    notes: tuple[str, ...] = ()
    """One line per memory- or time-relevant key that the prediction does not model."""


class Reading:
    """Accumulates one file's fields, notes and problems while a reader walks its keys."""

    def __init__(self, kind: str, path: Path, doc: dict[str, Any]):
        self.kind, self.path, self.doc = kind, path, doc
        self.fields: dict[str, Any] = {}
        self.notes: list[str] = []
        self.problems: list[str] = []
        self.seen: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.doc and self.doc[key] is not None

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        value = self.doc.get(key, default)
        return default if value is None else value

    def take(self, key: str, target: str, convert: Callable[[Any], Any] = lambda v: v) -> None:
        """Set cell field ``target`` from ``key`` when the file has it."""
        self.seen.add(key)
        if self.has(key):
            try:
                self.fields[target] = convert(self.doc[key])
            except UserError as e:
                self.problems += e.problems
            except (TypeError, ValueError):
                self.problems.append(f"{self.where}{key}: {self.doc[key]!r} is not allowed")

    def unmodelled(self, table: dict[str, str]) -> None:
        """A note for each key of ``table`` (key -> what it changes) the file turns on."""
        for key, effect in table.items():
            value = self.doc.get(key)
            if key not in self.seen and value not in (None, False, "", [], {}, 0, "none", "None", "no", "disabled"):
                shown = repr(value) if len(repr(value)) <= 40 else f"{type(value).__name__} of {len(value)}"
                self.notes.append(f"{key}: {shown} is not modelled ({effect})")
            self.seen.add(key)

    def ignore(self, keys) -> None:
        self.seen.update(keys)

    def rest(self) -> None:
        """A note naming every key no table of this reader knows."""
        left = sorted(k for k in self.doc if k not in self.seen)
        if left:
            self.notes.append(f"keys bench does not read (assumed not to change memory): {', '.join(map(str, left))}")

    @property
    def where(self) -> str:
        return f"{self.kind} {self.path.name}: "

    def job(self) -> Job:
        if self.problems:
            raise UserError(*self.problems)
        return Job(kind=self.kind, path=str(self.path), fields=dict(self.fields), notes=tuple(self.notes))


def read_document(path: Path) -> dict[str, Any]:
    """The mapping in a JSON or YAML file; a ``UserError`` when it is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"from: {str(path)!r} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise UserError(
            f"from: {str(path)!r} is not valid {'JSON' if path.suffix == '.json' else 'YAML'} "
            f"({str(e).splitlines()[0]})"
        ) from None
    if not isinstance(doc, dict):
        raise UserError(f"from: {str(path)!r} must hold a mapping of settings")
    return doc


def kind_of(doc: dict[str, Any]) -> str | None:
    """Which tool wrote ``doc``, from the keys only that tool uses."""
    if "zero_optimization" in doc or "train_micro_batch_size_per_gpu" in doc or "train_batch_size" in doc:
        return "deepspeed"
    accelerate = {"compute_environment", "num_processes", "num_machines", "mixed_precision", "use_cpu"}
    if "distributed_type" in doc and (accelerate | {"deepspeed_config", "fsdp_config"}) & set(doc):
        return "accelerate"
    if "base_model" in doc and ({"micro_batch_size", "sequence_len", "adapter", "datasets"} & set(doc)):
        return "axolotl"
    if "model_name_or_path" in doc and ({"stage", "finetuning_type", "cutoff_len", "template"} & set(doc)):
        return "llamafactory"
    if {"per_device_train_batch_size", "output_dir", "gradient_accumulation_steps", "optim"} & set(doc):
        return "trainer"
    return None


def load(path: str | Path) -> Job:
    """Read a job file of any supported tool."""
    from bench.readers import accelerate, axolotl, deepspeed, llamafactory, trainer

    path = Path(path).expanduser()
    doc = read_document(path)
    kind = kind_of(doc)
    readers = {
        "deepspeed": deepspeed.read,
        "trainer": trainer.read,
        "axolotl": axolotl.read,
        "llamafactory": llamafactory.read,
        "accelerate": accelerate.read,
    }
    if kind is None:
        raise UserError(
            f"from: {str(path)!r} is none of the files bench reads; allowed: a DeepSpeed JSON "
            f"(zero_optimization), HF TrainingArguments (per_device_train_batch_size ...), an axolotl "
            f"YAML (base_model, micro_batch_size), a LLaMA-Factory YAML (model_name_or_path, stage) or an "
            f"accelerate config (distributed_type, num_processes)"
        )
    return readers[kind](path, doc)
