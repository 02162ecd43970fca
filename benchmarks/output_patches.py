"""Output lengths: exact F = ceil(H / patch) vs F rounded up to one pretraining drew, zero-shot.

    python benchmarks/output_patches.py [--checkpoint factost-tiny] [--dataset ETTh2] [--input_len 96]
        [--horizon 96] [--split test] [--window_stride 1] [--label NAME] [--output benchmarks/results/output_patches]

A 96-step horizon needs F = 6 output patches of 16 steps, but pretraining drew F from
{1, 2, 4, 8, 16} (`pretrain_output_patch_buckets`): "exact" asks the model for 6 patches, an output
length it never saw; "rounded" asks for 8 and drops the last 32 steps (`Forecaster(...,
round_output_patches=...)`, `model/rollout.py::output_patches`). Both are scored on the same windows
with the `launch/evaluate.py` metrics (BasicTS, average over the horizon) and timed. Writes
OUTPUT/<label>.json (label default: <checkpoint name>-step<step>) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SETTINGS = {"exact": False, "rounded": True}  # label -> round_output_patches
COLUMNS = ("MAE", "RMSE", "QL", "coverage_80")


def measure(checkpoint: str, dataset_name: str, input_len: int, horizon: int, split: str, window_stride: int,
            data_dir: str | None, allow_overlap: bool) -> dict:
    """{"checkpoint", "step", "dataset", ..., "settings": {label: {"output_patches", "seconds", metrics}}}."""
    from factost_jax import Forecaster
    from factost_jax import checkpoint as ckpt_io
    from factost_jax.data.formats import load_dataset
    from factost_jax.data.leakage import pretraining_overlap
    from factost_jax.eval.evaluate import checkpoint_predictor, evaluate
    from factost_jax.model.rollout import output_patches

    dataset = load_dataset(dataset_name, data_dir)
    rows = {}
    for label, rounding in SETTINGS.items():
        forecaster = Forecaster.load(checkpoint, round_output_patches=rounding)
        overlap = pretraining_overlap(forecaster.metadata, dataset_name)
        if overlap and not allow_overlap:
            raise SystemExit(f"error: {checkpoint} was pretrained on {', '.join(overlap)}; pass --allow_overlap")
        # Warm-up outside the timing: the first call compiles this setting's programs.
        forecaster.forecast([[0.0] * input_len], horizon)
        start = time.perf_counter()
        result = evaluate(dataset, checkpoint_predictor(forecaster, dataset), input_len, horizon, split=split,
                          progress=False, window_stride=window_stride)
        rows[label] = {"round_output_patches": rounding,
                       "output_patches": output_patches(horizon, forecaster.config, forecaster.output_patch_choices),
                       "seconds": round(time.perf_counter() - start, 2), **result["metrics"]["avg"]}
    trained = ckpt_io.trained_output_patches(forecaster.metadata)
    return {"checkpoint": checkpoint, "step": forecaster.metadata.get("step"),
            "trained_output_patches": None if trained is None else list(trained), "dataset": result["dataset"],
            "split": split, "input_len": input_len, "horizon": horizon, "num_windows": result["num_windows"],
            "window_stride": window_stride, "settings": rows}


def format_table(report: dict) -> str:
    lines = [f"{report['dataset']} {report['split']} {report['input_len']}->{report['horizon']} zero-shot, "
             f"{report['checkpoint']} (step {report['step']}), {report['num_windows']} windows",
             f"{'setting':<10}{'F':>4}" + "".join(f"{c:>13}" for c in COLUMNS) + f"{'seconds':>10}"]
    for label, row in report["settings"].items():
        lines.append(f"{label:<10}{row['output_patches']:>4}" + "".join(f"{row[c]:>13.4f}" for c in COLUMNS)
                     + f"{row['seconds']:>10.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="factost-tiny")
    parser.add_argument("--dataset", default="ETTh2")
    parser.add_argument("--input_len", type=int, default=96)
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--window_stride", type=int, default=1)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--allow_overlap", action="store_true")
    parser.add_argument("--label", default=None, help="JSON file name (default: <checkpoint name>-step<step>)")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "output_patches"))
    args = parser.parse_args()
    report = measure(args.checkpoint, args.dataset, args.input_len, args.horizon, args.split, args.window_stride,
                     args.data_dir, args.allow_overlap)
    report["command"] = " ".join(["python benchmarks/output_patches.py", shlex.join(sys.argv[1:])]).rstrip()
    label = args.label or f"{pathlib.Path(args.checkpoint).name}-step{report['step']}"
    path = pathlib.Path(args.output) / f"{label}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
