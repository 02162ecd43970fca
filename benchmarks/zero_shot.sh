#!/usr/bin/env bash
# Zero-shot table of docs/results.md: the shipped checkpoint (or $1) against the four baselines.
#   bash benchmarks/zero_shot.sh [CHECKPOINT]      -> benchmarks/results/zero_shot/<dataset>.json
set -euo pipefail
cd "$(dirname "$0")/.."
checkpoint="${1:-factost-tiny}"
out=benchmarks/results/zero_shot
mkdir -p "$out"
for spec in "HZMETRO 12 12" "LOS-LOOP 12 12" "AQI36 24 24" "ETTh2 96 96" "WEATHER 96 96"; do
  set -- $spec
  .venv/bin/python launch/evaluate.py --checkpoint "$checkpoint" --dataset "$1" --input_len "$2" --horizon "$3" \
    --with_baselines --output "$out/$1.json" --batch_size 512
done
