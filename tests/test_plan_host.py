"""A stated host for a matrix: ``host_memory`` (or ``bench plan --host-memory``) gives every
plan cell a host-RAM verdict, and a ``split: layers`` cell offloads to it the blocks that
fit on no card, in every plan format; ``bench run`` measures the real host and says so."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from bench import matrix
from bench.cli import main
from bench.errors import UserError

GiB = 2**30
REPO = Path(__file__).resolve().parent.parent

PLAIN = """\
name: host
gpu: a100-80gb
defaults: {model: tiny-gpt2, seq: 16}
sweep: {batch: [1, 2]}
"""


def test_host_memory_is_a_size_for_the_whole_matrix(write_matrix):
    plain = matrix.load(write_matrix(PLAIN))
    assert plain.host_memory is None
    stated = matrix.load(write_matrix("host_memory: 64GiB\n" + PLAIN))
    assert stated.host_memory == 64 * GiB
    assert [c.cell_id for c in stated.cells] == [c.cell_id for c in plain.cells]  # no cell field
    assert matrix.load(write_matrix(f"host_memory: {3 * GiB}\n" + PLAIN)).host_memory == 3 * GiB
    assert matrix.load(write_matrix("host_memory: 1.5TiB\n" + PLAIN)).host_memory == 1536 * GiB
    over = matrix.load(write_matrix("host_memory: 64GiB\n" + PLAIN), ["host_memory=32GiB"])
    assert over.host_memory == 32 * GiB


@pytest.mark.parametrize("value", ["lots", "0GiB", "-4GiB", "0", "true", "[64GiB]", "{a: 1}", "1.5", "64 parsecs"])
def test_a_bad_host_memory_is_one_line_naming_it(write_matrix, value, capsys):
    path = write_matrix(f"host_memory: {value}\n" + PLAIN)
    with pytest.raises(UserError) as e:
        matrix.load(path)
    assert len(e.value.problems) == 1
    line = e.value.problems[0]
    assert line.startswith("host_memory: ") and "is not allowed; allowed: a size such as" in line
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: host_memory: ") and "Traceback" not in err


@pytest.mark.parametrize(
    "text, where",
    [
        (PLAIN.replace("seq: 16}", "seq: 16, host_memory: 64GiB}"), "defaults"),
        (PLAIN + "include: [{batch: 8, host_memory: 64GiB}]\n", "include[0]"),
        (PLAIN.replace("sweep: {batch: [1, 2]}", "sweep: {batch: [1, 2], host_memory: [64GiB]}"), "sweep"),
    ],
)
def test_host_memory_is_the_matrix_s_not_a_cell_s(write_matrix, text, where):
    with pytest.raises(UserError) as e:
        matrix.load(write_matrix(text))
    assert e.value.problems == [
        f"{where}.host_memory: a matrix states one host for all its cells; allowed: the top-level "
        "host_memory (or bench plan --host-memory SIZE)"
    ]


def test_plan_refuses_a_bad_host_memory_flag_before_any_work(write_matrix, capsys):
    assert main(["plan", str(write_matrix(PLAIN)), "--host-memory", "lots"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: --host-memory: 'lots' is not allowed; allowed: a size such as")


def _split_matrix(tmp_path: Path) -> Path:
    """matrices/split-gptj.yaml on one card (GPT-J-6B fp16 fits one RTX 3080 only with the
    host's help), with a 64 GiB host and a ZeRO-3-offload training cell beside it."""
    doc = yaml.safe_load((REPO / "matrices" / "split-gptj.yaml").read_text())
    doc.update(name="split-gptj-host", host_memory="64GiB", sweep={"gpus": [1]})
    doc["include"] = [
        {"task": "train", "split": "none", "model": "gpt2", "method": "zero3-offload", "gpus": 2, "seq": 128}
    ]
    path = tmp_path / "split-host.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _table(md: str) -> list[dict[str, str]]:
    lines = [x for x in md.splitlines() if x.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in x.strip("|").split("|")))) for x in lines[2:]]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan-host")
    path = _split_matrix(folder)
    for suffix in ("md", "html", "csv", "json"):
        assert main(["plan", str(path), "--jobs", "1", "-o", str(folder / f"plan.{suffix}")]) == 0
    return folder


