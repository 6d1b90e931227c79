"""``bench serve``'s API: the answers are the CLI's, bad input is the CLI's line beside its field,
concurrent requests neither crash it nor mix answers, and it runs with no writable home.

The API is tested in-process (Starlette's test client) and through a real uvicorn on a free
port of 127.0.0.1 (``tests/serving.py``). The CLI it is compared with runs in a child process.
"""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import serving
from starlette.testclient import TestClient

from bench.errors import UserError
from bench.serve.app import create_app
from bench.serve.calculator import Options, key_of

ROOT = Path(__file__).resolve().parents[1]
CELL = {"model": "gpt2", "method": "lora", "precision": "bf16", "batch": 2, "seq": 256, "gpu": "a100-40gb"}
RESULTS = "results/h200-2026-11-28"


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app([RESULTS]))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def cli_json(*args: str):
    r = cli(*args)
    assert r.returncode in (0, 2), r.stderr[-2000:]
    return json.loads(r.stdout)


def test_the_answer_is_bench_plans_entry_and_bench_predicts_prediction(client, tmp_path):
    r = client.post("/api/predict?tokens=1000000", json={**CELL, "grad_accum": 2, "grad_ckpt": True})
    assert r.status_code == 200, r.text
    entry = r.json()
    assert entry["predicted"]["peak_bytes"] > 0 and entry["predicted"]["run"]["tokens"] == 1_000_000
    same = client.post("/api/command?tokens=1000000", json={**CELL, "grad_accum": 2, "grad_ckpt": True}).json()
    assert same["cell_id"] == entry["cell_id"]
    # the matrix the page offers, planned by the CLI: the same entry
    matrix = tmp_path / "cell.yaml"
    matrix.write_text(same["matrix_yaml"])
    (planned,) = cli_json("plan", str(matrix), "--json", "--tokens", "1000000")
    assert planned == entry
    # the command the page offers, run: the same cell and prediction
    args = shlex.split(same["command"])
    assert args[:2] == ["bench", "predict"] and "--grad-ckpt" in args and args[args.index("--grad-accum") + 1] == "2"
    predicted = cli_json(*args[1:])
    assert predicted["cell_id"] == entry["cell_id"]
    assert predicted["predicted"] == {k: v for k, v in entry["predicted"].items() if k != "predictor_version"}


def test_every_card_is_bench_predict_gpu_all(client):
    rows = client.post("/api/cards?tokens=1000000", json=CELL).json()
    args = ["predict", "--model", "gpt2", "--method", "lora", "--precision", "bf16", "--batch", "2", "--seq", "256"]
    assert rows == cli_json(*args, "--gpu", "all", "--tokens", "1000000", "--json")
    with_max = client.post("/api/cards?max_batch=1&tokens=1000000", json=CELL).json()  # searched card by card
    assert with_max == cli_json(*args, "--gpu", "all", "--tokens", "1000000", "--max-batch", "--json")
    assert all(r["max_batch"] >= 2 for r in with_max if r["fits"])  # batch 2 fits, so the largest is at least 2


def test_a_bad_field_is_the_clis_line_with_the_field_it_names(client):
    r = client.post("/api/predict", json={**CELL, "batch": 0})
    assert r.status_code == 400
    (err,) = r.json()["errors"]
    line = cli("predict", "--model", "gpt2", "--batch", "0", "--gpu", "a100-40gb").stderr.strip()
    assert line == f"error: {err['message']}" and err["key"] == "batch"


@pytest.mark.parametrize(
    "change, keys",
    [
        ({"batch": "x", "seq": -1}, ["batch", "seq"]),
        ({"model": "gtp2"}, ["model"]),
        ({"model": "gtp2", "batch": 0}, ["model", "batch"]),
        ({"gpu": "a100"}, ["gpu"]),
        ({"method": "lora+zero9"}, ["method"]),
        ({"precision": "bf16", "gpu": "v100-16gb"}, ["precision"]),
        ({"seq": 4096}, ["seq"]),
        ({"grad_ckpt": "yes"}, ["grad_ckpt"]),
        ({"colour": "red"}, ["colour"]),
        ({"model": "/etc/passwd"}, ["model"]),
        ({"model": "tests/data/llama-110m.json"}, ["model"]),
        ({"method": "zero2", "ds_config": "tests/data/jobs/ds_zero2.json"}, ["ds_config"]),
        ({"from": "tests/data/jobs/ds_zero2.json"}, ["from"]),
    ],
)
def test_bad_input_is_400_with_every_field_named(client, change, keys):
    r = client.post("/api/predict", json={**CELL, **change})
    assert r.status_code == 400, r.text
    errors = r.json()["errors"]
    assert [e["key"] for e in errors] == keys
    assert all("\n" not in e["message"] and e["message"] for e in errors)


