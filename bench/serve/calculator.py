"""The warm predictor behind ``bench serve``: cell fields in, ``bench plan --json`` entries out.

``Calculator.predict(fields)`` reads a JSON object of cell fields as a matrix
cell reads them (``model``, ``method``, ``precision``, ``batch``, ``seq``,
``grad_accum``, ``grad_ckpt``, ``gpu``, ``gpus``, ... and ``from``: a job
file whose fields the object's own keys override) and returns what
``bench plan --json`` prints for that cell (``bench.predict.cli.plan_entries``,
the very function the CLI calls, stamped with the
predictor's version as ``bench plan`` stamps it). ``Calculator.cards(fields)`` returns one
row per catalog card as ``bench predict --gpu all --tokens N --json`` does
(``bench.predict.ranking.rows``).

The tracer patches global torch state while it runs, so predictions run one at
a time under one lock; an answer is cached by cell id, label, notes and
options, and a cached answer is returned without waiting for the lock. A bad
field is a ``UserError`` whose lines ``field_errors`` turns into
``{"key", "message"}`` pairs for the form, the key being the field the line
names, as the CLI prints it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench import cell as cellmod, gpus, matrix, models, userfile
from bench.errors import UserError
from bench.limits import short
from bench.serve.uploads import Uploads

CACHE_ENTRIES = 4096
"""Answers kept (a few kB each)."""
_TRIPLE = ("tuning", "strategy", "offload")
_KEY = re.compile(r"(?:unknown key '([^']*)')|(?:-*([a-z_]+)(?: \+ [a-z_]+)?(?::|\b))")


@dataclass(frozen=True)
class Options:
    """What a request asks beside the cell: ``tokens`` (the run's length: time and cost), ``max_batch``."""

    tokens: int | None = None
    max_batch: bool = False

    @classmethod
    def parse(cls, query: dict[str, str]) -> Options:
        """From a query string (``?tokens=10000000&max_batch=1``); a bad value is a ``UserError``."""
        tokens = query.get("tokens") or None
        value = None
        if tokens is not None:
            try:
                value = int(str(tokens).replace("_", "").replace(",", ""))
            except ValueError:
                value = 0
            if value <= 0:
                raise UserError(f"tokens: {short(tokens)} is not allowed; allowed: a positive token count")
        flag = str(query.get("max_batch", "")).lower()
        if flag not in ("", "0", "1", "true", "false"):
            raise UserError(f"max_batch: {short(flag)} is not allowed; allowed: 0, 1, true, false")
        return cls(tokens=value, max_batch=flag in ("1", "true"))


def key_of(message: str) -> str:
    """The cell field a one-line problem names (``batch: 0 is not allowed ...`` -> ``batch``), else ``""``."""
    hit = _KEY.match(message)
    if not hit:
        return ""
    return hit.group(1) if hit.group(1) is not None else hit.group(2)


def field_errors(err: UserError, uploads: Uploads | None = None, key: str | None = None) -> list[dict[str, str]]:
    """One ``{"key", "message"}`` per line of ``err`` (``key`` given: every line belongs to that field)."""
    out = []
    for line in err.problems or [str(err)]:
        text = uploads.readable(line) if uploads else line
        out.append({"key": key if key is not None else key_of(text), "message": text})
    return out


class FieldError(Exception):
    """A ``UserError`` whose lines are already paired with the form fields they belong to."""

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(e["message"] for e in errors))


