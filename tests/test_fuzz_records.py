"""Fuzz: generated result records through ``report`` (Markdown, CSV, JSON Lines, Parquet) and ``compare``.

A record is a real one with fields replaced (at the top, in ``cell``,
``measured``, ``predicted`` or ``environment``) by hostile values, next to a
sound record. Each verb must render (leaving the broken record out with a
warning line) or refuse in one line. See ``tests/fuzzing.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from fuzzing import FUZZ, JSON_VALUES, SCALARS, check_memory, outcome, peak_rss_bytes
from hypothesis import given, strategies as st

ROOT = Path(__file__).resolve().parent.parent
GOOD = json.loads((ROOT / "tests" / "golden" / "records" / "gpt2-train-full-bf16-b4-s1024.json").read_text())
SECTIONS = [None, "cell", "measured", "predicted", "environment"]


def _keys(section):
    keys = list(GOOD if section is None else GOOD[section])
    return st.one_of(st.sampled_from(keys), st.text(max_size=6))


EDITS = st.lists(
    st.sampled_from(SECTIONS).flatmap(
        lambda s: st.tuples(
            st.just(s), _keys(s), st.one_of(SCALARS, JSON_VALUES, st.sampled_from(["ok", "oom", "exploded", "cpu"]))
        )
    ),
    max_size=4,
)


def _apply(edits) -> dict:
    rec = copy.deepcopy(GOOD)
    rec["cell_id"] = "fuzzed0001"
    for section, key, value in edits:
        target = rec if section is None else rec.get(section)
        if isinstance(target, dict):
            target[key] = value
    return rec


@FUZZ
@given(edits=EDITS, device=st.sampled_from(["cuda", "cpu"]))
def test_fuzz_records(tmp_path_factory, edits, device):
    before = peak_rss_bytes()
    folder = tmp_path_factory.mktemp("r")
    (folder / "good.json").write_text(json.dumps(GOOD))
    rec = _apply([(None, "environment", {**GOOD["environment"], "device": device}), *edits])
    (folder / "fuzzed.json").write_text(json.dumps(rec))  # NaN and Infinity as Python writes them
    # --no-repredict: predicting the stale predictions afresh starts the predictor's child per call
    # (tests/test_report_honesty.py covers it); here the record's fields are what is fuzzed
    outcome("records (report md)", ["report", str(folder), "--no-repredict"])
    outcome("records (report csv)", ["report", str(folder), "--format", "csv", "--no-repredict"])
    outcome("records (report jsonl)", ["report", str(folder), "--format", "jsonl", "--no-repredict"])
    outcome("records (report parquet)", ["report", str(folder), "-o", str(folder / "t.parquet"), "--no-repredict"])
    outcome("records (compare)", ["compare", str(folder), str(folder)], ok_codes=(0, 1, 2))
    check_memory(before)


@FUZZ
@given(
    text=st.one_of(
        JSON_VALUES.map(json.dumps),
        st.text(max_size=40),
        st.sampled_from(
            [
                '{"cell_id": "x"}',
                '{"cell_id": "x", "schema_version": 1}',
                '{"cell_id": ' + "[" * 5000 + "]" * 5000 + "}",
            ]
        ),
    )
)
def test_fuzz_record_text(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("r")
    (folder / "x.json").write_text(text)
    outcome("record text (report)", ["report", str(folder)])
    outcome("record text (compare)", ["compare", str(folder), str(folder)], ok_codes=(0, 1, 2))
