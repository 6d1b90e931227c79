"""Predict many cells in a child process, so the runner's parent never imports torch.

``predict_in_subprocess(cells)`` sends the cells as JSON to
``python -m bench.predict.batch`` and returns one dict per cell:
``{"predicted": {...}}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench.cell import Cell, normalize


def predict_in_subprocess(cells: list[Cell], timeout: float = 1800) -> list[dict]:
    payload = json.dumps([c.to_dict() for c in cells])
    proc = subprocess.run([sys.executable, "-m", "bench.predict.batch"], input=payload, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return [{"error": f"predictor failed: {tail[0]}"} for _ in cells]
    return json.loads(proc.stdout)


def main() -> int:
    from bench.predict.cli import plan_entries

    class _M:  # the shape plan_entries reads
        cells = [normalize(d) for d in json.load(sys.stdin)]

    entries = plan_entries(_M, want_max_batch=False)
    json.dump([{k: e[k] for k in ("predicted", "error") if k in e} for e in entries], sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
