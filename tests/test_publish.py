"""``bench publish``: a results set pushed to a real HTTP server on 127.0.0.1 (HF_ENDPOINT) by huggingface_hub."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hubserver import Hub

from bench import store
from bench.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "results" / "h200-example"
WRITERS = {"hf_write": ["test-org", "someone"], "hf_other": ["other-org"]}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A started loopback hub; HF_ENDPOINT points at it, HF_TOKEN is a write token of test-org."""
    with Hub(writers=WRITERS) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_TOKEN", "hf_write")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield h


def _publish(*args: str) -> int:
    return main(["publish", str(EXAMPLE), *args])


def test_the_results_arrive_intact_as_a_dataset(hub, capsys):
    assert _publish("--hub", "test-org/h200-results") == 0
    err = capsys.readouterr().err
    assert "published 28 records to test-org/h200-results" in err and "/commit/" in err
    assert hub.created[("dataset", "test-org/h200-results")]["type"] == "dataset"
    files = hub.pushed[("dataset", "test-org/h200-results")]["main"]
    on_disk = store.record_files([EXAMPLE])
    for path in on_disk:
        rec = json.loads(path.read_text())
        assert files[f"records/{rec['cell']['gpu']}/{rec['matrix']}/{path.name}"] == path.read_bytes()
    assert files["records/h200/machine.json"] == (EXAMPLE / "h200" / "machine.json").read_bytes()
    table = pd.read_parquet(io.BytesIO(files["data/results.parquet"]))
    lines = pd.read_json(io.BytesIO(files["data/results.jsonl"]), lines=True, precise_float=True)
    records = {r["cell_id"]: r for r in map(store.load_record, on_disk)}
    for df in (table, lines):
        assert sorted(df["cell_id"]) == sorted(records)
        for _, row in df.iterrows():
            rec = records[row["cell_id"]]
            assert row["status"] == rec["status"] and row["predicted.peak_bytes"] == rec["predicted"]["peak_bytes"]
            assert row["measured.peak_nvml_process_bytes"] == rec["measured"]["peak_nvml_process_bytes"]
    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert meta["configs"][0]["data_files"][0]["path"] == "data/results.parquet" and "bench" in meta["tags"]
    assert "| Model " in card and "| gpt2-large " in card  # the Markdown report
    (commit,) = hub.commits
    assert commit["header"]["summary"].startswith("bench publish") and len(commit["paths"]) == len(files)
    assert all(auth == "Bearer hf_write" for method, _, auth in hub.requests if method == "POST")  # every push


def test_private_and_a_branch_and_a_second_push(hub, capsys):
    assert _publish("--hub", "test-org/r", "--private", "--message", "first") == 0
    assert hub.created[("dataset", "test-org/r")]["visibility"] == "private"
    assert _publish("--hub", "test-org/r", "--revision", "v2", "--title", "Second run") == 0  # exists: 409 is fine
    branches = hub.pushed[("dataset", "test-org/r")]
    assert set(branches) == {"main", "v2"} and [c["revision"] for c in hub.commits] == ["main", "v2"]
    assert hub.commits[0]["header"]["summary"] == "first"
    assert "pretty_name: Second run" in branches["v2"]["README.md"].decode()
    assert "Second run" not in branches["main"]["README.md"].decode()


@pytest.mark.parametrize(
    "token, repo, message",
    [
        ("hf_wrong", "test-org/r", r"refused the token \(HTTP 401\)"),
        ("hf_other", "test-org/r", r"may not write there \(HTTP 403\); use a token with write access to 'test-org'"),
    ],
)
def test_a_refused_token_is_one_line(hub, monkeypatch, capsys, token, repo, message):
    monkeypatch.setenv("HF_TOKEN", token)
    assert _publish("--hub", repo) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not hub.commits


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_no_network_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_ENDPOINT", _closed_port())
    monkeypatch.setenv("HF_TOKEN", "hf_write")
    assert _publish("--hub", "test-org/r") == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "cannot be reached (ConnectError)" in err


def test_offline_mode_is_one_line(hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _publish("--hub", "test-org/r") == 2
    assert "offline mode is on" in capsys.readouterr().err and not hub.commits


def test_no_token_is_one_line_before_any_request(tmp_path):
    """A fresh process with an empty HF_HOME (no stored login) and no HF_TOKEN."""
    with Hub(writers=WRITERS) as h:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
        env.update(HF_ENDPOINT=h.url, HF_HOME=str(tmp_path / "hf"), PYTHONPATH=os.getcwd())
        r = subprocess.run(
            [sys.executable, "-m", "bench", "publish", str(EXAMPLE), "--hub", "test-org/r"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert r.returncode == 2 and r.stderr.count("error:") == 1 and "no Hugging Face token" in r.stderr
        assert not h.requests


@pytest.mark.parametrize(
    "args, key", [(["--hub", "no-slash"], "--hub"), (["--hub", "a/b", "--revision", "bad name"], "--revision")]
)
def test_bad_arguments_are_one_line(args, key, capsys):
    assert _publish(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {key}:") and err.count("error:") == 1


def test_an_allocator_snapshot_a_record_names_travels_with_it(hub, tmp_path):
    results = tmp_path / "results"
    subprocess.run(["cp", "-r", str(EXAMPLE), str(results)], check=True)
    path = store.record_files([results])[0]
    rec = json.loads(path.read_text())
    rec["measured"]["memory_snapshot"] = f"{rec['cell_id']}.memory.pickle"
    path.write_text(json.dumps(rec))
    snap = pickle.dumps({"segments": [], "device_traces": [[]]})
    (path.parent / rec["measured"]["memory_snapshot"]).write_bytes(snap)
    assert main(["publish", str(results), "--hub", "test-org/snap"]) == 0
    files = hub.pushed[("dataset", "test-org/snap")]["main"]
    assert files[f"records/{rec['cell']['gpu']}/{rec['matrix']}/{rec['cell_id']}.memory.pickle"] == snap
