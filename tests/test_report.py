"""Reports: golden Markdown/CSV output, row order, failed cells kept, HTML self-contained.

The golden files under ``tests/golden/`` were rendered from the records in
``tests/golden/records/`` with the pinned catalog below; after an intended
change of the output, regenerate them with ``BENCH_UPDATE_GOLDEN=1 pytest tests/test_report.py``
and review the diff.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cell as cellmod
from bench.cli import main
from bench.report import labels, plan_record, render, render_plan, table as tablemod
from bench.report.catalog import Catalog
from bench.store import load_records

GOLDEN = Path(__file__).parent / "golden"
RECORDS = GOLDEN / "records"
EXAMPLE = Path(__file__).parents[1] / "results" / "h200-example"

CATALOG = Catalog(
    params={"gpt2": 124_000_000, "gpt2-medium": 355_000_000, "gpt2-xl": 1_558_000_000}.get,
    capacity={"h200": 143_771 * 2**20}.get,
    gpu_label=lambda g: {"h200": "H200 141GB"}.get(g, g),
)


def records() -> list[dict]:
    return load_records([RECORDS])


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs; see the module docstring to regenerate"


@pytest.mark.parametrize(
    "name, fmt, mode",
    [
        ("report.md", "md", "measured"),
        ("report.csv", "csv", "measured"),
        ("plan.md", "md", "plan"),
    ],
)
def test_golden(name, fmt, mode):
    check_golden(name, render(records(), fmt, mode, catalog=CATALOG))


def test_render_is_pure_and_order_independent():
    recs = records()
    assert render(recs, catalog=CATALOG) == render(list(reversed(recs)), catalog=CATALOG)


def test_failed_cells_are_kept_as_rows():
    table = tablemod.build(records(), catalog=CATALOG)
    status = [c.key for c in table.columns].index("status")
    assert sorted(r.cells[status] for r in table.rows) == ["OOM", "error", "ok", "ok", "ok", "skipped", "timeout"]
    oom = next(r for r in table.rows if r.record["status"] == "oom")
    assert oom.cells[[c.key for c in table.columns].index("peak")].startswith(">")


def test_rows_grouped_by_model_smallest_first():
    table = tablemod.build(records(), catalog=CATALOG)
    assert [g for g, _ in table.groups] == ["gpt2", "gpt2-medium", "gpt2-xl"]
    xl = [r.record["cell"] for r in dict(table.groups)["gpt2-xl"]]
    # training before inference, no strategy before ZeRO-3, then precision (fp32, fp16, bf16, pure-bf16)
    assert [(c["task"], c["strategy"], c["precision"]) for c in xl] == [
        ("train", "none", "fp32"),
        ("train", "none", "bf16"),
        ("train", "zero3", "bf16"),
        ("infer", "none", "bf16"),
    ]


def test_unknown_model_sorts_last_unless_the_run_counted_it():
    recs = records()
    odd = json.loads(json.dumps(next(r for r in recs if r["status"] == "ok")))
    odd["cell"]["model"] = "aaa-unknown"
    table = tablemod.build(recs + [odd], catalog=CATALOG)
    assert table.rows[-1].group == "aaa-unknown" and table.rows[-1].cells[1] == "–"
    odd["measured"]["n_params"] = 66_000_000
    table = tablemod.build(recs + [odd], catalog=CATALOG)
    assert table.rows[0].group == "aaa-unknown" and table.rows[0].cells[1] == "66M"


def test_plan_mode_has_predicted_columns_only():
    cell = cellmod.normalize({"model": "gpt2", "gpu": "h200", "method": "lora", "precision": "bf16", "batch": 8})
    rec = plan_record(
        cell,
        {
            "peak_bytes": 3 * 2**30,
            "fits": True,
            "capacity_bytes": 12 * 2**30,
            "host_bytes": 3 * 2**30,
            "host_node_bytes": 6 * 2**30,
        },
    )
    text = render_plan(
        [rec], "md", catalog=Catalog(params=lambda m: None, capacity=lambda g: None, gpu_label=lambda g: g)
    )
    header = text.splitlines()[0]
    assert "Predicted per GPU (GiB)" in header and "Fits" in header and "% of GPU" in header
    assert "Host RAM per node (GiB)" in header
    assert "Peak VRAM" not in header and "Tokens/s" not in header
    row = [c.strip() for c in text.splitlines()[2].strip("|").split("|")]
    assert row[-4:] == ["3.00", "25.0%", "yes", "6.00"]


def test_labels():
    assert [labels.params(n) for n in (1_558_000_000, 355_000_000, 66_000, 7_000_000_000, None)] == [
        "1.6B",
        "355M",
        "66K",
        "7B",
        "–",
    ]
    assert (
        labels.method({"tuning": "full", "strategy": "zero3", "offload": "all", "gpus": 4})
        == "Full, ZeRO-3, param + optimizer offload, 4 GPUs"
    )
    assert labels.percent(-0.0321, signed=True) == "-3.2%"


def test_html_is_self_contained_with_its_figures():
    page = render(records(), "html", catalog=CATALOG)
    assert re.findall(r'<figure id="fig-([a-z]+)"', page) == ["parts", "peak", "pred", "tput"]
    assert page.count("<svg") == 4
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "url(http" not in page and "@import" not in page and "<link" not in page
    assert "<script src" not in page and page.count("<script>") == 1  # the inline sorting/filtering script
    assert "<!DOCTYPE" not in page.split("<html", 1)[1]  # no nested SVG prolog
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "element ids repeat across the inline SVGs"
    assert "OOM" in page and "skipped" in page


def test_plan_html_has_the_prediction_figures():
    page = render(records(), "html", "plan", catalog=CATALOG)
    assert re.findall(r'<figure id="fig-([a-z]+)"', page) == ["parts", "peak"]
    assert "Fits" in page and "fig-pred" not in page


def test_pareto_front():
    from bench.report.plots import pareto

    assert pareto([(10, 5), (5, 3), (6, 2), (20, 9), (12, 4)]) == [(5, 3), (10, 5), (20, 9)]


def test_cli_report_formats(tmp_path, capsys):
    assert main(["report", str(RECORDS), "--no-repredict"]) == 0
    assert capsys.readouterr().out.startswith("| Model")
    out = tmp_path / "sub" / "r.html"
    assert main(["report", str(RECORDS), "-o", str(out), "--no-repredict"]) == 0
    assert out.read_text().count("<svg") == 4
    out = tmp_path / "r.txt"
    assert main(["report", str(RECORDS), "-o", str(out), "--format", "csv", "--no-repredict"]) == 0
    assert out.read_text().startswith("cell_id,slug,matrix,status,")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["report", "no/such/folder"], "does not exist"),
        (["report", "{tmp}"], "no result records"),
        (["report", str(RECORDS), "-o", "{tmp}/r.pdf"], "cannot tell the format"),
        (["report", "{tmp}/bad.json"], "not a readable result file"),
    ],
)
def test_cli_report_user_errors(argv, message, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    if "{tmp}" in argv[1] and not argv[1].endswith(".json"):
        (tmp_path / "bad.json").unlink()
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_report_verb_never_imports_torch():
    """The verbs only read files; (``bench.cli`` itself also loads the other verbs' modules)."""
    code = (
        "import argparse, sys\n"
        "from bench.report import cli\n"
        "p = argparse.ArgumentParser(); sub = p.add_subparsers(); cli.register(sub)\n"
        f"args = p.parse_args(['report', {str(RECORDS)!r}, '--format', 'html', '-o', {os.devnull!r}]); args.func(args)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.skipif(not EXAMPLE.is_dir(), reason="example results not imported")
def test_example_results_render():
    recs = load_records([EXAMPLE])
    assert len(recs) >= 20 and all(r["environment"]["provenance"]["row_id"] for r in recs)
    text = render(recs)
    assert text.count("\n| gpt2") == len(recs)
