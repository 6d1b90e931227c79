"""The command line's help teaches: every option says what it does, what it takes and its
default, generated from the cell's field docs and the tuples validation reads."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys

import pytest

from bench import cell as cellmod, clihelp
from bench.cli import build_parser, main
from bench.errors import UserError


def verbs(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def option_help(parser: argparse.ArgumentParser, dest: str) -> str:
    """One option's help as ``--help`` prints it (whitespace folded)."""
    action = next(a for a in parser._actions if a.dest == dest)
    return " ".join(parser._get_formatter()._expand_help(action).split())


def every_action():
    for verb, parser in verbs().items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                yield verb, parser, action


def test_every_verb_has_a_plain_description_and_every_option_a_default():
    missing = []
    for verb, parser, action in every_action():
        text = " ".join(parser._get_formatter()._expand_help(action).split()) if action.help else ""
        name = action.option_strings[0] if action.option_strings else action.dest
        if not text:
            missing.append(f"{verb} {name}: no help")
        elif action.option_strings and not re.search(r"\[(default: .+|required)\]$", text):
            missing.append(f"{verb} {name}: no default in {text!r}")
        if action.choices and not all(str(c) in text for c in action.choices):
            missing.append(f"{verb} {name}: allowed values missing from {text!r}")
    assert missing == []
    for verb, parser in verbs().items():
        assert parser.description, verb
        shown = parser.format_help()
        assert "``" not in shown and ":func:" not in shown and ":class:" not in shown, verb


def cell_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [a.dest for a in parser._actions if a.dest in cellmod.FIELD_NAMES and a.option_strings]


def expected_default(f: dataclasses.Field) -> str:
    """The default the help must state, worked out here from the dataclass and the doc."""
    doc = clihelp.field_docs()[f.name]
    bracket = re.search(r"\[([^\[\]]+)\]\.?$", doc)
    if f.default is None:
        assert bracket, f"{f.name}: a field whose default is None says in [...] what that means"
        return bracket.group(1)
    value = {True: "on", False: "off"}.get(f.default, f.default) if isinstance(f.default, bool) else f.default
    if bracket:  # a default written in the doc must agree with the dataclass
        assert bracket.group(1) == str(value), f"{f.name}: doc says [{bracket.group(1)}], field default {value}"
    return str(value)


def test_every_cell_field_flag_names_its_default_and_every_allowed_value():
    parser = verbs()["predict"]
    flags = cell_flags(parser)
    assert {"precision", "batch", "seq", "grad_accum", "optimizer", "tuning", "strategy", "offload"} <= set(flags)
    defaults = {f.name: f for f in dataclasses.fields(cellmod.Cell)}
    for name in flags:
        if defaults[name].default is dataclasses.MISSING:
            continue  # model, gpu: required in a cell
        text = option_help(parser, name)
        assert f"[default: {expected_default(defaults[name])}]" in text, (name, text)
        doc_start = " ".join(clihelp.field_docs()[name].split()[:3])
        assert doc_start and doc_start in text, (name, text)
        for value in cellmod.CHOICES.get(name, ()):
            assert re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", text), (name, value, text)
        if name in cellmod.INT_MINIMUM:
            assert f"from {cellmod.INT_MINIMUM[name]} to" in text or f">= {cellmod.INT_MINIMUM[name]}" in text
    for key in cellmod.CHOICES:
        assert key in flags, f"the enumerated field {key} has no predict flag"


def test_a_field_documented_in_cell_py_gets_its_flag_and_help_without_another_edit():
    parser = verbs()["predict"]
    documented = set(clihelp.field_docs())
    expected = set(cellmod.FIELD_NAMES) - {"model", "gpu", "steps", "warmup", "label"}
    assert expected <= set(cell_flags(parser)) and expected <= documented


def test_help_and_validation_read_the_same_tuple(monkeypatch):
    """Adding a value to cell.CHOICES shows it in the help and makes validation accept it."""
    raw = {"model": "gpt2", "gpu": "h200", "tuning": "dora"}
    with pytest.raises(UserError, match=r"tuning: 'dora' is not allowed; allowed: full, lora, qlora$"):
        cellmod.normalize(raw)
    assert "dora" not in option_help(verbs()["predict"], "tuning")
    monkeypatch.setitem(cellmod.CHOICES, "tuning", (*cellmod.TUNINGS, "dora"))
    assert cellmod.normalize(raw).tuning == "dora"
    assert "Allowed: full, lora, qlora, dora." in option_help(verbs()["predict"], "tuning")


def test_method_help_lists_every_plain_method_from_methods():
    text = option_help(verbs()["predict"], "method")
    for name in cellmod.METHODS:
        if "+" not in name:
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), name
    assert "[default: full]" in text


def test_the_top_level_help_says_what_bench_is_and_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "pipeline of verbs" not in out and "``" not in out
    assert "peak GPU memory" in out and "bench COMMAND --help" in out
    for verb in verbs():
        assert re.search(rf"^\s+{verb}\b", out, re.M), verb


def test_report_and_compare_help_show_no_markup(capsys):
    for verb in ("report", "compare"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        out = capsys.readouterr().out
        assert "``" not in out and "bench report RESULTS" in out or verb == "compare"


def test_a_bad_flag_is_one_error_line_and_exit_2():
    r = subprocess.run(
        [sys.executable, "-m", "bench", "predict", "--model", "gpt2", "--gpu", "h200", "--bacth", "2"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: bench predict: unrecognized arguments: --bacth")
    assert "did you mean --batch?" in r.stderr and "Traceback" not in r.stderr


def test_a_bad_value_names_the_key_and_what_is_allowed(capsys):
    assert main(["predict", "--model", "gpt2", "--gpu", "h200", "--batch", "two"]) == 2
    assert capsys.readouterr().err == "error: batch: 'two' is not allowed; allowed: an integer >= 1\n"
    assert main(["predict", "--model", "gpt2", "--gpu", "h200", "--precision", "fp8"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: precision: 'fp8' is not allowed; allowed: {', '.join(cellmod.PRECISIONS)}\n"


def test_a_misspelt_verb_gets_a_did_you_mean(capsys):
    with pytest.raises(SystemExit) as e:
        main(["predcit", "--gpu", "h200"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: bench: argument COMMAND: invalid choice: 'predcit' (did you mean predict?")


def test_every_tuple_of_names_in_cell_py_is_in_choices():
    """A new enumerated field (its tuple in bench/cell.py) is validated and listed in the help only
    through ``CHOICES``: a tuple of names left out of it (or not a subset of an entry) is a field
    whose help would not list its values."""
    listed = [set(v) for v in cellmod.CHOICES.values()]
    loose = [
        name
        for name, value in vars(cellmod).items()
        if name.isupper()
        and isinstance(value, tuple)
        and value
        and all(isinstance(v, str) for v in value)
        and name != "FIELD_NAMES"
        and not any(set(value) <= s for s in listed)
    ]
    assert loose == []
