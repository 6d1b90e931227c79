"""Reports that cannot mislead: emulated runs, CPU runs, stale predictions, plan output files.

- Rows run on a larger card capped at the target's memory say so (target,
  host card, cap), and their tokens/s and MFU are marked as the host card's
  (the shipped ``results/h200-2026-11-28``, run on an H200).
- CPU runs (``tests/data/smoke-cpu-run``: records written by ``bench run
  matrices/smoke-cpu.yaml --device cpu``) are reported as host RSS, with no
  GPU column and no GPU prediction error.
- A stored prediction made by another predictor version is predicted afresh
  by ``bench report`` (``--no-repredict``: marked stale), and the runner's
  predictions carry the version.
- ``bench plan -o FILE`` writes the format its suffix names; ``--max-batch``
  adds a column to every format.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from bench import cell as cellmod
from bench.cli import main
from bench.predict import version
from bench.report import freshness, hardware, render, table as tablemod
from bench.store import load_records

ROOT = Path(__file__).resolve().parents[1]
H200_RUNS = ROOT / "results" / "h200-2026-11-28"
SMOKE = ROOT / "tests" / "data" / "smoke-cpu-run"
GOLDEN_RECORDS = ROOT / "tests" / "golden" / "records"


def column(table: tablemod.Table, key: str) -> list[str]:
    i = [c.key for c in table.columns].index(key)
    return [row.cells[i] for row in table.rows]


def test_emulated_rows_name_the_target_the_host_card_and_the_cap():
    records = load_records([H200_RUNS / "rtx4090"])
    assert records and all(r["environment"]["emulated_target"] for r in records)
    table = tablemod.build(records)
    cap = records[0]["environment"]["target_memory_bytes"] / 2**30
    assert set(column(table, "gpu")) == {f"GeForce RTX 4090 (emulated on H200, capped at {cap:.2f} GiB)"}
    ok = [row for row in table.rows if row.record["status"] == "ok"]
    tokens = [c for c in column(table, "tokens") if c != "–"]
    assert len(tokens) == len(ok) and all(t.endswith(" (on H200)") for t in tokens)
    assert all(m.endswith(" (on H200)") for m in column(table, "mfu") if m != "–")
    assert any(n.startswith("Emulated: 9 rows ran on H200") for n in table.notes)


def test_an_emulated_runs_speed_is_compared_with_the_host_cards_prediction():
    from bench.predict.speed import speed
    from bench.report import speed_plot

    records = [r for r in load_records([H200_RUNS / "rtx4090"]) if r["status"] == "ok" and r["predicted"]][:2]
    fresh = freshness.refresh(records)
    for r in fresh:
        host = r["predicted_on_host"]
        want = speed(cellmod.replace(cellmod.normalize(r["cell"]), gpu="h200")).tokens_per_second
        assert host["gpu"] == "h200" and host["tokens_per_second"] == pytest.approx(want)
        assert r["predicted"]["tokens_per_second"] != pytest.approx(want)  # the target's (RTX 4090) differs
    assert [p for _, _, p in speed_plot.pairs(fresh)] == [r["predicted_on_host"]["tokens_per_second"] for r in fresh]
    figure = speed_plot.predicted_vs_measured_throughput(fresh, {"LoRA r=16": "C0", "Full": "C1"})
    assert figure is not None and figure.points == 2 and "predicted for h200" in figure.svg
    assert all("predicted_on_host" not in r for r in freshness.refresh(records, repredict=False))


def test_a_run_on_its_own_card_is_not_marked():
    table = tablemod.build(load_records([GOLDEN_RECORDS]))
    assert not any("emulated" in c or "(on " in c for row in table.rows for c in row.cells)
    assert not any(n.startswith("Emulated") for n in table.notes)


def test_cpu_runs_are_reported_as_host_rss_without_gpu_columns():
    records = load_records([SMOKE])
    assert len(records) == 10 and all(r["environment"]["device"] == "cpu" for r in records)
    # the runner compared the GPU prediction with host RSS: hundreds of percent, meaningless
    assert max(abs(r["prediction_error"]) for r in records) > 1
    text = render(records, "md")
    header = text.splitlines()[0]
    assert "Peak host RSS (GiB)" in header
    for gone in ("GPU", "Predicted", "Error", "MFU", "VRAM"):
        assert gone not in header
    assert "A100" not in text and "%" not in "".join(text.splitlines()[2:12])
    table = tablemod.build(records)
    peaks = [float(p) for p in column(table, "peak")]
    assert peaks == [
        round(r["measured"]["peak_host_rss_bytes"] / 2**30, 2) for r in map(lambda x: x.record, table.rows)
    ]
    assert any(n.startswith("CPU runs: 10 rows") for n in table.notes)
    page = render(records, "html")
    assert "fig-pred" not in page and "No figure of predicted against measured peak" in page
    assert page.count('class="pt"') == 2 * 9  # peak and throughput points of the 9 training cells


def test_a_cpu_row_beside_gpu_rows_has_no_prediction_error():
    records = load_records([GOLDEN_RECORDS]) + load_records([SMOKE])[:1]
    table = tablemod.build(records)
    row = next(r for r in table.rows if hardware.is_cpu(r.record))
    values = dict(zip([c.key for c in table.columns], row.cells))
    assert values["gpu"] == "CPU (host RSS)" and values["error"] == "–" and values["predicted"] == "–"
    assert values["peak"] == f"{row.record['measured']['peak_host_rss_bytes'] / 2**30:.2f}"


def _gpu_record(tmp_path: Path, predicted: dict) -> Path:
    """A tiny-gpt2 record as a GPU run writes it, with ``predicted`` as stored."""
    cell = cellmod.normalize({"model": "tiny-gpt2", "gpu": "h200", "precision": "fp32", "batch": 2, "seq": 32})
    rec = {
        "schema_version": 1,
        "cell_id": cell.cell_id,
        "slug": cell.slug,
        "label": "",
        "matrix": "m",
        "cell": cell.to_dict(),
        "status": "ok",
        "environment": {"device": "cuda", "gpu_name": "NVIDIA H200", "emulated_target": False},
        "measured": {"peak_nvml_process_bytes": 900 * 2**20, "tokens_per_second": 1000.0},
        "predicted": predicted,
        "prediction_error": (predicted["peak_bytes"] - 900 * 2**20) / (900 * 2**20),
    }
    folder = tmp_path / "results"
    folder.mkdir(exist_ok=True)
    (folder / f"{cell.cell_id}.json").write_text(json.dumps(rec))
    return folder


def test_stale_predictions_are_predicted_afresh(tmp_path, capsys):
    from bench.predict import predict

    folder = _gpu_record(tmp_path, {"peak_bytes": 2**30, "fits": True, "predictor_version": "0123456789abcdef"})
    [rec] = load_records([folder])
    assert freshness.stale(rec)
    fresh = predict(cellmod.normalize(rec["cell"])).peak_bytes
    assert abs(fresh - 2**30) > 2**24  # the stored prediction is not the fresh one
    assert main(["report", str(folder), "--format", "csv"]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert int(row["predicted.peak_bytes"]) == fresh
    assert row["predicted.predictor_version"] == version.current()
    assert float(row["prediction_error"]) == pytest.approx((fresh - 900 * 2**20) / (900 * 2**20))
    assert main(["report", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"{fresh / 2**30:.2f}" in out and "predicted afresh" in out and "(stale)" not in out


def test_no_repredict_marks_stale_predictions(tmp_path, capsys):
    folder = _gpu_record(tmp_path, {"peak_bytes": 2**30, "fits": True})  # no version: an older predictor
    assert main(["report", str(folder), "--no-repredict"]) == 0
    out = capsys.readouterr().out
    assert "1.00 (stale)" in out and "+13.8% (stale)" in out and "marked stale" in out


def test_a_current_prediction_is_kept():
    rec = {"cell": {}, "predicted": {"peak_bytes": 5, version.KEY: version.current()}}
    assert not freshness.stale(rec)
    assert freshness.refresh([rec]) == [rec]


def test_a_cell_this_bench_cannot_build_is_marked_stale_not_fatal():
    rec = {"cell_id": "x", "cell": {"model": "no-such-model-xyz", "gpu": "h200"}, "status": "ok",
           "predicted": {"peak_bytes": 5}}  # fmt: skip
    [out] = freshness.refresh([rec])
    assert out["prediction_stale"] and out["predicted"] == {"peak_bytes": 5}


def test_the_runners_predictions_carry_the_predictor_version():
    from bench.predict.batch import predict_in_subprocess

    cell = cellmod.normalize({"model": "tiny-gpt2", "gpu": "h200", "batch": 1, "seq": 16})
    [answer] = predict_in_subprocess([cell])
    assert answer["predicted"][version.KEY] == version.current()
    assert len(version.current()) == 16 and int(version.current(), 16) >= 0


MATRIX = """\
name: tiny-plan
gpu: v100-16gb
defaults: {precision: fp16, seq: 1024}
sweep:
  model: [gpt2]
  method: [full, lora]
  batch: [2, 4]
