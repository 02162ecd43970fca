#!/usr/bin/env bash
# The accelerator pass in one command (docs/performance.md, "Accelerator pass"):
#   bash benchmarks/gpu_pass.sh [OUTPUT_DIR]      (default: $OUT/gpu on the lent machine, else benchmarks/results/gpu)
# Prints the versions it runs on, then runs benchmarks/gpu_pass.py inside its time budget. python3 is the
# interpreter holding torch and jax on the lent GPU machines; PYTHON overrides it.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:+$OUT/gpu}}
out=${out:-benchmarks/results/gpu}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$py" -c "import sys, jax, flax, optax, torch; print(sys.version.split()[0], 'jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, torch.cuda.is_available())" || exit 1
exec "$py" benchmarks/gpu_pass.py --output "$out" --budget-s "${BUDGET_S:-450}"
