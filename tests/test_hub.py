"""Models by hub id: config.json fetched from a real HTTP server on 127.0.0.1 (HF_ENDPOINT)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from hubserver import Hub

from bench import models
from bench.errors import UserError

QWEN3 = {
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_hidden_layers": 2,
    "vocab_size": 512,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
MIXTRAL = {
    "model_type": "mixtral",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "vocab_size": 512,
    "max_position_embeddings": 2048,
}
REPOS = {"test-org/tiny-qwen3": QWEN3, "test-org/tiny-mixtral": MIXTRAL, "test-org/private-qwen3": QWEN3}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A started loopback hub; HF_ENDPOINT points at it, HF_HOME is a fresh folder."""
    with Hub(REPOS, gated={"test-org/gated"}, private={"test-org/private-qwen3": "hf_secret"}) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        for k in ("HF_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(k, raising=False)
        models.resolve.cache_clear()
        yield h
    models.resolve.cache_clear()


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_hub_id_outside_the_catalog_fetches_only_its_config(hub):
    spec = models.resolve("test-org/tiny-qwen3")
    assert spec.config == QWEN3 and spec.hub_id == spec.name == "test-org/tiny-qwen3"
    files = [path for _, path, _ in hub.requests if "/resolve/" in path]  # (the client also asks /api/ for itself)
    assert files and all(path.endswith("/resolve/main/config.json") for path in files)
    assert models.count_params(models.build(spec)) > 0


def test_the_cached_config_serves_offline(hub, monkeypatch):
    models.resolve("test-org/tiny-qwen3")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", _closed_port())
    models.resolve.cache_clear()
    seen = len(hub.requests)
    assert models.resolve("test-org/tiny-qwen3").config == QWEN3
    assert len(hub.requests) == seen  # served from HF_HOME's cache


def test_offline_without_a_cached_config_says_so(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"offline mode is on .* not in the hub cache"):
        models.resolve("test-org/tiny-qwen3")
    assert not [path for _, path, _ in hub.requests if "/resolve/" in path]


@pytest.mark.parametrize(
    "repo, message",
    [
        ("test-org/gated", r"is a gated repository .* log in \(huggingface-cli login, or set HF_TOKEN\)"),
        ("test-org/nope", r"was not found on .* or a catalog name"),
        ("test-org/private-qwen3", r"was not found on .*or is private: log in"),
    ],
)
def test_gated_missing_and_private_repos_are_one_line_each(hub, repo, message):
    with pytest.raises(UserError, match=message) as e:
        models.resolve(repo)
    assert len(e.value.problems) == 1 and "\n" not in e.value.problems[0]


def test_hf_token_is_sent(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert models.resolve("test-org/private-qwen3").config == QWEN3
    assert ("Bearer hf_secret") in [auth for _, _, auth in hub.requests]


@pytest.mark.slow  # the client retries a refused connection for about 20 s
def test_an_unreachable_hub_says_so(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", _closed_port())
    with pytest.raises(UserError, match=r"cannot be reached and its config.json is not in the hub cache"):
        models.resolve("test-org/tiny-qwen3")


def test_catalog_names_and_typos_never_reach_the_hub(hub):
    assert models.resolve("Qwen/Qwen2.5-7B").name == "qwen2.5-7b"
    with pytest.raises(UserError, match="not in the catalog"):
        models.resolve("gpt2-xll")
    assert not [path for _, path, _ in hub.requests if "/resolve/" in path]


def _bench(args, env):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_predict_and_plan_by_hub_id_from_the_command_line(hub, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = _bench(
        [
            "predict",
            "--model",
            "test-org/tiny-qwen3",
            "--method",
            "lora",
            "--precision",
            "bf16",
            "--gpu",
            "h100-80gb",
            "--json",
        ],
        env,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["cell"]["model"] == "test-org/tiny-qwen3" and out["predicted"]["peak_bytes"] > 0
    r = _bench(
        ["predict", "--model", "test-org/tiny-qwen3", "--method", "lora", "--precision", "bf16", "--gpu", "h100-80gb"],
        env,
    )
    assumed, headline = r.stdout.splitlines()[:2]
    assert assumed.startswith("assumed: seq 512, batch 1")
    assert headline.startswith("tiny-qwen3-train-lora-bf16-b1-s512 on h100-80gb")  # the repository's name
    matrix = tmp_path / "m.yaml"
    matrix.write_text("gpu: h100-80gb\nsweep: {model: [test-org/tiny-qwen3], method: [lora], precision: [bf16]}\n")
    r = _bench(["validate", str(matrix)], env)
    assert r.returncode == 0 and "1 cells" in r.stdout, r.stderr


@pytest.mark.slow
def test_a_gated_repo_on_the_command_line_is_one_error_line(hub):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = _bench(["predict", "--model", "test-org/gated", "--gpu", "h100-80gb"], env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("error:") == 1 and "gated repository" in r.stderr


@pytest.mark.slow
def test_run_measures_hub_models_on_the_cpu(hub, tmp_path):
    """The child resolves the hub id again (from HF_HOME's cache); MoE in bf16 (grouped_mm) and fp32 (eager loop)."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "name: hub\ngpu: a100-80gb\ndefaults: {batch: 1, seq: 32, steps: 2, warmup: 0}\n"
        "include:\n"
        "  - {model: test-org/tiny-qwen3, method: lora, precision: bf16}\n"
        "  - {model: test-org/tiny-mixtral, method: full, precision: pure-bf16}\n"
        "  - {model: test-org/tiny-mixtral, method: full, precision: fp32}\n"
    )
    r = _bench(["run", str(matrix), "--device", "cpu", "--results", str(tmp_path / "results")], env)
    assert r.returncode == 0, r.stdout + r.stderr
    records = [json.loads(f.read_text()) for f in sorted((tmp_path / "results" / "a100-80gb" / "hub").glob("*.json"))]
    assert {x["status"] for x in records} == {"ok"}, [(x["slug"], x.get("error")) for x in records]
    assert {x["slug"].split("-train-")[0] for x in records} == {"tiny-qwen3", "tiny-mixtral"}


def test_reports_never_ask_the_hub(monkeypatch):
    from bench.report.catalog import DEFAULT

    monkeypatch.setenv("HF_ENDPOINT", _closed_port())
    models.resolve.cache_clear()
    record = {"cell": {"model": "test-org/tiny-qwen3", "gpu": "h200"}, "measured": {"n_params": 1234}}
    assert DEFAULT.params_of(record) == 1234
    assert DEFAULT.params_of({"cell": {"model": "Qwen/Qwen3-8B", "gpu": "h200"}}) == 8_200_000_000
