#!/usr/bin/env bash
# The GPU benchmarks as one script for a lent GPU machine (see benchmarks/README.md):
#   bash benchmarks/gpu_bench.sh        (writes its logs to $OUT, or to /tmp/metantk-gpu)
#   ISSUE15=1 bash benchmarks/gpu_bench.sh                         (floor, levers, whole search)
#   ISSUE15=1 ISSUE15_PARTS=scaling ISSUE15_TIMEOUT=330 bash benchmarks/gpu_bench.sh   (1/2/4 scorers)
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
if [ -n "${ISSUE15:-}" ]; then  # issue 15: floor, levers, whole search, scaling (benchmarks/README.md)
  timeout ${ISSUE15_TIMEOUT:-560} python3 benchmarks/bench_gpu_search.py --device cuda \
    --parts ${ISSUE15_PARTS:-floor,levers,search} ${ISSUE15_ARGS:-} --out /tmp/metantk-gpu-search \
    --json "$OUT/gpu_search_${ISSUE15_PARTS:-main}.json" 2>&1 | tee "$OUT/gpu_search_${ISSUE15_PARTS:-main}.txt"
  exit "${PIPESTATUS[0]}"
fi
[ -n "${SKIP_KERNELS:-}" ] || timeout 200 python3 benchmarks/bench_kernels.py --device cuda --repeats 3 --backends hooks,func,opacus --json "$OUT/kernels.json" 2>&1 | tee "$OUT/bench_kernels.txt"
timeout ${SEARCH_TIMEOUT:-300} python3 benchmarks/bench_search.py --quick --device cuda --paper-candidates 6 \
  --paper-rounds ${PAPER_ROUNDS:-7} --out /tmp/metantk-bench 2>&1 | tee "$OUT/bench_search.txt"