def test_bad_options_and_bodies(client):
    assert client.post("/api/predict?tokens=-5", json=CELL).json()["errors"][0]["key"] == "tokens"
    assert client.post("/api/predict?max_batch=maybe", json=CELL).json()["errors"][0]["key"] == "max_batch"
    r = client.post("/api/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["errors"][0]["message"]
    assert client.post("/api/predict", json=[1, 2]).status_code == 400
    bad = client.post("/api/upload", json={"kind": "model", "name": "x.json", "text": "{"}).json()["errors"]
    assert bad[0]["key"] == "model" and "x.json" in bad[0]["message"]
    r = client.post("/api/upload", json={"kind": "model", "name": "x.json", "text": '{"model_type": "nope"}'})
    assert r.status_code == 400 and r.json()["errors"][0]["key"] == "model"


def test_key_of_and_options():
    assert key_of("seq + new_tokens: 2000 exceeds gpt2's 1024 positions") == "seq"
    assert key_of("unknown key 'colour' (did you mean ...)") == "colour"
    assert key_of("--tokens: give either") == "tokens"
    assert Options.parse({"tokens": "10,000,000", "max_batch": "1"}) == Options(tokens=10_000_000, max_batch=True)
    with pytest.raises(UserError):
        Options.parse({"tokens": "0"})


def test_an_uploaded_config_is_the_cli_cell_of_that_file(client):
    text = (ROOT / "tests/data/llama-110m.json").read_text()
    up = client.post("/api/upload", json={"kind": "model", "name": "llama-110m.json", "text": text}).json()
    assert up["name"] == "llama-110m.json" and up["path"] != "llama-110m.json"
    cell = {**CELL, "model": up["path"], "seq": 128}
    entry = client.post("/api/predict", json=cell).json()
    args = ["--method", "lora", "--precision", "bf16", "--batch", "2", "--seq", "128", "--gpu", "a100-40gb"]
    expected = cli_json("predict", "--model", "tests/data/llama-110m.json", *args, "--json")
    entry["predicted"].pop("predictor_version")  # bench plan stamps it, bench predict does not
    assert entry["cell_id"] == expected["cell_id"] and entry["predicted"] == expected["predicted"]
    command = client.post("/api/command", json=cell).json()
    assert "--model llama-110m.json" in command["command"] and up["path"] not in command["command"]
    assert "model: llama-110m.json" in command["matrix_yaml"]


def test_a_job_file_is_bench_predict_from(client):
    text = (ROOT / "tests/data/jobs/ds_zero2.json").read_text()
    up = client.post("/api/upload", json={"kind": "from", "name": "ds_zero2.json", "text": text}).json()
    assert up["fields"]["method"] == "zero2"
    cell = {"from": up["path"], "model": "gpt2", "precision": "bf16", "gpu": "a100-40gb", "gpus": 2, "seq": 256}
    entry = client.post("/api/predict", json=cell).json()
    expected = cli_json(
        "predict", "--from", "tests/data/jobs/ds_zero2.json", "--model", "gpt2", "--precision", "bf16",
        "--seq", "256", "--gpu", "a100-40gb", "--gpus", "2", "--json",
    )  # fmt: skip
    assert entry["cell_id"] == expected["cell_id"]
    mine, theirs = dict(entry["predicted"]), dict(expected["predicted"])
    mine.pop("predictor_version")
    assert set(mine.pop("notes")) | set(entry.get("notes", [])) == set(theirs.pop("notes"))  # the file's notes too
    assert mine == theirs


def test_catalogs(client):
    models = client.get("/api/models").json()
    assert "gpt2" in {m["name"] for m in models}
    assert {m["name"] for m in client.get("/api/models?q=qwen3").json()} < {m["name"] for m in models}
    cards = client.get("/api/gpus").json()
    assert {"h200", "a100-40gb"} <= {g["name"] for g in cards} and all(g["memory_bytes"] > 0 for g in cards)
    opts = client.get("/api/options").json()
    assert "lora+zero3-offload" in opts["methods"] and opts["results"] == [{"index": 0, "name": "h200-2026-11-28"}]


def test_concurrent_mixed_requests_get_their_own_serial_answers(client, tmp_path):
    cells = [
        {"model": "gpt2", "method": m, "precision": p, "batch": b, "seq": 128, "gpu": g}
        for m, p, b, g in [
            ("lora", "bf16", 1, "h200"),
            ("lora", "bf16", 3, "a100-40gb"),
            ("full", "bf16", 2, "h200"),
            ("full", "fp32", 1, "rtx4090"),
            ("lora", "fp32", 4, "l4"),
        ]
    ]
    bad = [{**cells[0], "batch": 0}, {**cells[0], "gpu": "nope"}]
    serial = [client.post("/api/predict", json=c).json() for c in cells]
    # a fresh server with an empty trace cache: the concurrent requests trace while others wait
    with serving.server(env={"BENCH_CACHE_DIR": str(tmp_path / "traces")}) as base:
        jobs = [(i, c) for i, c in enumerate(cells) for _ in range(6)] + [(-1, b) for b in bad for _ in range(4)]
        random.Random(7).shuffle(jobs)
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            answers = list(pool.map(lambda job: serving.call(base + "/api/predict", job[1]), jobs))
        assert serving.call(base + "/api/status")[0] == 200  # still up
    for (i, _), (status, answer) in zip(jobs, answers):
        if i < 0:
            assert status == 400 and answer["errors"][0]["key"] in ("batch", "gpu")
        else:
            assert status == 200 and answer == serial[i]


def test_root_path_results_and_a_home_nobody_can_write(tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file: nothing can be created under it")
    env = {"HOME": str(blocked), "BENCH_CACHE_DIR": "", "MPLCONFIGDIR": str(tmp_path / "mpl")}
    with serving.server("--root-path", "/calc", "--results", RESULTS, env=env) as base:
        status, page = serving.call(base + "/")
        assert status == 200 and '<base href="/calc/">' in page
        # as a proxy that strips /calc forwards it, and asked for directly
        stripped = base.removesuffix("/calc")
        assert serving.call(stripped + "/api/status")[0] == 200
        status, entry = serving.call(base + "/api/predict", CELL)
        assert status == 200 and entry["predicted"]["fits"] is True
        cache = serving.call(base + "/api/status")[1]["trace_cache"]
        assert Path(cache).is_dir() and not cache.startswith(str(blocked)) and list(Path(cache).glob("*.json"))
        status, again = serving.call(base + "/api/predict", {**CELL, "batch": 3})
        assert status == 200 and again["predicted"]["peak_bytes"] > entry["predicted"]["peak_bytes"]
        status, report = serving.call(base + "/results/0")
        assert status == 200 and "<table" in report and "bench report" in report
        assert serving.call(base + "/results/5")[0] == 404
    assert blocked.read_text().startswith("a file")


def test_with_no_writable_folder_at_all_traces_stay_in_memory(tmp_path, monkeypatch):
    from bench.serve import cli as serve_cli, uploads

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("x")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(blocked / "traces"))

    def refused(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(serve_cli.tempfile, "mkdtemp", refused)
    assert serve_cli.trace_cache_folder().startswith("off")
    import os

    assert os.environ["BENCH_CACHE_DIR"] == "off"
    monkeypatch.setattr(uploads.tempfile, "mkdtemp", refused)
    with pytest.raises(UserError, match="^upload: the server cannot write its temporary folder"):
        uploads.Uploads().add("model", "c.json", "{}")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "ok"))
    assert serve_cli.trace_cache_folder() == str(tmp_path / "ok")


