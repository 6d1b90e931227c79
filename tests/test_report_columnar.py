"""``bench report --format parquet|jsonl``: read back with pandas, every value equals its record's."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench import store
from bench.cli import main
from bench.report import columnar

EXAMPLE = Path(__file__).resolve().parents[1] / "results" / "h200-example"


def _leaves(value, prefix=""):
    """``(dotted key, value)`` of every leaf of a record (non-empty dicts are descended)."""
    for k, v in value.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _same(got, want, as_json: bool) -> bool:
    if want is None:
        return got is None or (not isinstance(got, (list, str)) and bool(pd.isna(got)))
    if as_json:
        got = json.loads(got)
    if hasattr(got, "tolist"):
        got = got.tolist()
    if isinstance(want, float) or isinstance(got, float):
        return math.isclose(float(got), float(want), rel_tol=0, abs_tol=0)
    return got == want and type(got) is type(want)


@pytest.fixture
def records(tmp_path) -> Path:
    """The example records plus an OOM cell (no measurement), a list of LoRA targets and a column of mixed kinds."""
    folder = tmp_path / "results" / "h200" / "m"
    folder.mkdir(parents=True)
    recs = [store.load_record(p) for p in store.record_files([EXAMPLE])]
    oom = copy.deepcopy(recs[0])
    oom.update(cell_id="00000000aa", status="oom", measured=None, prediction_error=None, error="OutOfMemoryError")
    listed = copy.deepcopy(recs[1])
    listed["cell_id"] = "00000000bb"
    listed["cell"]["lora_targets"] = ["q_proj", "v_proj"]
    recs[2]["environment"]["visible_devices"] = "0"
    listed["environment"]["visible_devices"] = 1
    for r in [*recs, oom, listed]:
        (folder / f"{r['cell_id']}.json").write_text(json.dumps(r))
    return tmp_path / "results"


def _check(df: pd.DataFrame, recs: list[dict]) -> None:
    assert len(df) == len(recs)
    kinds: dict[str, set] = {}
    for rec in recs:
        for key, v in _leaves(rec):
            if v is not None:
                kinds.setdefault(key, set()).add(float if type(v) is int else type(v))
    mixed = {k for k, ks in kinds.items() if len(ks) > 1}  # written as JSON text
    assert "environment.visible_devices" in mixed
    for rec in recs:
        row = df[df["cell_id"] == rec["cell_id"]].iloc[0]
        for key, want in _leaves(rec):
            if key not in df.columns:  # a null parent whose children other rows have
                assert want is None and any(c.startswith(f"{key}.") for c in df.columns), key
                continue
            assert _same(row[key], want, key in mixed), (rec["cell_id"], key, row[key], want)
    assert list(df.columns[:5]) == list(columnar.LEADING)


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_the_table_reads_back_as_the_records(records, tmp_path, suffix, capsys):
    """As stored (--no-repredict): a stale prediction would otherwise be predicted afresh."""
    out = tmp_path / f"table.{suffix}"
    assert main(["report", "--no-repredict", str(records), "-o", str(out)]) == 0
    assert f"({suffix})" in capsys.readouterr().err
    df = pd.read_parquet(out) if suffix == "parquet" else pd.read_json(out, lines=True, dtype=False, precise_float=True)
    recs = [store.load_record(p) for p in store.record_files([records])]
    _check(df, recs)
    oom = df[df["status"] == "oom"].iloc[0]
    assert pd.isna(oom["measured.peak_nvml_process_bytes"]) and oom["predicted.peak_bytes"] > 0
    ok = df[df["status"] == "ok"]
    assert ok["measured.tokens_per_second"].notna().all()
    assert isinstance(ok["measured.step_times_seconds"].iloc[0][0], float)  # a list column, not text


def test_parquet_keeps_integer_and_list_types(records, tmp_path):
    out = tmp_path / "t.parquet"
    assert main(["report", "--no-repredict", str(records), "--format", "parquet", "-o", str(out)]) == 0
    df = pd.read_parquet(out)
    assert str(df["measured.peak_nvml_process_bytes"].dtype) == "Int64"  # nulls do not make it float
    assert str(df["cell.batch"].dtype) == "Int64" and str(df["cell.grad_ckpt"].dtype) == "boolean"
    assert df["cell.lora_targets"].dropna().map(len).eq(2).all()  # a list column
    assert sorted(df["environment.visible_devices"].dropna()) == ['"0"', "1"]  # mixed kinds: JSON text


def test_jsonl_goes_to_standard_output_and_parquet_needs_a_file(records, capsys):
    assert main(["report", "--no-repredict", str(records), "--format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(store.record_files([records])) and json.loads(lines[0])["cell_id"]
    assert main(["report", "--no-repredict", str(records), "--format", "parquet"]) == 2
    assert "error: --format parquet" in capsys.readouterr().err


def test_an_unknown_suffix_names_every_format(records, tmp_path, capsys):
    assert main(["report", "--no-repredict", str(records), "-o", str(tmp_path / "t.xlsx")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and ".parquet or .jsonl" in err
