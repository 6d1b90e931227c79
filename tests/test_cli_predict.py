"""``bench predict`` says what it assumed, ``--gpu all`` is a real table that honours
``--max-batch``, GPU spellings resolve through the CLI, and long commands show progress on a
terminal only."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench import cell as cellmod, gpus
from bench.cli import main

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = {f.name: f.default for f in dataclasses.fields(cellmod.Cell)}


def test_predict_prints_the_values_it_assumed(capsys):
    assert main(["predict", "--model", "gpt2", "--method", "lora", "--gpu", "rtx4090"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    keys = ("precision", "seq", "batch", "grad_accum", "optimizer", "lora_r")
    expected = ", ".join(f"{k} {DEFAULTS[k]}" for k in keys)
    assert first == f"assumed: {expected} (flags you did not give)"

    args = ["predict", "--model", "tiny-gpt2", "--precision", "bf16", "--seq", "64", "--gpu", "h200", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["assumed"] == {k: DEFAULTS[k] for k in ("batch", "grad_accum", "optimizer")} | {"method": "full"}
    assert out["cell"]["precision"] == "bf16"


def test_an_assumed_value_at_fault_says_it_was_assumed(capsys):
    assert main(["predict", "--model", "tiny-gpt2", "--gpu", "h200"]) == 2  # 128 positions, seq 512 assumed
    err = capsys.readouterr().err
    assert err.startswith(f"error: seq: {DEFAULTS['seq']} exceeds tiny-gpt2's 128 positions")
    assert err.endswith("(assumed: --seq not given)\n") and err.count("\n") == 1


def test_nothing_is_assumed_when_everything_is_given(capsys):
    args = ["predict", "--model", "tiny-gpt2", "--method", "full", "--precision", "fp16", "--seq", "32"]
    args += ["--batch", "2", "--grad-accum", "1", "--optimizer", "sgd", "--gpu", "h200"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("tiny-gpt2-train-full-fp16-b2-s32 on h200")


def test_a_job_file_counts_as_given(repo, capsys):
    job = repo / "tests" / "data" / "jobs" / "axolotl_qlora.yml"
    assert main(["predict", "--from", str(job), "--gpu", "a100-80gb", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "precision" not in out["assumed"] and "seq" not in out["assumed"]  # the file sets both


def table_rows(text: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = text.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("gpu "))
    assert set(lines[header_at + 1]) == {"-", " "}  # tabulate's rule
    header = [h.strip() for h in lines[header_at].split("  ") if h.strip()]
    rows = {}
    for line in lines[header_at + 2 :]:
        if line.startswith("note:"):
            break
        cells = line.split()
        rows[cells[0]] = cells
    return header, rows


def test_gpu_all_is_a_table_of_every_card_and_honours_max_batch(capsys):
    from bench.predict import max_batch

    args = ["predict", "--model", "gpt2", "--seq", "1024", "--precision", "fp16", "--gpu", "all", "--max-batch"]
    assert main(args) == 0
    header, rows = table_rows(capsys.readouterr().out)
    assert header == [
        "gpu",
        "memory GiB",
        "peak GiB",
        "verdict",
        "headroom GiB",
        "host RAM GiB",
        "max batch",
        "step s",
        "tokens/s",
    ]
    assert set(rows) == set(gpus.names())
    base = cellmod.normalize({"model": "gpt2", "gpu": "h200", "seq": 1024, "precision": "fp16"})
    for card in ("rtx3080", "h200"):
        assert int(rows[card][6]) == max_batch(cellmod.replace(base, gpu=card)) > 1
    assert int(rows["h200"][6]) > int(rows["rtx3080"][6])
    fitting = [r for r in rows.values() if r[3] == "fits"]
    assert fitting and all(float(r[7]) > 0 and float(r[8]) > 0 for r in fitting)  # step time where it fits


def test_gpu_all_without_max_batch_has_no_such_column_and_ranks_by_cost_with_tokens(capsys):
    args = ["predict", "--model", "tiny-gpt2", "--seq", "32", "--gpu", "all", "--tokens", "1000000"]
    assert main(args) == 0
    out = capsys.readouterr().out
    header, rows = table_rows(out)
    assert "max batch" not in header and header[-2:] == ["time", "USD"]
    assert "cheapest first" in out
    priced = [float(r[-1]) for r in rows.values() if r[-1] != "-"]
    assert len(priced) >= 5 and priced == sorted(priced)


def test_gpu_all_json_carries_max_batch(capsys):
    args = ["predict", "--model", "tiny-gpt2", "--seq", "32", "--gpu", "all", "--max-batch", "--json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["gpu"] for r in rows} == set(gpus.names())
    assert all(r["max_batch"] >= 1 for r in rows if r["fits"])


@pytest.mark.parametrize(
    "spelling,name",
    [
        ("4090", "rtx4090"),
        ("RTX 4090", "rtx4090"),
        ("a6000", "rtx-a6000"),
        ("H100 SXM", "h100-80gb"),
        ("A100 80GB", "a100-80gb"),
    ],
)
def test_gpu_spellings_resolve_through_the_cli(spelling, name, capsys):
    assert main(["predict", "--model", "tiny-gpt2", "--seq", "32", "--gpu", spelling, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predicted"]["gpu"] == name


@pytest.mark.parametrize(
    "spelling,cards",
    [("a100", ["a100-40gb", "a100-80gb"]), ("h100", ["h100-80gb", "h100-nvl-94gb", "h100-pcie-80gb"])],
)
def test_an_ambiguous_gpu_is_one_line_naming_the_cards(spelling, cards, capsys):
    assert main(["predict", "--model", "tiny-gpt2", "--gpu", spelling]) == 2
    err = capsys.readouterr().err
    assert err == f"error: gpu: {spelling!r} is ambiguous; allowed: {' or '.join(cards)}\n"


def test_a_misspelt_gpu_gets_a_did_you_mean(capsys):
    assert main(["predict", "--model", "tiny-gpt2", "--gpu", "rtx4900"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(did you mean rtx4090" in err


def read_pty(master: int, into: list[bytes]) -> None:
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            return
        if not data:
            return
        into.append(data)


def plan(matrix: Path, stderr_tty: bool) -> tuple[int, str, str]:
    cmd = [sys.executable, "-m", "bench", "plan", str(matrix)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not stderr_tty:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        return r.returncode, r.stdout, r.stderr
    master, slave = pty.openpty()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=ROOT)
    os.close(slave)
    chunks: list[bytes] = []
    reader = threading.Thread(target=read_pty, args=(master, chunks))
    reader.start()
    out, _ = p.communicate(timeout=300)
    reader.join()
    os.close(master)
    return p.returncode, out.decode(), b"".join(chunks).decode()


TINY = "name: tiny\ngpu: h200\nsweep:\n  model: [tiny-gpt2]\n  batch: [1, 2, 3]\n  seq: [40]\n"


def test_plan_shows_a_tqdm_bar_on_a_terminal(write_matrix):
    code, out, err = plan(write_matrix(TINY), stderr_tty=True)
    assert code == 0 and "# Plan: tiny on h200" in out
    assert "plan tiny:" in err and "0/3" in err and "cell" in err and "\r" in err
    assert "\r" not in out  # the table is untouched by the bar


def test_plan_is_quiet_when_stderr_is_not_a_terminal(write_matrix):
    code, out, err = plan(write_matrix(TINY), stderr_tty=False)
    assert code == 0 and "# Plan: tiny on h200" in out
    assert err == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_run_progress_draws_a_bar_on_a_terminal_and_nothing_elsewhere():
    from bench.run.progress import Progress

    record = {"status": "ok", "slug": "cell-a", "measured": {"wall_seconds": 1.0}}
    for err, drawn in ((Terminal(), True), (io.StringIO(), False)):
        out = io.StringIO()
        progress = Progress(2, out=out, err=err)
        progress.cell_done(record)
        progress.cell_done({**record, "slug": "cell-b"})
        progress.cell_done({**record, "slug": "cell-c"})  # a bisection grows the total
        progress.finish()
        assert out.getvalue().splitlines() == [
            "[1/2]  ok        cell-a  1.0 s",
            "[2/2]  ok        cell-b  1.0 s",
            "[3/3]  ok        cell-c  1.0 s",
        ]
        bar = err.getvalue()
        assert ("run:" in bar and "0/2" in bar and "cell/s" in bar) is drawn
        assert (bar == "") is not drawn


def test_autotune_prints_its_two_lists_as_tables(capsys):
    args = ["autotune", "--model", "tiny-gpt2", "--seq", "32", "--global-batch", "4", "--gpu", "rtx4090", "--top", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for title in ("fastest:", "cheapest:"):
        lines = out.split(f"\n{title}\n")[1].splitlines()
        assert lines[0].split()[:3] == ["gpu", "gpus", "method"] and set(lines[1]) == {"-", " "}
        rows = [line.split() for line in lines[2:4]]
        assert rows and all(r[0] == "rtx4090" and int(r[3]) * int(r[4]) * int(r[1]) == 4 for r in rows)


def test_gpu_all_counts_the_cards_on_a_terminal_only(monkeypatch, capsys):
    from bench import progressbar

    drawn = []
    real = progressbar.bar

    def bar(total, desc, file=None):
        b = real(total, desc, Terminal())
        drawn.append(b)
        return b

    monkeypatch.setattr(progressbar, "bar", bar)
    assert main(["predict", "--model", "tiny-gpt2", "--seq", "32", "--precision", "bf16", "--gpu", "all"]) == 0
    assert capsys.readouterr().err == ""  # the bar went to the fake terminal, not to stderr
    assert len(drawn) == 1 and drawn[0].n == len(gpus.names())  # every card, those without bf16 too
    assert "cards:" in drawn[0].fp.getvalue()