class Calculator:
    """One warm predictor: every prediction of the server goes through one instance."""

    def __init__(self, uploads: Uploads | None = None):
        self.uploads = uploads or Uploads()
        self._lock = threading.Lock()
        self._answers: OrderedDict[tuple, Any] = OrderedDict()
        self._answers_lock = threading.Lock()
        self._warm: set[str] = set()
        self._busy: tuple[str, float] | None = None

    # --- cells -------------------------------------------------------------------------

    def _path_field(self, raw: dict, key: str) -> None:
        """A field that names a file must name an upload: the server reads no other path."""
        value = raw.get(key)
        if value is None or self.uploads.is_upload(value):
            return
        if not isinstance(value, str):
            return  # normalize names the type error
        if key == "model" and models.is_catalogued(value):
            return
        looks_like_path = value.endswith((".json", ".yaml", ".yml")) or value.startswith(("/", ".", "~"))
        try:
            on_disk = userfile.exists(userfile.expand(value))
        except (OSError, ValueError):
            on_disk = False
        if key != "model" or looks_like_path or on_disk:
            raise FieldError(
                [
                    {
                        "key": key,
                        "message": f"{key}: {short(value)} is no file this server holds; allowed: "
                        + ("a catalog name, a hub id or an uploaded config.json" if key == "model" else "an upload"),
                    }
                ]
            )

    def cell_of(self, fields: Any) -> tuple[cellmod.Cell, tuple[str, ...]]:
        """(cell, notes of its job file) from a JSON object of cell fields, checked as the CLI checks them."""
        if not isinstance(fields, dict):
            raise FieldError([{"key": "", "message": f"cell: {short(fields)} is not allowed; allowed: a JSON object"}])
        raw = dict(fields)
        notes: tuple[str, ...] = ()
        if raw.get("from") is not None:
            self._path_field(raw, "from")
            source = raw.pop("from")
            from bench import jobfile

            try:
                job = jobfile.load(Path(source))
            except UserError as e:
                raise FieldError(field_errors(e, self.uploads, "from")) from None
            merged = dict(job.fields)
            method = raw.get("method")
            if method in cellmod.TUNINGS:  # lora over the file's ZeRO setup, as `bench predict --from F --method lora`
                merged["tuning"] = raw.pop("method")
            elif method is not None:
                for k in _TRIPLE:
                    merged.pop(k, None)
            raw = {**merged, **raw}
            notes = tuple(self.uploads.readable(n) for n in job.notes)
        else:
            raw.pop("from", None)
        for key in ("model", "ds_config"):
            self._path_field(raw, key)
        problems: list[str] = []
        if isinstance(raw.get("model"), str) and raw["model"].strip():
            try:
                raw["model"] = models.resolve(raw["model"].strip()).name
            except UserError as e:
                problems += e.problems
        elif "model" not in raw or not raw.get("model"):
            problems.append("model: missing; allowed: a catalog name, a hub id or an uploaded config.json")
        if isinstance(raw.get("gpu"), str) and raw["gpu"].strip():
            try:
                raw["gpu"] = gpus.resolve(raw["gpu"]).name
            except UserError as e:
                problems += e.problems
        elif not raw.get("gpu"):
            problems.append(f"gpu: missing; allowed: {', '.join(gpus.names())}")
        if problems:
            try:
                cellmod.normalize({**raw, "model": "gpt2", "gpu": "h200"})
            except UserError as e:  # the other fields' problems too: every problem at once
                problems += [m for m in e.problems if not m.startswith(("model:", "gpu:"))]
            raise FieldError(field_errors(UserError(*problems), self.uploads))
        try:
            c = cellmod.normalize(raw)
            found = matrix.validate_cell(c)
        except UserError as e:
            raise FieldError(field_errors(e, self.uploads)) from None
        if found:
            raise FieldError(field_errors(UserError(*found), self.uploads))
        return c, notes

    # --- answers -----------------------------------------------------------------------

    def _cached(self, key: tuple, what: str, model: str, make):
        with self._answers_lock:
            if key in self._answers:
                self._answers.move_to_end(key)
                return self._answers[key]
        with self._lock:
            with self._answers_lock:  # answered while this request waited for the lock
                if key in self._answers:
                    return self._answers[key]
            self._busy = (f"{'predicting' if model in self._warm else 'tracing'} {what}", time.monotonic())
            try:
                answer = make()
            finally:
                self._busy = None
            self._warm.add(model)
        frozen = json.loads(json.dumps(answer))  # a private copy: callers may not change the cache
        with self._answers_lock:
            self._answers[key] = frozen
            while len(self._answers) > CACHE_ENTRIES:
                self._answers.popitem(last=False)
        return frozen

    def predict(self, fields: Any, options: Options = Options()) -> dict:
        """The ``bench plan --json`` entry of one cell (``error`` set where the predictor refuses it)."""
        from bench.predict import cost, version
        from bench.predict.cli import plan_entries

        c, notes = self.cell_of(fields)
        key = ("predict", c.cell_id, c.label, c.model, notes, options)
        one = SimpleNamespace(cells=[c], notes={c.cell_id: notes} if notes else {})
        entry = self._cached(
            key,
            f"{cellmod.model_label(c.model)} ({c.method}, {c.precision}) on {c.gpu}",
            c.model,
            lambda: version.stamp(plan_entries(one, options.max_batch, options.tokens, cost.prices(), None))[0],
        )
        return json.loads(json.dumps(entry))

    def cards(self, fields: Any, options: Options = Options()) -> list[dict]:
        """Every card, as ``bench predict --gpu all --tokens N --json [--max-batch]`` (no tokens: by memory).

        The largest micro-batch is searched card by card, each search a turn of its own at the
        lock, so that a prediction asked meanwhile waits for one card's search, not all of them.
        """
        from bench.predict import cost, max_batch, ranking

        c, _ = self.cell_of(fields)
        rank = "cost" if options.tokens is not None else "memory"

        def make() -> list[dict]:
            rows = ranking.rows(c, options.tokens, cost.prices(), None, False)
            return sorted(rows, key=ranking._order(rank))

        label = cellmod.model_label(c.model)
        key = ("cards", c.cell_id, c.model, options.tokens)
        rows = json.loads(json.dumps(self._cached(key, f"{label} on every card", c.model, make)))
        if options.max_batch:
            for row in rows:
                if "error" in row:
                    continue
                card = cellmod.replace(c, gpu=row["gpu"])
                row["max_batch"] = self._cached(
                    ("max_batch", card.cell_id, card.model),
                    f"the largest batch of {label} on {row['gpu']}",
                    c.model,
                    lambda card=card: max_batch(card),
                )
        return rows

    def status(self) -> dict:
        """What the predictor is doing now: ``busy`` (``tracing``/``predicting`` what, for how long) or None."""
        busy = self._busy
        return {
            "busy": None if busy is None else {"what": busy[0], "seconds": round(time.monotonic() - busy[1], 1)},
            "warm_models": sorted(self.uploads.name_of(m) for m in self._warm),
            "cached_answers": len(self._answers),
        }
