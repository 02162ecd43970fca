"""Fit cost of the statistical baselines per series, and what a whole test split would cost.

  python benchmarks/statistical_cost.py [--windows 32] [--rows 160] [--data_dir DIR]

For each bundled evaluation set at its standard protocol, fits AutoETS and AutoTheta
(`factost_jax/eval/statistical.py`, with the season length the evaluation uses) on `--rows` real
test contexts (drawn from the nodes of `--windows` random test windows, seed 0) and prints the process CPU time per
series and the CPU-minutes the full test split (windows x nodes series) would take. This is how the
window strides of `benchmarks/accuracy.py` (STATISTICAL_STRIDES) were chosen.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

TASKS = (("HZMETRO", 12, 12), ("LOS-LOOP", 12, 12), ("AQI36", 24, 24), ("ETTh2", 96, 96), ("WEATHER", 96, 96))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=32, help="random test windows per set")
    parser.add_argument("--rows", type=int, default=160, help="series (window x node) fitted per set and model")
    parser.add_argument("--data_dir", default=None, help="real-data directory (default: $FACTOST_DATA_DIR)")
    args = parser.parse_args(argv)
    if args.windows < 1 or args.rows < 1:
        parser.error("--windows and --rows must be positive")

    from factost_jax.data.formats import load_dataset
    from factost_jax.data.windows import split_target_starts
    from factost_jax.eval import statistical
    from factost_jax.eval.baselines import forward_fill
    from factost_jax.eval.evaluate import metric_scale_series

    print("dataset | L->H | model | season | ms CPU per series | full test split: series | CPU-minutes")
    for name, input_len, horizon in TASKS:
        dataset = load_dataset(name, args.data_dir)
        starts = split_target_starts(dataset, "test", input_len, horizon)
        filled = forward_fill(metric_scale_series(dataset)[0])
        rng = np.random.default_rng(0)
        picked = rng.choice(starts.size, min(args.windows, starts.size), replace=False)
        contexts = np.concatenate([filled[starts[i] - input_len:starts[i]].T for i in picked])  # [windows*N, L]
        rows = contexts[rng.choice(len(contexts), min(args.rows, len(contexts)), replace=False)]
        total = starts.size * dataset.num_nodes
        for model in statistical.STATISTICAL_MODELS:
            season = statistical.season_length(model, dataset, input_len)
            fitter = statistical.load_model(model, season)
            begin = time.process_time()
            statistical.forecast_series(fitter, rows, horizon, statistical.MIN_OBSERVED[model])
            per_series = (time.process_time() - begin) / len(rows)
            print(f"{name} | {input_len}->{horizon} | {model} | {season} | {per_series * 1000:.1f} | {total} | "
                  f"{total * per_series / 60:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
