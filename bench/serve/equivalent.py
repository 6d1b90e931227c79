"""The command line and the matrix of a cell: what the page offers to copy.

``command(cell)`` is the ``bench predict`` call that predicts the same cell
(same cell id, same numbers), ``matrix_yaml(cell)`` a one-cell matrix for
``bench plan`` / ``bench run``. Both name only the fields that differ from a
cell's defaults, under the flags ``bench predict`` has (read from its parser,
so a renamed flag cannot go stale here); a field with no flag is said in a
trailing comment. A file the user uploaded is named as the user named it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import shlex
from collections.abc import Callable

import yaml

from bench import cell as cellmod

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(cellmod.Cell) if f.default is not dataclasses.MISSING}
_NEVER = {"model", "gpu", "tuning", "strategy", "offload", "label", "steps", "warmup"}
"""Fields that are no predict flag of their own: the method stands for the triple; steps do not change a prediction."""


@functools.cache
def _predict_flags() -> dict[str, str]:
    """Cell field -> ``bench predict`` option string, from the verb's own parser."""
    from bench import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    predict = sub.choices["predict"]
    return {a.dest: a.option_strings[0] for a in predict._actions if a.option_strings and a.dest != "help"}


def changed(c: cellmod.Cell) -> dict:
    """The cell's fields that differ from the defaults (the method as one shorthand)."""
    d = c.to_dict()
    out: dict = {"model": d["model"], "method": c.method}
    for k, v in d.items():
        if k in _NEVER or v == _DEFAULTS.get(k):
            continue
        out[k] = v
    return out


def command(c: cellmod.Cell, tokens: int | None = None, name_of: Callable[[str], str] = str) -> str:
    """``bench predict ... --json`` for cell ``c`` (``--tokens`` when given)."""
    flags = _predict_flags()
    args = ["bench", "predict", "--model", name_of(c.model), "--method", c.method]
    missing = []
    for k, v in changed(c).items():
        if k in ("model", "method"):
            continue
        flag = flags.get(k)
        if flag is None:
            missing.append(f"{k}={v}")
        elif v is True and k == "grad_ckpt":
            args.append(flag)
        elif k == "zero_init":
            args.append("--zero-init" if v else "--no-zero-init")
        else:
            args += [flag, name_of(v) if isinstance(v, str) else str(v)]
    args += ["--gpu", c.gpu]
    if tokens is not None:
        args += ["--tokens", str(tokens)]
    line = " ".join(shlex.quote(a) for a in args) + " --json"
    if missing:
        line += f"  # no predict flag for {', '.join(missing)}: use the matrix"
    return line


def matrix_yaml(c: cellmod.Cell, name_of: Callable[[str], str] = str) -> str:
    """A one-cell matrix (``bench plan FILE``, ``bench run FILE``) of cell ``c``."""
    fields = {k: (name_of(v) if k in ("model", "ds_config") else v) for k, v in changed(c).items()}
    if isinstance(fields.get("lora_targets"), tuple):
        fields["lora_targets"] = list(fields["lora_targets"])
    doc = {"name": "calculator", "gpu": c.gpu, "include": [fields]}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
