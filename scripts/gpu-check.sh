#!/usr/bin/env bash
# A short real run on a GPU host, in three parts, each printed as a table:
#   1. matrices/gpu-check.yaml: 8 GPT-2 cells (full, LoRA, ZeRO-2 + optimizer
#      offload, FSDP, generation, one expected OOM), measured with predictions;
#   2. matrices/gpu-maxbatch.yaml with --find-max-batch: the largest batch that
#      fits a 24 GB card, measured by bisection from the predictor's answer;
#   3. the NVML sampler's overhead on a GPU training step (benchmarks/bench_sampler.py).
# About 5 minutes on one H100/H200 once the dependencies are installed.
#
#   scripts/gpu-check.sh                          # make install, records under results/
#   OUT_DIR=/tmp/check scripts/gpu-check.sh
#   BENCH_PYTHON=python3 scripts/gpu-check.sh     # use an environment that already has
#                                                 # torch, transformers, peft, deepspeed (no install)
#
# Exit status: 0 when every gpu-check cell ended as expected (all `ok`, the
# cell labelled expected-oom `oom`), 1 otherwise, 2 without a GPU.
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
if [ -n "${BENCH_PYTHON:-}" ]; then
  PY="$BENCH_PYTHON"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  make install
  PY=.venv/bin/python
fi
bench() { "$PY" -m bench "$@"; }
"$PY" - <<'PY' || true
import torch, transformers, peft
try:
    import deepspeed; ds = deepspeed.__version__
except Exception as e:  # reported, not fatal: the ZeRO cell then records the error
    ds = f"missing ({type(e).__name__}: {e})"
print(f"gpu-check: torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"peft {peft.__version__}, deepspeed {ds}, {torch.cuda.get_device_name(0)}")
PY

echo "== 1/3 gpu-check matrix"
bench run "$MATRIX" --results "$OUT_DIR" --timeout 240 || true
echo
bench report "$OUT_DIR/h100-80gb/gpu-check" --title "gpu-check" || true

status=0
"$PY" - "$OUT_DIR" "$MATRIX" <<'PY' || status=$?
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

echo "== 2/3 largest batch (--find-max-batch)"
bench run matrices/gpu-maxbatch.yaml --results "$OUT_DIR" --find-max-batch --timeout 120 || true
bench report "$OUT_DIR/rtx4090/gpu-maxbatch" --title "gpu-maxbatch" || true

echo "== 3/3 sampler overhead"
BENCH_SAMPLER_DEVICE=cuda BENCH_SAMPLER_BLOCKS="${BENCH_SAMPLER_BLOCKS:-20}" \
  "$PY" -m pytest -q -s -p no:cacheprovider benchmarks/bench_sampler.py --benchmark-enable \
  -k "overhead_percent or one_sample" || true

echo "gpu-check: $(( $(date +%s) - start )) s, records in $OUT_DIR/h100-80gb/gpu-check/ and $OUT_DIR/rtx4090/gpu-maxbatch/"
exit $status
