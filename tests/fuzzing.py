"""Shared parts of the fuzz suite (``tests/test_fuzz_*.py``): budget, values, the verdict.

Every fuzz test hands a generated input to the ``bench`` command line
in-process and accepts exactly two outcomes: success, or exit 2 with
``error:`` lines (each of bounded length) and no traceback. Hypothesis'
``deadline`` bounds the time of one example; ``check_memory`` the growth of
the process's peak RSS over a whole test.

The budget is small by default so that the suite runs in CI in well under a
minute; ``BENCH_FUZZ_EXAMPLES=N`` sets the examples per test (e.g. 2000 for a
long run), and ``BENCH_FUZZ_COUNTS=FILE`` appends one JSON line per test with
the inputs tried and the outcomes.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import resource
from collections import Counter
from datetime import timedelta

from badinput import cli
from hypothesis import HealthCheck, settings, strategies as st

EXAMPLES = int(os.environ.get("BENCH_FUZZ_EXAMPLES", "25"))
DEADLINE = timedelta(seconds=float(os.environ.get("BENCH_FUZZ_DEADLINE_S", "10")))
MAX_GROWTH_BYTES = 1 << 30
"""Largest rise of the peak RSS over one fuzz test."""

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=DEADLINE,
    derandomize=EXAMPLES <= 100,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
    ],
)
"""Settings of every fuzz test (fixed seed for the small CI budget, random for a long run)."""

COUNTS: dict[str, Counter] = {}


def _dump() -> None:
    path = os.environ.get("BENCH_FUZZ_COUNTS")
    if path and COUNTS:
        with open(path, "a") as f:
            for name, c in sorted(COUNTS.items()):
                f.write(json.dumps({"test": name, **c}) + "\n")


atexit.register(_dump)


def outcome(name: str, argv: list[str], ok_codes: tuple[int, ...] = (0, 2)) -> tuple[int, str, str]:
    """Run ``bench ARGV`` and assert the contract; counts the outcome under ``name``."""
    counter = COUNTS.setdefault(name, Counter())
    counter["inputs"] += 1
    try:
        code, out, err = cli(argv)
    except AssertionError:
        counter["tracebacks"] += 1
        raise
    counter[f"exit {code}"] += 1
    assert code in ok_codes, (code, err[-2000:])
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    if code == 2:
        assert errors, err
    for line in err.splitlines():
        if line.startswith(("error: ", "warning: ", "note: ")):
            assert len(line) <= 2100, len(line)
    return code, out, err


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def check_memory(before: int) -> None:
    grown = peak_rss_bytes() - before
    assert grown < MAX_GROWTH_BYTES, f"peak RSS grew by {grown / 2**20:.0f} MiB"


# values a hostile file may hold, in JSON and YAML
NUMBERS = st.one_of(
    st.integers(min_value=-10, max_value=10),
    st.sampled_from([0, 1, 2, 3, 64, 1024, 2**31, 2**63, 10**30, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.5, 1e300]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    NUMBERS,
    st.text(max_size=20),
    st.sampled_from(["", "auto", "abc", "gpt2", "none", "cpu", "-1", "1e400", "\x00", "é", "x" * 5000]),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