"""


@pytest.fixture(scope="module")
def plan_files(tmp_path_factory):
    """``bench plan --max-batch -o`` in every format, and the JSON of ``--json``."""
    folder = tmp_path_factory.mktemp("plan")
    matrix = folder / "m.yaml"
    matrix.write_text(MATRIX)
    for suffix in ("md", "html", "csv", "json"):
        assert main(["plan", str(matrix), "--max-batch", "-o", str(folder / f"plan.{suffix}")]) == 0
    return folder


def test_plan_output_format_follows_the_suffix(plan_files):
    assert (plan_files / "plan.md").read_text().startswith("# Plan: tiny-plan on v100-16gb\n\n| Model")
    page = (plan_files / "plan.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and '<figure id="fig-parts"' in page
    assert (plan_files / "plan.csv").read_text().startswith("cell_id,slug,matrix,status,")
    entries = json.loads((plan_files / "plan.json").read_text())
    assert len(entries) == 4 and all(e["predicted"][version.KEY] == version.current() for e in entries)


def test_max_batch_is_a_column_of_every_plan_format(plan_files):
    entries = json.loads((plan_files / "plan.json").read_text())
    best = {e["cell_id"]: e["predicted"]["max_batch"] for e in entries}
    assert all(b >= 1 for b in best.values()) and len(set(best.values())) == 2  # full and LoRA differ
    md = (plan_files / "plan.md").read_text().splitlines()
    header = [c.strip() for c in md[2].strip("|").split("|")]
    i = header.index("Max batch")
    assert sorted(int(line.strip("|").split("|")[i]) for line in md[4:8]) == sorted(best.values())
    assert '<th class="num">Max batch</th>' in (plan_files / "plan.html").read_text()
    rows = list(csv.DictReader(io.StringIO((plan_files / "plan.csv").read_text())))
    assert {r["cell_id"]: int(r["predicted.max_batch"]) for r in rows} == best


@pytest.mark.parametrize("name", ["plan.pdf", "plan", "plan.txt"])
def test_plan_refuses_an_unknown_suffix_before_any_work(name, tmp_path, capsys):
    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX)
    assert main(["plan", str(matrix), "-o", str(tmp_path / name)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: -o {tmp_path / name}: cannot tell the format")
    assert ".md, .markdown, .html, .htm, .csv, .json" in captured.err
    assert not (tmp_path / name).exists()
