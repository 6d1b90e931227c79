"""Limits on what bench accepts, said once, and the short form of a bad value.

Every input that reaches bench (a matrix, an override, a model or DeepSpeed
config, a record) is checked against these numbers at the boundary, so that a
hostile or broken file ends in one ``error:`` line instead of a traceback, a
hang or gigabytes of memory. The numbers are far above anything real:

- files: a matrix, config or record is read only up to ``MAX_FILE_BYTES``;
- structure: ``MAX_DEPTH`` levels of nesting, ``MAX_NODES`` values after YAML
  aliases are expanded (a 600-byte alias bomb expands to billions);
- cell fields: ``CELL_MAX`` per integer field (a batch of 2**20, a context of
  2**22 tokens; 2**15 generated tokens: the predictor replays every decode
  step, about 5 ms each, and every micro-step of 2**12 accumulated ones);
- model dimensions: ``MODEL_MAX`` per config key ("too large to trace"): the
  predictor builds every layer on the meta device, so a million layers would
  take minutes and gigabytes (the largest published models have ~130 layers).
"""

from __future__ import annotations

import reprlib
from typing import Any

MAX_FILE_BYTES = 4 * 2**20
"""Largest matrix, config or record file read (4 MiB)."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and lists in any input document."""
MAX_NODES = 100_000
"""Most values in one document, counting each YAML alias as the copy it expands to."""
MAX_CELLS = 100_000
"""Most cells one sweep may expand to (before excludes): a few aliased lists multiply fast."""
MAX_LINE_CHARS = 2000
"""Longest ``error:`` line; longer ones are shortened in the middle."""

CELL_MAX = {
    "batch": 2**20,
    "seq": 2**22,
    "target_seq": 2**22,
    "new_tokens": 2**15,
    "grad_accum": 2**12,
    "gpus": 4096,
    "lora_r": 2**16,
    "lora_alpha": 2**20,
    "steps": 10**6,
    "warmup": 10**6,
    "num_labels": 2**20,
}
"""Largest value of each integer cell field."""

MODEL_MAX = {
    "layers": 1024,
    "width": 2**17,
    "heads": 2**12,
    "intermediate": 2**20,
    "vocab": 2**23,
    "positions": 2**24,
    "experts": 1024,
}
"""Largest model dimension of each kind bench traces (see ``bench.configcheck``)."""

DS_MAX_ELEMENTS = 10**15
"""Largest DeepSpeed bucket size or threshold, in elements."""

_SHORT = reprlib.Repr()
_SHORT.maxstring = 80
_SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6
_SHORT.maxlevel = 3
_SHORT.maxlong = 40


def short(value: Any) -> str:
    """``repr(value)`` cut to a readable length (strings to 80 characters, 6 items
    per container, 3 levels), for messages that quote a bad value."""
    try:
        return _SHORT.repr(value)
    except Exception:  # noqa: BLE001 - a value that cannot be shown still gets a message
        return f"<{type(value).__name__}>"


def clip_line(line: str, most: int = MAX_LINE_CHARS) -> str:
    """``line`` shortened in the middle to ``most`` characters (keeps what is allowed, at the end)."""
    line = " ".join(line.splitlines())
    if len(line) <= most:
        return line
    keep = (most - 3) // 2
    return f"{line[:keep]} … {line[-keep:]}"


def too_large(where: str, value: Any, limit: int) -> str:
    """The one message for a dimension bench refuses to trace."""
    return f"{where}: {short(value)} is too large to trace; the limit is {limit:,}"
