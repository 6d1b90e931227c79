"""The calculator page in a real Chromium against a real ``bench serve``: what a user reads
equals ``bench predict --json`` for the same cell, a bad field's message sits beside that field,
a new model shows that it is being traced, and the results report opens.

The screenshot of the filled page goes to /tmp/shots/serve.png.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import browser
import serving

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30
SHOT = Path("/tmp/shots/serve.png")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def settle(p) -> None:
    """Wait until the page shows an answer for the form as it is now (the verdict is no longer waiting)."""
    p.wait_for_timeout(400)  # the form's debounce
    # the page's own update for the form as it is now, awaited to its end: answers to the cells seen
    # while the fields were filled one by one are then ignored by the page, however slow the machine
    p.evaluate("update()")
    p.wait_for_function("!document.getElementById('verdict').classList.contains('wait')", timeout=300_000)


def test_the_page_shows_what_bench_predict_says(tmp_path):
    flags = ["--model", "gpt2", "--method", "lora", "--precision", "bf16", "--batch", "2", "--seq", "256"]
    flags += ["--grad-accum", "2", "--grad-ckpt", "--gpu", "a100-40gb", "--tokens", "1000000"]
    expected = json.loads(cli("predict", *flags, "--json").stdout)["predicted"]
    bad_batch = cli("predict", "--model", "gpt2", "--batch", "0", "--gpu", "a100-40gb").stderr.strip()
    env = {"BENCH_CACHE_DIR": str(tmp_path / "traces")}  # empty: the page's first model is traced
    with serving.server("--results", "results/h200-2026-11-28", env=env) as base, browser.page(1280, 1000) as p:
        p.goto(base + "/")
        p.wait_for_function("document.getElementById('verdict').textContent.includes('tracing gpt2')", timeout=120_000)
        settle(p)
        p.fill("#model", "gpt2")
        p.select_option("#method", "lora")
        p.select_option("#precision", "bf16")
        p.fill("#batch", "2")
        p.fill("#seq", "256")
        p.fill("#grad_accum", "2")
        p.check("#grad_ckpt")
        p.select_option("#gpu", "a100-40gb")
        p.fill("#gpus", "1")
        p.fill("#tokens", "1000000")
        settle(p)
        p.wait_for_selector("#cards tr[data-gpu='a100-40gb'] td.mb:not(:has-text('…'))", timeout=300_000)

        # the verdict and the breakdown: exact bytes behind the text, and the text as GiB
        assert p.inner_text("#fits") == ("fits" if expected["fits"] else "does NOT fit")
        for key in ("peak", "capacity", "headroom"):
            n = int(p.get_attribute(f"#{key}", "data-bytes"))
            assert n == expected[f"{key}_bytes"]
            assert p.inner_text(f"#{key}").lstrip("+") == f"{n / GiB:.2f}"
        parts = {
            r.get_attribute("data-part"): int(r.get_attribute("data-bytes"))
            for r in p.query_selector_all("#parts tr[data-part]")
        }
        assert parts == expected["breakdown"]
        shown = {s.get_attribute("data-part") for s in p.query_selector_all("#bar .seg")}
        assert shown == {k for k, v in expected["breakdown"].items() if v > 0}
        assert p.inner_text("#step") == f"{expected['step_time_seconds']:.3f}"
        assert p.inner_text("#tps") == str(round(expected["tokens_per_second"]))
        assert p.inner_text("#cost") == f"${expected['run']['usd']:.2f}"
        row = p.query_selector("#cards tr[data-gpu='a100-40gb']")
        cells = [c.inner_text() for c in row.query_selector_all("td")]
        assert cells[2] == f"{expected['peak_bytes'] / GiB:.2f}" and cells[3] == "yes"
        assert int(cells[5]) >= 2  # the largest batch that fits: batch 2 does
        assert len(p.query_selector_all("#cards tr[data-gpu]")) == len(
            json.loads(cli("predict", *flags[:-2], "--gpu", "all", "--json").stdout)
        )
        command = p.inner_text("#command")
        assert command == "bench predict " + " ".join(
            flags[:-4] + ["--gpu", "a100-40gb", "--tokens", "1000000", "--json"]
        )
        assert "grad_ckpt: true" in p.inner_text("#matrix")
        SHOT.parent.mkdir(parents=True, exist_ok=True)
        p.screenshot(path=str(SHOT), full_page=True)

        # a bad field: the CLI's line, beside the field it names
        p.fill("#batch", "0")
        settle(p)
        err = p.locator(".err[data-for='batch']")
        assert f"error: {err.inner_text()}" == bad_batch
        box, field = err.bounding_box(), p.locator("#batch").bounding_box()
        assert 0 <= box["y"] - (field["y"] + field["height"]) < 40 and abs(box["x"] - field["x"]) < 40
        assert "bad" in (p.get_attribute("#f-batch", "class") or "")
        assert "stale" in (p.get_attribute("#out", "class") or "")  # the last good cell's figures, dimmed
        p.fill("#batch", "2")
        p.fill("#model", "gtp2")
        settle(p)
        assert "not in the catalog" in p.inner_text(".err[data-for='model']")
        assert p.inner_text(".err[data-for='batch']") == ""

        # the results report of the folder given at start
        with p.context.expect_page() as opened:
            p.click("#results-nav a")
        report = opened.value
        report.wait_for_load_state()
        assert "bench report" in report.title() and report.locator("table tbody tr").count() > 3
