"""YAML as bench reads it: ``yaml.safe_load`` plus the limits a hostile file needs.

``yaml.safe_load`` never executes anything, but it still accepts what breaks
the code after it: a mapping that names a key twice (the last one silently
wins), nesting thousands deep (a ``RecursionError`` in the composer or later),
and aliases that expand a 600-byte file into billions of values (an "alias
bomb": every later copy, comparison or ``repr`` runs for minutes). ``load``
refuses all three with one ``UserError`` line, as well as text that is not
UTF-8 and integers too long to convert. The limits are in ``bench.limits``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench.errors import UserError
from bench.limits import MAX_DEPTH, MAX_NODES, short
from bench.userfile import read_text


class NotYaml(UserError):
    """The text is not YAML at all (a syntax error), as opposed to YAML past a limit."""


class _Refused(Exception):
    """Raised inside the loader; ``load`` turns it into a ``UserError``."""


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that counts nesting while composing and refuses duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(
                    f"nested more than {MAX_DEPTH} levels deep (line {mark.line + 1}); "
                    f"allowed: at most {MAX_DEPTH} levels"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise _Refused(
                        f"key {short(key)} appears twice (lines {seen[key] + 1} and "
                        f"{key_node.start_mark.line + 1}); allowed: each key once per mapping"
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(values, levels) of the document with every alias expanded, capped past the limits.

    A shared node (an anchor used by aliases) counts once per use, and its
    levels add to the depth of every place it is used; results are memoized
    per node, so a bomb is measured in linear time. A recursive alias
    (``&a [*a]``) is infinitely large.
    """
    too_many, too_deep = MAX_NODES + 1, MAX_DEPTH + 1
    done: dict[int, tuple[int, int]] = {}

    def walk(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in done:
            n, levels = done[key]
            return (n, levels) if depth + levels <= MAX_DEPTH + 1 else (n, too_deep)
        if depth > MAX_DEPTH:
            return 1, too_deep
        done[key] = (too_many, too_deep)  # a cycle back to this node is infinite
        n, below = 1, 0
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [x for pair in node.value for x in pair]
        for child in children:
            cn, cl = walk(child, depth + 1)
            n, below = n + cn, max(below, cl)
            if n > MAX_NODES or below >= too_deep:
                break
        done[key] = (min(n, too_many), min(1 + below, too_deep))
        return done[key]

    return walk(root, 1)


def loads(text: str, what: str) -> Any:
    """Parse one YAML document of ``text``; ``what`` names it in messages (``matrix 'm.yaml'``)."""
    try:
        loader = _Loader(text)
    except yaml.YAMLError as e:  # the reader refuses control characters at once
        raise NotYaml(f"{what} is not valid YAML ({' '.join(str(e).split())[:300]})") from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        values, levels = _expanded_size(root)
        if values > MAX_NODES:
            raise _Refused(
                f"expands to more than {MAX_NODES:,} values (an alias counts once per use); "
                f"allowed: at most {MAX_NODES:,}"
            )
        if levels > MAX_DEPTH:
            raise _Refused(
                f"nested more than {MAX_DEPTH} levels deep once aliases are expanded; "
                f"allowed: at most {MAX_DEPTH} levels"
            )
        return loader.construct_document(root)
    except _Refused as e:
        raise UserError(f"{what}: {e}") from None
    except yaml.YAMLError as e:
        raise NotYaml(f"{what} is not valid YAML ({' '.join(str(e).split())[:300]})") from None
    except (ValueError, RecursionError, IndexError, TypeError, KeyError, AttributeError, OverflowError) as e:
        # PyYAML's constructors on hostile scalars: int() of 5000 digits, an empty "!!int", ...
        raise UserError(f"{what}: a value cannot be read ({type(e).__name__}: {short(str(e))})") from None
    finally:
        loader.dispose()


def load(path: Path | str, what: str = "file") -> Any:
    """Read and parse a YAML file with every limit above."""
    path = Path(path)
    return loads(read_text(path, what), f"{what} {str(path)!r}")
