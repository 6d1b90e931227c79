"""Help text of the command line, generated from where each value is defined.

A flag that sets a cell field (``--batch``, ``--precision`` ...) takes its
description from the attribute docstring under the field in ``bench/cell.py``
(read from the source with ``ast``), its allowed values from the tuple that
``cell.normalize`` validates against (``cell.CHOICES``, ``cell.INT_MINIMUM``
with ``limits.CELL_MAX``, ``cell.METHODS``, the GPU catalog) and its default
from the dataclass. A new field therefore gets its flag's help without an edit
here, and help and validation cannot disagree.

``Formatter`` makes every option's help end in ``[default: ...]`` (or
``[required]``), ``plain`` turns a docstring into terminal text (no RST
markup), and ``Parser`` reports a bad flag as one ``error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import re
import sys
import typing
from typing import Any, NoReturn

from bench import cell as cellmod, optimizer_names
from bench.limits import CELL_MAX

_BRACKET = re.compile(r"\s*\[([^\[\]]+)\]\.?\s*$")


def plain(text: str | None) -> str:
    """A docstring as terminal text: ````x```` and ``:role:`x``` become ``x``."""
    if not text:
        return ""
    text = re.sub(r":[a-z]+:`([^`]+)`", r"\1", inspect.cleandoc(text))
    return re.sub(r"``(.+?)``", r"\1", text, flags=re.S).replace("`", "")


def one_line(text: str) -> str:
    """A doc as one line of help: plain, whitespace folded."""
    return " ".join(plain(text).split())


@functools.cache
def field_docs() -> dict[str, str]:
    """Each ``Cell`` field's attribute docstring (the string right under it), as plain text."""
    tree = ast.parse(inspect.getsource(cellmod))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Cell").body
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = one_line(after.value.value)
    return docs


def _field(name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cellmod.Cell) if f.name == name)


def _kind(name: str) -> type:
    """The field's value type (``int`` for ``int | None``), from the dataclass annotations."""
    hint = typing.get_type_hints(cellmod.Cell)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = typing.get_origin(hint)
    if base is tuple or (args and typing.get_origin(args[0]) is tuple):
        return tuple
    return args[0] if args and base is not tuple else hint


def show(value: Any) -> str:
    """A default as the help prints it: booleans as on/off, an empty value as none."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value in ("", [], ()):
        return "none"
    return str(value)


def split_default(name: str) -> tuple[str, str | None]:
    """(the field's doc without a trailing ``[...]``, the bracket's text or None)."""
    doc = field_docs().get(name, "")
    m = _BRACKET.search(doc)
    if m is None:
        return doc, None
    return doc[: m.start()].rstrip() + ("." if not doc[: m.start()].rstrip().endswith(".") else ""), m.group(1)


def default_text(name: str) -> str:
    """The field's default in words: the dataclass default, or the doc's ``[...]`` where that is None."""
    f = _field(name)
    if f.default is dataclasses.MISSING:
        return "required"
    _, bracket = split_default(name)
    if f.default is None:
        return bracket or "none"
    return show(f.default)


def gpu_names() -> str:
    from bench import gpus

    return ", ".join(gpus.names())


def allowed_text(name: str) -> str:
    """What a field accepts, from the same tuples and limits ``cell.normalize`` checks."""
    if name == "optimizer":
        hf = ", ".join(n for n in optimizer_names.HF_NAMES if n not in cellmod.OPTIMIZERS)
        return f"{', '.join(cellmod.OPTIMIZERS)} (or the HF Trainer's optim names {hf})"
    if name in cellmod.CHOICES:
        return ", ".join(cellmod.CHOICES[name])
    if name == "gpu":
        return f"{gpu_names()} (or a common spelling: 4090, 'RTX 4090', a6000; see bench gpus)"
    if name == "model":
        return "a name of bench models, a Hugging Face id (org/name) or a config.json path"
    if name in cellmod.INT_MINIMUM:
        most = CELL_MAX.get(name)
        low = cellmod.INT_MINIMUM[name]
        return f"an integer from {low} to {most:,}" if most else f"an integer >= {low}"
    kind = _kind(name)
    if kind is bool:
        if _field(name).default is False:
            return f"{flag(name)} turns it on (true in a matrix)"
        return f"{flag(name)} (true in a matrix) or --no-{flag(name)[2:]} (false)"
    if name == "gpu_memory":
        return "a size such as 10GiB, or a byte count"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if name == "lora_targets":
        return "comma-separated module names (q_proj,v_proj), or all-linear (every linear layer but the head)"
    if kind is tuple:
        return "comma-separated names"
    return "a path" if name.endswith("config") else "text"


def field_help(name: str, default: str | None = None, more: str = "") -> str:
    """A cell field's help: its doc, ``Allowed: ...`` (and ``more``) and ``[default: ...]``
    (``default`` overrides the field's)."""
    doc, _ = split_default(name)
    default = default if default is not None else default_text(name)
    suffix = "[required]" if default == "required" else f"[default: {default}]"
    text = f"{doc} Allowed: {allowed_text(name)}{more}. {suffix}"
    return text.replace("%", "%%")


def method_help() -> str:
    return f"Shorthand for tuning, strategy and offload together. Allowed: {cellmod.methods_allowed()}. [default: full]"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _convert(kind: type):
    """A value of ``kind`` where the text is one, else the text itself, so that ``cell.normalize``
    reports a bad value as one line naming the field and what it allows."""

    def convert(text: str):
        if kind is tuple:
            return [t.strip() for t in text.split(",") if t.strip()]
        try:
            return kind(text)
        except ValueError:
            return text

    convert.__name__ = kind.__name__
    return convert


def add_cell_flags(parser: argparse.ArgumentParser, names, defaults: dict[str, str] | None = None) -> None:
    """One ``--field`` per cell field in ``names``, its argparse default None (so a caller can tell
    what the user gave); ``defaults`` replaces the default the help states."""
    for name in names:
        kind = _kind(name)
        text = field_help(name, (defaults or {}).get(name))
        metavar = name.upper()
        if kind is bool and _field(name).default is False:
            parser.add_argument(flag(name), dest=name, action="store_true", default=None, help=text)
        elif kind is bool:
            parser.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag(name), dest=name, type=_convert(kind), metavar=metavar, help=text)


