"""The HTML report and plan page in a real browser (headless Chromium, ``tests/browser.py``).

The page renders offline from a file; every figure has one tooltip-carrying
point per record it should show (counted against the records, not against
what the page says about itself); clicking a header sorts the table, typing
in the filter box hides the rows that do not match.
"""

from __future__ import annotations

from pathlib import Path

import browser
import pytest

from bench.report import hardware, render, render_html
from bench.store import load_records

ROOT = Path(__file__).resolve().parents[1]
H200_RUNS = ROOT / "results" / "h200-2026-11-28"
GOLDEN_RECORDS = ROOT / "tests" / "golden" / "records"


def _train(r) -> bool:
    return r["cell"].get("task", "train") == "train"


def expected_points(records) -> dict[str, set[str]]:
    """Cell ids each figure must draw, from the records themselves."""
    m = lambda r: r.get("measured") or {}  # noqa: E731
    p = lambda r: r.get("predicted") or {}  # noqa: E731
    gpu = [r for r in records if not hardware.is_cpu(r)]
    return {
        "parts": {r["cell_id"] for r in gpu if p(r).get("breakdown") or m(r).get("peak_nvml_process_bytes")},
        "peak": {
            r["cell_id"]
            for r in records
            if _train(r) and (r["status"] == "oom" or (r["status"] == "ok" and hardware.measured_peak(r) is not None))
        },
        "pred": {
            r["cell_id"]
            for r in gpu
            if r["status"] == "ok" and m(r).get("peak_nvml_process_bytes") and p(r).get("peak_bytes")
        },
        "tput": {
            r["cell_id"]
            for r in records
            if r["status"] == "ok" and _train(r) and hardware.measured_peak(r) and m(r).get("tokens_per_second")
        },
    }


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    records = load_records([H200_RUNS])
    path = tmp_path_factory.mktemp("page") / "report.html"
    path.write_text(render_html(records, "H200 runs"))
    return records, path


def points(p, figure: str) -> dict[str, int]:
    """cell id -> points drawn for it in one figure."""
    ids = p.eval_on_selector_all(f"#fig-{figure} g.pt", "els => els.map(e => e.dataset.cell)")
    out: dict[str, int] = {}
    for cell in ids:
        out[cell] = out.get(cell, 0) + 1
    return out


def visible_rows(p) -> list[list[str]]:
    return p.eval_on_selector_all(
        "#cells tbody tr:not([hidden])", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))"
    )


def test_every_figure_has_its_points(report_page):
    records, path = report_page
    want = expected_points(records)
    assert all(want.values())
    with browser.page() as p:
        p.goto(path.as_uri())
        assert p.title() == "H200 runs"
        figures = p.eval_on_selector_all("figure", "els => els.map(e => e.id)")
        speed = any((r.get("predicted") or {}).get("tokens_per_second") for r in records)
        assert figures == ["fig-parts", "fig-peak", "fig-pred", "fig-tput"] + (["fig-speed"] if speed else [])
        for fig in figures:
            box = p.locator(f"#{fig} svg").bounding_box()
            assert box and box["width"] > 300 and box["height"] > 200, fig
        for fig, cells in want.items():
            got = points(p, fig)
            assert set(got) == cells, fig
            if fig != "parts":
                assert all(n == 1 for n in got.values()), fig
        # the per-part bars: a predicted segment per non-zero part, a measured bar where a peak was measured
        got = p.eval_on_selector_all("#fig-parts g.pt.predicted", "els => new Set(els.map(e => e.dataset.cell)).size")
        assert got == sum(bool((r.get("predicted") or {}).get("breakdown")) for r in records)
        untitled = p.eval_on_selector_all(
            "g.pt", "els => els.filter(e => !e.querySelector('title')?.textContent).length"
        )
        assert untitled == 0  # every point has its tooltip
        t5 = next(r for r in records if r["cell"]["model"] == "flan-t5-large")
        tip = p.text_content(f'#fig-pred g.pt[data-cell="{t5["cell_id"]}"] title')
        assert "flan-t5-large" in tip and "error" in tip


def test_sorting_by_a_numeric_column(report_page):
    records, path = report_page
    with browser.page() as p:
        p.goto(path.as_uri())
        heads = p.eval_on_selector_all("#cells thead th", "ths => ths.map(t => t.textContent)")
        i = heads.index("Peak VRAM per GPU (GiB)")
        p.click(f"#cells thead th:nth-child({i + 1})")
        values = [float(r[i].lstrip(">")) for r in visible_rows(p)]
        assert len(values) == len(records) and values == sorted(values)
        p.click(f"#cells thead th:nth-child({i + 1})")
        assert [float(r[i].lstrip(">")) for r in visible_rows(p)] == sorted(values, reverse=True)
        j = heads.index("Model")
        p.click(f"#cells thead th:nth-child({j + 1})")
        models = [r[j] for r in visible_rows(p)]
        assert models == sorted(models, key=str.lower)


def test_filtering_rows(report_page):
    records, path = report_page
    lora = sum(r["cell"]["tuning"] == "lora" and r["cell"]["task"] == "train" for r in records)
    with browser.page() as p:
        p.goto(path.as_uri())
        assert p.text_content("#shown") == f"{len(records)} of {len(records)} rows"
        p.fill("#filter", "lora")
        rows = visible_rows(p)
        assert len(rows) == lora and all("LoRA" in " ".join(r) for r in rows)
        assert p.text_content("#shown") == f"{lora} of {len(records)} rows"
        p.fill("#filter", "rtx 4090 -oom")
        rows = visible_rows(p)
        want = sum(r["cell"]["gpu"] == "rtx4090" and r["status"] != "oom" for r in records)
        assert len(rows) == want and not any("OOM" in r for r in rows)
        p.fill("#filter", "")
        assert len(visible_rows(p)) == len(records)


def test_plan_page_has_the_prediction_figures():
    records = load_records([GOLDEN_RECORDS])
    plan = [{**r, "status": None, "measured": None, "environment": None} for r in records]
    page = render(plan, "html", "plan")
    with_breakdown = {r["cell_id"] for r in plan if (r.get("predicted") or {}).get("breakdown")}
    predicted_train = {r["cell_id"] for r in plan if _train(r) and (r.get("predicted") or {}).get("peak_bytes")}
    with browser.page() as p:
        p.set_content(page)
        assert p.eval_on_selector_all("figure", "els => els.map(e => e.id)") == ["fig-parts", "fig-peak"]
        assert set(points(p, "parts")) == with_breakdown
        assert set(points(p, "peak")) == predicted_train
        assert p.text_content("#shown") == f"{len(plan)} of {len(plan)} rows"
