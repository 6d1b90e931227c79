"""Fuzz: generated matrices (structured and raw text) and overrides through ``bench validate``.

See ``tests/fuzzing.py`` for the contract, the budget (``BENCH_FUZZ_EXAMPLES``)
and the counts (``BENCH_FUZZ_COUNTS``).
"""

from __future__ import annotations

import json

import yaml
from fuzzing import FUZZ, JSON_VALUES, SCALARS, check_memory, outcome, peak_rss_bytes
from hypothesis import given, strategies as st

from bench import cell as cellmod, gpus
from bench.matrix import CELL_KEYS, TOP_KEYS

GOOD = "name: t\ngpu: h200\ndefaults: {model: tiny-gpt2, method: full, seq: 64}\nsweep: {batch: [1, 2]}\n"

FIELD_VALUES = {
    "model": st.sampled_from(
        [
            "gpt2",
            "tiny-gpt2",
            "tiny-llama",
            "tiny-t5",
            "GPT2",
            "openai-community/gpt2",
            "nope",
            "./missing.json",
            "/",
            "",
        ]
    ),
    "method": st.sampled_from([*cellmod.METHODS, "zero4", "lora+", ""]),
    "precision": st.sampled_from([*cellmod.PRECISIONS, "fp8"]),
    "task": st.sampled_from([*cellmod.TASKS, "serve"]),
    "gpu": st.sampled_from([*gpus.names(), "h100-8gb"]),
    "batch": st.one_of(st.integers(-2, 40), st.sampled_from([2**20, 2**21, 10**30])),
    "seq": st.one_of(st.integers(-2, 4096), st.sampled_from([2**22, 2**23])),
}


def _field(key: str):
    return st.one_of(FIELD_VALUES.get(key, SCALARS), SCALARS)


CELLS = st.dictionaries(
    st.one_of(st.sampled_from(CELL_KEYS), st.text(max_size=6)), st.deferred(lambda: SCALARS), max_size=6
).flatmap(lambda d: st.fixed_dictionaries({k: _field(k) for k in d}))
SWEEPS = st.dictionaries(
    st.sampled_from(CELL_KEYS), st.one_of(st.lists(st.deferred(lambda: SCALARS), max_size=4), SCALARS), max_size=3
).flatmap(lambda d: st.fixed_dictionaries({k: st.one_of(st.lists(_field(k), max_size=4), _field(k)) for k in d}))
MATRICES = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["t", "a/b", "..", "x" * 300]), SCALARS),
        "gpu": FIELD_VALUES["gpu"] | SCALARS,
        "description": SCALARS,
        "defaults": CELLS | JSON_VALUES,
        "sweep": SWEEPS | JSON_VALUES,
        "exclude": st.lists(CELLS, max_size=3) | JSON_VALUES,
        "include": st.lists(CELLS, max_size=3) | JSON_VALUES,
        "junk": JSON_VALUES,
    },
)
FRAGMENTS = st.sampled_from(
    [
        "name: t\n",
        "gpu: h200\n",
        "gpu: t4\n",
        "sweep: {batch: [1, 2]}\n",
        "defaults: {model: gpt2}\n",
        "&a [1, 2]",
        "*a",
        "*b",
        "&b {x: *a}",
        "<<: *a\n",
        "[",
        "]",
        "{",
        "}",
        "- ",
        ": ",
        ", ",
        "\n",
        "  ",
        "!!python/object:os.system",
        "!!binary",
        "!!int",
        "\t",
        "\x00",
        "\ufeff",
        "%YAML 1.2\n",
        "---\n",
        "...\n",
        "? ",
        "|\n  x\n",
        "'",
        '"',
        "#",
        "1e400",
        "0x1F",
        "~",
        "yes",
        "no",
        ".nan",
        "-.inf",
        "9" * 50,
    ]
)


def _validate(tmp_path, text: str, *overrides: str, name: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    outcome(name, ["validate", str(path), *overrides])


@FUZZ
@given(doc=MATRICES)
def test_fuzz_structured_matrices(tmp_path_factory, doc):
    before = peak_rss_bytes()
    text = yaml.safe_dump(doc, allow_unicode=True)
    _validate(tmp_path_factory.mktemp("m"), text, name="matrices (structured)")
    check_memory(before)


@FUZZ
@given(parts=st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), max_size=30))
def test_fuzz_raw_matrix_text(tmp_path_factory, parts):
    _validate(tmp_path_factory.mktemp("m"), "".join(parts), name="matrices (raw text)")


@FUZZ
@given(data=st.binary(max_size=200))
def test_fuzz_matrix_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("m") / "m.yaml"
    path.write_bytes(b"gpu: h200\n" + data)
    outcome("matrices (bytes)", ["validate", str(path)])


KEYS = st.one_of(
    st.sampled_from(
        [*CELL_KEYS, *TOP_KEYS, "defaults.seq", "sweep.batch", "include.0", "a.b.c", "defaults..seq", ".", "=", ""]
    ),
    st.text(max_size=8),
)
VALUES = st.one_of(
    st.lists(st.one_of(FRAGMENTS, st.text(max_size=6)), max_size=8).map("".join),
    JSON_VALUES.map(lambda v: json.dumps(v)),
)


@FUZZ
@given(overrides=st.lists(st.tuples(KEYS, VALUES), max_size=4))
def test_fuzz_overrides(tmp_path_factory, overrides):
    args = [f"{k}={v}" for k, v in overrides]
    args = [a for a in args if not a.startswith("-")]  # a leading dash is a flag to argparse
    _validate(tmp_path_factory.mktemp("m"), GOOD, *args, name="overrides")
