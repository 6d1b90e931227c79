"""Hostile matrices and overrides: one ``error:`` line and exit 2, quickly, never a traceback."""

from __future__ import annotations

import time

import pytest
from badinput import cli, refused

from bench import matrix
from bench.limits import MAX_DEPTH, MAX_NODES

GOOD = "name: t\ngpu: h200\ndefaults: {model: gpt2, method: full}\nsweep: {batch: [2]}\n"


def _bomb(under: str) -> str:
    """A 600-byte "billion laughs": 9**8 copies of one string once the aliases are expanded."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefg", "bcdefgh"):
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    lines = [f"x{line}" for line in lines]  # unknown top-level keys: the bomb sits beside the matrix
    return "\n".join(["gpu: h200", *lines, under.replace("BOMB", "*xh")]) + "\n"


def _anchors(text: str) -> str:
    return text.replace("&", "&x").replace("*", "*x").replace("*xxh", "*xh")


def test_a_matrix_that_is_not_utf8(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_bytes(b"name: t\ngpu: h200\nlabel: \xff\xfe\n")
    refused(["validate", str(path)], "is not UTF-8 text (byte ", "allowed: a UTF-8 file")


@pytest.mark.parametrize(
    "deep",
    [
        "[" * 5000 + "]" * 5000,
        "{a: " * 3000 + "1" + "}" * 3000,
        "\n" + "\n".join(" " * i + "a:" for i in range(1, 1000)) + " 1",
    ],
)
def test_nesting_thousands_deep_in_a_file(write_matrix, deep):
    path = write_matrix("gpu: h200\nsweep: " + deep + "\n")
    refused(["validate", str(path)], f"nested more than {MAX_DEPTH} levels deep")


def test_nesting_thousands_deep_in_an_override(write_matrix):
    refused(
        ["validate", str(write_matrix(GOOD)), "batch=" + "[" * 5000 + "]" * 5000],
        f"override batch: nested more than {MAX_DEPTH} levels deep",
    )


@pytest.mark.parametrize(
    "under",
    [
        "name: BOMB",
        "defaults: {label: BOMB, model: gpt2}",
        "sweep: {batch: BOMB}",
        "sweep: {model: [gpt2], batch: [1], label: BOMB}",
    ],
)
def test_an_alias_bomb_is_refused_at_once(write_matrix, under):
    text = _anchors(_bomb(under))
    assert len(text) < 700
    start = time.monotonic()
    err = refused(["validate", str(write_matrix(text))], f"expands to more than {MAX_NODES:,} values")
    assert time.monotonic() - start < 2 and len(err) < 1000


def test_an_alias_bomb_in_an_override(write_matrix):
    items = ["&a0 [" + ",".join(["1"] * 9) + "]"]
    items += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 8)]
    start = time.monotonic()
    refused(
        ["validate", str(write_matrix(GOOD)), "batch=[" + ",".join(items) + "]"],
        f"override batch: expands to more than {MAX_NODES:,} values",
    )
    assert time.monotonic() - start < 2


def test_a_recursive_alias(write_matrix):
    refused(["validate", str(write_matrix("gpu: h200\nname: &a [*a]\n"))], "expands to more than")


def test_duplicate_keys_are_an_error(write_matrix):
    path = write_matrix("name: t\ngpu: h200\ngpu: t4\ndefaults: {model: gpt2}\nsweep: {batch: [1]}\n")
    refused(["validate", str(path)], "key 'gpu' appears twice (lines 2 and 3)")
    path = write_matrix("gpu: h200\nsweep: {batch: [1], batch: [2], model: [gpt2]}\n")
    refused(["validate", str(path)], "key 'batch' appears twice")
    refused(["validate", str(write_matrix(GOOD)), "batch={a: 1, a: 2}"], "key 'a' appears twice")


def test_merge_keys_may_still_override():
    assert matrix.yamlsafe.loads("base: &b {seq: 1}\nx: {<<: *b, seq: 2}\n", "t")["x"] == {"seq": 2}


def test_a_scalar_override_of_the_only_sweep_axis_keeps_one_cell(write_matrix):
    m = matrix.load(write_matrix(GOOD), ["batch=4"])
    assert [c.batch for c in m.cells] == [4]
    m = matrix.load(
        write_matrix("gpu: h200\ndefaults: {model: gpt2}\nsweep: {method: [full, lora]}\n"), ["method=lora"]
    )
    assert [c.tuning for c in m.cells] == ["lora"]
    m = matrix.load(
        write_matrix("gpu: h200\ndefaults: {model: gpt2}\nsweep: {tuning: [full, lora]}\n"), ["method=full"]
    )
    assert [c.method for c in m.cells] == ["full"]
    # the same cell as the default the override would have set
    same = matrix.load(
        write_matrix("gpu: h200\ndefaults: {model: gpt2, method: full, batch: 4}\nsweep: {seq: [512]}\n")
    )
    assert matrix.load(write_matrix(GOOD), ["batch=4"]).cells[0].cell_id == same.cells[0].cell_id


@pytest.mark.parametrize(
    "text, needle",
    [
        ("gpu: h200\nsweep: {batch: [" + "9" * 5000 + "]}\n", "a value cannot be read"),
        ("gpu: h200\ndefaults: {model: gpt2}\nsweep: {batch: [99999999999]}\n", "allowed: an integer from 1 to"),
        ("gpu: h200\ndefaults: {model: gpt2}\nsweep: {seq: [1.0e+400]}\n", "seq: inf is not allowed"),
        ("gpu: h200\ndefaults: {model: gpt2, label: [1, 2]}\nsweep: {batch: [1]}\n", None),
        ("gpu: h200\n\x00\n", "not valid YAML"),
        ("- 1\n- 2\n", "must be a YAML mapping"),
    ],
)
def test_odd_values(write_matrix, text, needle):
    code, _, err = cli(["validate", str(write_matrix(text))])
    assert code in (0, 2) and "Traceback" not in err
    if needle:
        assert code == 2 and needle in err, err


def test_a_huge_value_gives_a_short_line(write_matrix):
    path = write_matrix("gpu: h200\ndefaults: {model: gpt2}\nsweep: {batch: ['" + "x" * 200_000 + "']}\n")
    err = refused(["validate", str(path)], "batch: 'xxxx")
    assert len(err) < 1000


def test_a_file_too_large(write_matrix):
    refused(["validate", str(write_matrix("# " + "x" * (5 * 2**20) + "\ngpu: h200\n"))], "larger than 4 MiB")


@pytest.mark.parametrize(
    "field, value, most",
    [("new_tokens", 40_000, "32,768"), ("grad_accum", 5000, "4,096"), ("batch", 2**21, "1,048,576")],
)
def test_fields_that_would_make_the_predictor_run_for_hours(write_matrix, field, value, most):
    task = "infer" if field == "new_tokens" else "train"
    path = write_matrix(
        f"gpu: h200\ndefaults: {{model: tiny-llama, task: {task}, {field}: {value}}}\nsweep: {{seq: [64]}}\n"
    )
    refused(["validate", str(path)], f"{field}: {value} is not allowed; allowed: an integer from 1 to {most}")
    refused(
        [
            "predict",
            "--model",
            "tiny-llama",
            "--gpu",
            "h200",
            "--task",
            task,
            f"--{field.replace('_', '-')}",
            str(value),
        ],
        f"allowed: an integer from 1 to {most}",
    )


def test_a_sweep_that_multiplies_into_millions_of_cells(write_matrix):
    text = (
        "gpu: h200\nlists: &n [" + ",".join(map(str, range(1, 301))) + "]\n"
        "defaults: {model: gpt2}\nsweep: {batch: *n, seq: *n, lora_r: *n}\n"
    ).replace("lists:", "description:")
    start = time.monotonic()
    refused(["validate", str(write_matrix(text))], "expands to 27,000,000 cells; allowed: at most 100,000", lines=None)
    assert time.monotonic() - start < 2
