#!/usr/bin/env bash
# A short real run on a GPU host: install, measure matrices/gpu-check.yaml
# (8 GPT-2 cells), print the results table. Under 8 minutes on one H100/H200
# once torch is installed.
#
#   scripts/gpu-check.sh                      # records go to results/
#   OUT_DIR=/tmp/check scripts/gpu-check.sh
#
# Exit status: 0 when every cell ended as expected (all `ok`, the cell labelled
# expected-oom `oom`), 1 otherwise, 2 without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT_DIR:-results}"
MATRIX=matrices/gpu-check.yaml

if ! nvidia-smi -L; then
  echo "gpu-check: no CUDA GPU (nvidia-smi -L failed); the CPU smoke run is:" >&2
  echo "  .venv/bin/bench run matrices/smoke-cpu.yaml --device cpu" >&2
  exit 2
fi
start=$(date +%s)
make install
.venv/bin/bench run "$MATRIX" --results "$OUT_DIR" --timeout 240 || true
echo
.venv/bin/bench report "$OUT_DIR/h100-80gb/gpu-check" --title "gpu-check" || true

status=0
.venv/bin/python - "$OUT_DIR" "$MATRIX" <<'PY' || status=$?
"""Check each cell's status and print what the table leaves out; exit 1 on a surprise."""
import sys

from tabulate import tabulate

from bench import matrix
from bench.store import Store

GIB = 2**30
m = matrix.load(sys.argv[2])
store = Store(sys.argv[1])
rows, surprises = [], []
for c in m.cells:
    r = store.read(m.gpu, m.name, c.cell_id)
    want = "oom" if c.label == "expected-oom" else "ok"
    if r is None or r["status"] != want:
        got = "no record" if r is None else f"{r['status']}: {(r.get('error') or '').strip()[-400:]}"
        surprises.append(f"{c.slug}: expected {want}, got {got}")
    if r is None:
        continue
    ms, env = r.get("measured") or {}, r["environment"]
    gib = lambda k: f"{ms[k] / GIB:.2f}" if isinstance(ms.get(k), (int, float)) else "-"
    rows.append([c.slug, r["status"], ms.get("nvml_mode", "-"), gib("peak_nvml_process_bytes"),
                 gib("peak_torch_reserved_bytes"), gib("peak_host_rss_bytes"), env.get("emulated_target"),
                 env.get("gpu_name", "-")])
print(tabulate(rows, headers=["cell", "status", "NVML mode", "NVML peak GiB", "torch reserved GiB",
                              "host RSS GiB", "emulated", "card"], disable_numparse=True))
for s in surprises:
    print(f"gpu-check: unexpected: {s}", file=sys.stderr)
sys.exit(1 if surprises else 0)
PY
echo "gpu-check: $(( $(date +%s) - start )) s, records in $OUT_DIR/h100-80gb/gpu-check/"
exit $status
