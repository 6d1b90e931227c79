"""The results store: atomic one-file-per-cell records, version refusal, resume."""

from __future__ import annotations

import json
import os
import stat

import pytest

from bench import store
from bench.cell import normalize
from bench.errors import UserError
from bench.store import SCHEMA_VERSION, Store, atomic_write_json, load_record, load_records


def record(status: str = "ok", batch: int = 1, **extra) -> dict:
    c = normalize({"model": "gpt2", "gpu": "t4", "precision": "fp16", "batch": batch})
    return {
        "cell_id": c.cell_id,
        "slug": c.slug,
        "label": c.label,
        "matrix": "m",
        "cell": c.to_dict(),
        "status": status,
        "environment": {"gpu": "Tesla T4"},
        "measured": None,
        "predicted": None,
        **extra,
    }


def test_round_trip(tmp_path):
    s = Store(tmp_path / "results")
    rec = record(measured={"peak_nvml_process_bytes": 123})
    path = s.write(rec)
    assert path == tmp_path / "results" / "t4" / "m" / f"{rec['cell_id']}.json"
    back = s.read("t4", "m", rec["cell_id"])
    assert back == {**rec, "schema_version": SCHEMA_VERSION}
    assert load_record(path) == back
    assert s.read("t4", "m", "0000000000") is None


def test_the_store_sets_the_schema_version(tmp_path):
    path = Store(tmp_path).write(record(schema_version=0))
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_atomic_write_leaves_no_temp_file(tmp_path):
    target = tmp_path / "a" / "b.json"
    atomic_write_json(target, {"x": 1})
    assert os.listdir(target.parent) == ["b.json"]
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})  # fails half-way through json.dump
    assert os.listdir(target.parent) == ["b.json"]
    assert json.loads(target.read_text()) == {"x": 1}  # the old file survives


def test_written_files_are_readable_like_any_other_file(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, {})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_another_schema_version_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**record(), "schema_version": 0}))
    with pytest.raises(UserError) as e:
        load_record(path)
    (line,) = e.value.problems
    assert f"schema_version 0 is not supported (this bench reads {SCHEMA_VERSION})" in line
    assert "delete the file and run its matrix again (`bench run MATRIX`" in line


@pytest.mark.parametrize(
    "content, message",
    [
        ("{oops", "not a readable result file"),
        ("[1, 2]", "not a bench result record"),
        ('{"schema_version": 1}', "not a bench result record"),
    ],
)
def test_unreadable_records(tmp_path, content, message):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_record(path)


def test_completed_keeps_every_status_unless_retrying_failures(tmp_path):
    s = Store(tmp_path)
    ids = {}
    for batch, status in enumerate(store.STATUSES, start=1):
        rec = record(status, batch)
        s.write(rec)
        ids[status] = rec["cell_id"]
    assert s.completed("t4", "m") == set(ids.values())
    assert s.completed("t4", "m", retry_failed=True) == {ids["ok"], ids["oom"]}
    assert s.statuses("t4", "m") == {cid: st for st, cid in ids.items()}
    assert s.completed("t4", "other") == set()


def test_a_bad_status_is_a_bug(tmp_path):
    with pytest.raises(ValueError):
        Store(tmp_path).write(record("crashed"))


def test_listing_skips_machine_json_and_temp_files(tmp_path):
    s = Store(tmp_path)
    s.write(record("ok", 1))
    s.write(record("oom", 2))
    s.write_machine("t4", {"gpu": "Tesla T4"})
    (tmp_path / "t4" / "m" / ".tmp-abc.json").write_text("{")
    recs = load_records([tmp_path])
    assert sorted(r["status"] for r in recs) == ["ok", "oom"]
    assert [r["status"] for r in s.iter_records()] == [r["status"] for r in recs]
    assert json.loads((tmp_path / "t4" / "machine.json").read_text())["schema_version"] == SCHEMA_VERSION
    with pytest.raises(UserError, match="does not exist"):
        load_records([tmp_path / "nope"])
