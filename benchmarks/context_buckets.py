"""Windows/s of stage-1 training with length-bucketed batches against full-length ones (issue 13).

Recipe v2 cuts each batch to a context width W drawn from `data.context_buckets` (weights
`data.context_bucket_weights`) instead of always feeding `context_length` steps. This times the
project's own train step (benchmarks/speed.py `build_jax`: forward, backward, AdamW) at every width,
same process, same batch size and F, and reports

    windows/s bucketed = batch / sum_W p_W t_W      windows/s full = batch / t_L

and their ratio (the gain). Compilation is excluded (one program per width, compiled once a run).

  python benchmarks/context_buckets.py [--model tiny] [--batch 32] [--output_patches 6] [--repeats 5]

Writes benchmarks/results/context_buckets/<model>.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402


def step_seconds(model: str, batch: int, width: int, output_patches: int, repeats: int) -> dict:
    """Median seconds of one train step at context `width` (after two warm-up steps)."""
    from benchmarks.speed import build_jax

    runner = build_jax({"phase": "train", "model": model, "batch": batch, "context": width,
                        "output_patches": output_patches, "dtype": "float32"})
    times = common.time_calls(runner.run_once, warmup=2, repeats=repeats, clock=time.perf_counter)
    return {"width": width, "step_s": common.median(times), "compile_s": runner.compile_s}


def bucket_gain(rows: list[dict], probabilities: list[float], batch: int) -> dict:
    """Expected windows/s under the width distribution vs always the longest width."""
    expected_step = sum(p * row["step_s"] for p, row in zip(probabilities, rows))
    full_step = rows[-1]["step_s"]
    return {"windows_per_s_bucketed": batch / expected_step, "windows_per_s_full": batch / full_step,
            "gain": full_step / expected_step}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--output_patches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "context_buckets"))
    args = parser.parse_args(argv)
    from factost_jax.configs import pretrain

    data = pretrain.get_config(args.model).data
    widths, weights = list(data.context_buckets), list(data.context_bucket_weights)
    if not widths:
        parser.error(f"configs/pretrain.py:{args.model} has no data.context_buckets to measure")
    probabilities = [w / sum(weights) for w in weights] if weights else [1 / len(widths)] * len(widths)
    order = sorted(range(len(widths)), key=lambda i: widths[i])
    widths, probabilities = [widths[i] for i in order], [probabilities[i] for i in order]
    load_before = os.getloadavg()
    start = time.time()
    rows = [step_seconds(args.model, args.batch, w, args.output_patches, args.repeats) for w in widths]
    gain = bucket_gain(rows, probabilities, args.batch)
    result = {"command": " ".join(["python", "benchmarks/context_buckets.py", *(argv or sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": args.model,
              "batch": args.batch, "output_patches": args.output_patches, "widths": widths,
              "probabilities": probabilities, "rows": rows, **gain,
              "load_before": load_before, "load_after": os.getloadavg(), "wall_s": time.time() - start}
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.model}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'width':>6} {'p':>6} {'step s':>8} {'windows/s':>10}")
    for p, row in zip(probabilities, rows):
        print(f"{row['width']:>6} {p:>6.2f} {row['step_s']:>8.3f} {args.batch / row['step_s']:>10.1f}")
    print(f"bucketed {gain['windows_per_s_bucketed']:.1f} windows/s vs full {gain['windows_per_s_full']:.1f}: "
          f"{gain['gain']:.2f}x (load {load_before[0]:.1f} -> {result['load_after'][0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