def overrides_help() -> str:
    """The ``key=value`` positional of validate, plan and run: every cell field, by name."""
    return (
        "override a matrix key or a cell field (a [list] becomes a sweep axis): method, "
        + ", ".join(cellmod.FIELD_NAMES)
        + "; bench predict --help describes each field"
    )


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their paragraphs; every option's help ends in ``[default: ...]``.

    A help ending in ``[X]`` (the project's way of giving a default) reads ``[default: X]``;
    one with no default gets the action's own (a switch: off), or ``[required]``.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or text == argparse.SUPPRESS:
            return text
        if action.choices and not all(str(c) in text for c in action.choices):
            text += f". Allowed: {', '.join(map(str, action.choices))}."
        m = _BRACKET.search(text)
        if m is not None:
            if m.group(1).startswith(("default", "required")):
                return text
            return text[: m.start()] + f" [default: {m.group(1)}]"
        if action.required:
            return text + " [required]"
        if isinstance(action, argparse._VersionAction | argparse._HelpAction):
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return text + " [default: off]"
        if action.default is None:
            return text  # the help must say what happens without it (a test checks every option)
        return text + f" [default: {show(action.default)}]".replace("%", "%%")


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose mistakes are one ``error:`` line and exit 2, as ``UserError``'s are."""

    def error(self, message: str) -> NoReturn:
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:  # a misspelt verb or choice: the closest ones first
            choices = re.findall(r"'([^']*)'", m.group(2))
            close = difflib.get_close_matches(m.group(1), choices, n=2, cutoff=0.6)
            if close:
                message = message.replace(" (choose", f" (did you mean {' or '.join(close)}?; choose")
        print(f"error: {self.prog}: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def finish(parser: argparse.ArgumentParser) -> None:
    """Every sub-parser (a ``Parser``, as ``add_subparsers`` makes its parent's class) gets the
    formatter and a plain-text description."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.formatter_class = Formatter
                sub.description = plain(sub.description) or None
                finish(sub)


def unrecognized(parser: argparse.ArgumentParser, verb: str, extra: list[str]) -> NoReturn:
    """One ``error:`` line from the verb's parser for arguments it does not take, with the
    closest of its options for a misspelt one (``--bacth``: did you mean --batch?)."""
    sub: argparse.ArgumentParser = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices[verb]
    options = [o for a in sub._actions for o in a.option_strings]
    hints = []
    for word in extra:
        close = difflib.get_close_matches(word.split("=")[0], options, n=1, cutoff=0.6) if word.startswith("-") else []
        if close:
            hints.append(f"{word}: did you mean {close[0]}?")
    text = f"unrecognized arguments: {' '.join(extra)}" + (f" ({'; '.join(hints)})" if hints else "")
    sub.error(text)