def test_plan_offloads_a_split_cell_to_the_stated_host(planned):
    entries = json.loads((planned / "plan.json").read_text())
    split, train = sorted(entries, key=lambda e: e["cell"]["task"])
    assert split["cell"]["split"] == "layers" and train["cell"]["task"] == "train"
    p = split["predicted"]
    assert p["fits"] is True and "cpu" in p["placement"].values()
    offload = p["host_offload"]
    assert offload["modules"] == sum(d == "cpu" for d in p["placement"].values())
    assert 1 * GiB < offload["bytes"] < 10 * GiB and 0 < offload["share"] < 1
    assert 0 < offload["seconds"] <= p["step_time_parts"]["transfers"]  # the slowdown it states
    assert p["host_memory_bytes"] == 64 * GiB and p["host_fits"] is True
    assert p["host_node_bytes"] >= offload["bytes"]
    assert any("on the host (" in n and "% of the weights" in n for n in split["notes"])

    md = (planned / "plan.md").read_text()
    assert md.startswith("# Plan: split-gptj-host on rtx3080 (64 GiB host RAM)\n")
    rows = {r["Method"].split(",")[0]: r for r in _table(md)}
    row = rows["Inference (72 new tokens)"]
    assert row["Fits"] == "yes" and row["Fits host"] == "yes"
    assert row["On host (GiB)"] == f"{offload['bytes'] / GiB:.2f} ({100 * offload['share']:.0f}%)"
    assert row["Offload slowdown"].startswith("x") and f"+{offload['seconds']:.2f} s" in row["Offload slowdown"]
    assert "Offload slowdown: generate() time" in md and "stated host RAM (64 GiB" in md
    page = (planned / "plan.html").read_text()
    assert "<th>Fits host</th>" in page and "On host (GiB)</th>" in page and "Offload slowdown</th>" in page
    rows_csv = {r["cell_id"]: r for r in csv.DictReader(io.StringIO((planned / "plan.csv").read_text()))}
    one = rows_csv[split["cell_id"]]
    assert int(one["predicted.host_offload.bytes"]) == offload["bytes"]
    assert int(one["predicted.host_memory_bytes"]) == 64 * GiB and one["predicted.host_fits"] == "True"


def test_a_training_cell_gets_the_host_ram_verdict(planned):
    entries = json.loads((planned / "plan.json").read_text())
    [train] = [e for e in entries if e["cell"]["task"] == "train"]
    p = train["predicted"]
    assert p["host_memory_bytes"] == 64 * GiB and p["host_fits"] is (p["host_node_bytes"] <= 64 * GiB)
    assert "host_offload" not in p
    [row] = [r for r in _table((planned / "plan.md").read_text()) if r["Model"] == "gpt2"]
    assert row["Fits host"] == ("yes" if p["host_fits"] else "no")
    assert row["On host (GiB)"] == "–" and row["Offload slowdown"] == "–"
    csv_rows = {r["cell_id"]: r for r in csv.DictReader(io.StringIO((planned / "plan.csv").read_text()))}
    assert csv_rows[train["cell_id"]]["predicted.host_fits"] == str(p["host_fits"])


def test_the_flag_overrides_the_matrix_and_a_small_host_holds_nothing(tmp_path, capsys):
    path = _split_matrix(tmp_path)
    assert main(["plan", str(path), "--jobs", "1", "--json", "--host-memory", "1GiB"]) == 0  # a verdict, no error
    entries = json.loads(capsys.readouterr().out)
    split = next(e for e in entries if e["cell"]["task"] == "infer")["predicted"]
    train = next(e for e in entries if e["cell"]["task"] == "train")["predicted"]
    assert split["host_memory_bytes"] == GiB and split["fits"] is False and "disk" in split["placement"].values()
    assert train["host_memory_bytes"] == GiB and train["host_fits"] is False  # ZeRO-3 offload needs more


def test_without_a_host_the_split_cell_does_not_fit_and_no_host_columns_show(tmp_path, capsys):
    doc = yaml.safe_load(_split_matrix(tmp_path).read_text())
    del doc["host_memory"], doc["include"]
    path = tmp_path / "no-host.yaml"
    path.write_text(yaml.safe_dump(doc))
    main(["plan", str(path), "--jobs", "1"])
    out = capsys.readouterr().out
    [row] = _table(out)
    assert row["Fits"] == "no" and "Fits host" not in row and "On host (GiB)" not in row
    assert out.startswith("# Plan: split-gptj-host on rtx3080\n")


def test_bench_run_leaves_the_stated_host_aside_and_says_so(write_matrix, tmp_path, monkeypatch):
    from test_run_runner import FakeExecutor, make

    from bench.run import prediction

    monkeypatch.setattr(prediction, "predict", lambda cells: ({c.cell_id: None for c in cells}, "disabled in tests"))
    r = make(write_matrix("host_memory: 64GiB\n" + PLAIN), tmp_path, FakeExecutor())
    assert r.run() == 0
    assert "note: host_memory 64 GiB is a planning figure (bench plan); a run measures this host" in r.out.getvalue()
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "a100-80gb" / "host").glob("*.json")]
    assert len(records) == 2 and all("host_memory" not in json.dumps(rec["cell"]) for rec in records)
