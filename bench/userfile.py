"""Reading a file bench did not write: bounded size, UTF-8, and JSON with limits.

A user's ``config.json``, a DeepSpeed config or a result record can be
anything: not text, gigabytes long, nested 100,000 levels deep (Python's JSON
parser then raises ``RecursionError``), or holding ``NaN`` and ``Infinity``
(which Python's ``json`` accepts, but JSON does not). ``read_text`` and
``load_json`` turn each of these into one ``UserError`` line that names the
file; the limits are in ``bench.limits``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.limits import MAX_DEPTH, MAX_FILE_BYTES, short


def read_text(path: Path | str, what: str) -> str:
    """The UTF-8 text of a file of at most ``MAX_FILE_BYTES``; ``what`` names it (``matrix``)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise UserError(f"{what}: {short(str(path))} cannot be read ({e.strerror or e})") from None
    except ValueError:  # a NUL byte in the name
        raise UserError(f"{what}: {short(str(path))} is not a usable file name (it holds a NUL byte)") from None
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"{what}: {str(path)!r} is larger than {MAX_FILE_BYTES // 2**20} MiB; allowed: a smaller file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{what}: {str(path)!r} is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r}); "
            f"allowed: a UTF-8 file"
        ) from None


def expand(path: str) -> Path:
    """``path`` with ``~`` expanded where it can be (``~nobody`` stays as written)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # an unknown user's home
        return Path(path)


def exists(path: Path | str, kind: str = "any") -> bool:
    """Whether ``path`` exists (``kind``: ``any``, ``file`` or ``dir``); ``False`` for a name
    no filesystem can hold (too long, a NUL byte) instead of an exception."""
    p = Path(path)
    try:
        return p.is_file() if kind == "file" else p.is_dir() if kind == "dir" else p.exists()
    except (OSError, ValueError):
        return False


def depth(value: Any) -> int:
    """Levels of nesting of a parsed JSON/YAML value (a scalar is 0), counted without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, level = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        stack += [(c, level + 1) for c in children]
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_json(text: str, what: str, finite: bool = True) -> Any:
    """Parse JSON text; ``finite`` refuses ``NaN``, ``Infinity`` and ``-Infinity``.

    Each message starts with ``what`` (``ds_config 'zero2.json'``).
    """
    try:
        value = json.loads(text, parse_constant=_no_constant if finite else None)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except ValueError as e:  # a refused constant, or an integer of thousands of digits
        raise UserError(f"{what}: {str(e)[:200]}; allowed: finite numbers") from None
    except RecursionError:
        raise UserError(f"{what}: nested too deep to read; allowed: at most {MAX_DEPTH} levels") from None
    if depth(value) > MAX_DEPTH:
        raise UserError(f"{what}: nested more than {MAX_DEPTH} levels deep; allowed: at most {MAX_DEPTH} levels")
    return value


def load_json(path: Path | str, what: str, finite: bool = True) -> Any:
    """Read and parse a JSON file with every limit above; messages start ``what 'path'``."""
    text = read_text(path, what)
    return loads_json(text, f"{what} {str(path)!r}", finite)
