"""The progress bar of a long command: ``tqdm`` on stderr, and only when stderr is a terminal.

``bench run`` (cells measured) and ``bench plan`` (cells predicted) show one; a
pipe, a log file or a CI job gets no bar and no carriage returns, so their
stdout and stderr stay what the command prints line by line.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from tqdm import tqdm


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def size(stream: TextIO) -> tuple[int, int]:
    """The terminal's (columns, rows), 80 x 24 where it reports none: a fresh pseudo-terminal
    says 0 x 0, with which tqdm would draw nothing at all."""
    try:
        shape = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return 80, 24
    return shape.columns or 80, shape.lines or 24


def bar(total: int, desc: str, file: TextIO | None = None) -> tqdm:
    """A bar counting ``total`` cells on ``file`` (stderr), disabled unless that is a terminal;
    it removes itself when closed (``leave=False``), leaving the terminal as the lines left it."""
    file = file or sys.stderr
    tty = is_terminal(file)
    columns, rows = size(file) if tty else (None, None)
    return tqdm(
        total=total,
        desc=desc,
        unit="cell",
        file=file,
        disable=not tty,
        leave=False,
        ncols=columns,
        nrows=rows,
    )
