#!/usr/bin/env bash
# The GPU benchmarks as one script for a lent GPU machine (see benchmarks/README.md):
#   bash benchmarks/gpu_bench.sh        (writes its logs to $OUT, or to /tmp/metantk-gpu)
# Carries opacus as a wheel in .whl/ when the machine lacks it (no Ray needed: InlinePool).
set -u
OUT=${OUT:-/tmp/metantk-gpu}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
[ -n "${SKIP_KERNELS:-}" ] || timeout 200 python3 benchmarks/bench_kernels.py --device cuda --repeats 3 --backends hooks,func,opacus --json "$OUT/kernels.json" 2>&1 | tee "$OUT/bench_kernels.txt"
timeout ${SEARCH_TIMEOUT:-300} python3 benchmarks/bench_search.py --quick --device cuda --paper-candidates 6 \
  --paper-rounds ${PAPER_ROUNDS:-7} --out /tmp/metantk-bench 2>&1 | tee "$OUT/bench_search.txt"
