"""The tree states the architecture; these checks keep it honest.

- ``bench/run/`` is the parent: it imports nothing of the torch side
  (``bench.methods``) nor the child (``bench.worker.child``), at any depth of
  a function body too, and importing it loads no torch.
- ``bench/worker/`` is the child: it never imports the parent's executors.
- The shared, torch-free modules (recipe, statuses, record, units) load no torch.
- ``bench/serve/`` (the web calculator) predicts only through what the CLI's ``predict`` and
  ``plan`` call, and importing it loads no torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(folder: str) -> dict[str, set[str]]:
    """file -> every module it imports (top level and inside functions)."""
    out: dict[str, set[str]] = {}
    for f in sorted((ROOT / "bench" / folder).glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
        out[f.name] = names
    return out


def offending(folder: str, prefixes: tuple[str, ...]) -> list[str]:
    return [
        f"bench/{folder}/{f} imports {m}"
        for f, ms in imports(folder).items()
        for m in sorted(ms)
        if m.startswith(prefixes)
    ]


def test_the_parent_imports_neither_the_torch_side_nor_the_child():
    bad = offending("run", ("bench.methods", "bench.worker.child", "bench.predict.", "torch"))
    assert [b for b in bad if "bench.predict.batch" not in b] == []  # batch: a torch-free subprocess launcher


def test_the_child_does_not_import_the_parents_executors():
    assert not offending(
        "worker", ("bench.run.executor", "bench.run.ray_executor", "bench.run.runner", "bench.run.cli")
    )


def test_the_torch_side_does_not_import_the_parent():
    assert not offending("methods", ("bench.run",))


def test_shared_modules_load_no_torch():
    code = (
        "import sys\n"
        "import bench.recipe, bench.status, bench.record, bench.dtypes, bench.overhead, bench.store\n"
        "from bench import cell, recipe\n"
        "recipe.of(cell.normalize({'model': 'gpt2', 'gpu': 'h200', 'method': 'lora+zero3', 'precision': 'bf16'}))\n"
        "bad = [m for m in ('torch', 'transformers', 'deepspeed', 'peft') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_server_calls_the_predictor_only_as_the_cli_does():
    """``bench/serve/`` predicts through the functions ``bench predict``/``bench plan`` call
    (``bench.predict.cli``, the card ranking, prices), never the tracer's internals, so the page
    and the CLI cannot drift; and importing the server loads no torch until it predicts."""
    modules = tuple(f"bench.predict.{m}" for m in ("cli", "ranking", "cost", "trace_cache", "version"))
    public = {"bench.predict", "bench.predict.predict", "bench.predict.max_batch", *modules}
    found = {m for ms in imports("serve").values() for m in ms if m.startswith(("bench.predict", "torch"))}
    assert {m for m in found if m not in public and not m.startswith(tuple(f"{x}." for x in modules))} == set()
    code = "import sys, bench.serve.app, bench.serve.cli\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
