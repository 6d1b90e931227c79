"""Diff ``bench plan --json`` of every shipped matrix between a git revision and the work tree.

    python scripts/plan_diff.py [REV]          # REV defaults to HEAD

A change meant to keep behaviour (a restructuring) must print
``no prediction changed``. The revision is checked out into a temporary git
worktree and both trees are planned with this interpreter, each importing its
own ``bench`` (``PYTHONPATH``). Paths inside cells (a ``ds_config`` or a user
``config.json``) are compared relative to their checkout. Exit 1 when any
prediction differs, with the first differences printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plans(tree: Path) -> dict[str, list]:
    out = {}
    env = {**os.environ, "PYTHONPATH": str(tree)}
    for m in sorted((tree / "matrices").glob("*.yaml")):
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "plan", str(m), "--json"], cwd=tree, env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SystemExit(f"{tree}: bench plan {m.name} failed:\n{proc.stderr[-2000:]}")
        out[m.name] = json.loads(proc.stdout.replace(str(tree) + "/", ""))
    return out


def main(argv: list[str]) -> int:
    rev = argv[0] if argv else "HEAD"
    with tempfile.TemporaryDirectory(prefix="bench-plan-diff-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), rev], cwd=ROOT, check=True)
        try:
            before = plans(base)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=True)
    after = plans(ROOT)
    changed = 0
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name), after.get(name)
        if a == b:
            print(f"{name}: {len(a or [])} cells, same")
            continue
        changed += 1
        print(f"{name}: DIFFERS")
        for x, y in list(zip(a or [], b or []))[:3]:
            if x != y:
                print(f"  before: {json.dumps(x)[:400]}\n  after:  {json.dumps(y)[:400]}")
    print("no prediction changed" if not changed else f"{changed} matrices differ")
    return 1 if changed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