@pytest.mark.parametrize(
    "args, line",
    [
        (["--results", "no-such-folder"], "error: --results: 'no-such-folder' is not a folder"),
        (["--results", "docs"], "error: --results: 'docs' holds no result records"),
        (["--port", "0"], "error: --port: 0 is not allowed; allowed: 1 to 65535"),
        (["--root-path", "calc"], "error: --root-path: 'calc' is not allowed"),
    ],
)
def test_bad_serve_flags_are_one_line(args, line, capsys):
    from bench import cli as bench_cli

    assert bench_cli.main(["serve", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(line) and "\n" not in err


def test_a_hub_id_is_fetched_and_a_missing_one_is_the_model_fields_line(client, tmp_path, monkeypatch):
    from hubserver import Hub

    from bench import models

    config = json.loads((ROOT / "tests/data/llama-110m.json").read_text())
    with Hub({"test-org/tiny-llama": config}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        for k in ("HF_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(k, raising=False)
        models.resolve.cache_clear()
        try:
            r = client.post("/api/predict", json={**CELL, "model": "test-org/tiny-llama", "seq": 128})
            assert r.status_code == 200 and r.json()["cell"]["model"] == "test-org/tiny-llama"
            r = client.post("/api/predict", json={**CELL, "model": "test-org/missing"})
            (err,) = r.json()["errors"]
            assert r.status_code == 400 and err["key"] == "model" and "was not found" in err["message"]
        finally:
            models.resolve.cache_clear()
