"""README.md's commands match the parser: every ``bench VERB --flag`` it writes exists, and
every verb the parser has is in README.md."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from bench.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"


def verbs() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def commands(text: str) -> list[str]:
    """Every ``bench ...`` command line in README.md: in code blocks (with ``\\`` continuations
    joined) and in inline code spans."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("bench "):
                found.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [span for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith("bench ")]
    return found


def test_the_readme_names_commands_at_all():
    cmds = commands(README.read_text(encoding="utf-8"))
    assert len(cmds) >= 15 and any("--gpu all" in c for c in cmds)


def test_every_flag_the_readme_writes_exists_in_the_parser():
    parsers = verbs()
    wrong = []
    for cmd in commands(README.read_text(encoding="utf-8")):
        words = cmd.split()
        verb = words[1]
        if verb not in parsers:
            wrong.append(f"{cmd}: no verb {verb!r}")
            continue
        options = {o for a in parsers[verb]._actions for o in a.option_strings}
        for word in words[2:]:
            flag = word.strip("[]()|,").split("=")[0]
            if flag.startswith("-") and flag not in options:
                wrong.append(f"{cmd}: bench {verb} has no {flag}")
    assert wrong == []


def test_every_verb_of_the_parser_is_in_the_readme():
    cmds = commands(README.read_text(encoding="utf-8"))
    written = {c.split()[1] for c in cmds}
    assert set(verbs()) - written == set()
