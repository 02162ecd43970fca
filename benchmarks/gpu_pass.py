"""The accelerator pass: bf16 training and inference of tiny and base, JAX against PyTorch eager and torch.compile.

  python3 benchmarks/gpu_pass.py --output DIR               # on a GPU: about 6-8 minutes
  python3 benchmarks/gpu_pass.py --output DIR --smoke       # CPU, debug shapes, seconds (tests/test_gpu_pass.py)

One speed worker (benchmarks/speed.py, as `run.py` starts them) per (model, phase) of PLAN, most
important first: base training carries the MFU target. Each worker builds JAX, PyTorch eager and
torch.compile in one process and times them in interleaved rounds (the ratios are same-run). Per
framework and workload: windows/s, tokens/s, MFU against the device's dense bf16 peak
(`common.DEVICE_PEAK_FLOPS`, matched by the device's name) and the framework's own peak device
memory (speed.device_memory_mark_mb).

Time: `--budget-s` (default 450) bounds the whole pass. A worker gets the time left as its timeout;
a workload that would start with under `--min-worker-s` left is recorded as skipped. DIR/gpu_pass.json
is rewritten after every worker, so a pass cut short still leaves what it measured.

`--smoke` runs PLAN's code path on the debug model at tiny shapes (bfloat16 too) with torch.compile's
"eager" backend (dynamo traces, inductor compiles nothing) and JAX's "fast_compile" variant (LLVM
-O0), so a typo fails here, in seconds, and not in the first minutes of a lent GPU.

Writes DIR/gpu_pass.json: {"meta", "rows" (run.py's speed rows, plus "mfu" columns on an
accelerator), "targets"}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import run  # noqa: E402
from benchmarks.speed import MODEL_FRAMEWORKS  # noqa: E402

# (model, phase, batch windows). Context 2048 = 145 tokens as in the CPU table. Batches are sized
# for an 80 GB card with all three frameworks alive in one process (JAX does not preallocate; base
# training at 256 windows keeps about 10 GB of activations per framework) and large enough that a
# step is not launch-bound.
PLAN: tuple[tuple[str, str, int], ...] = (
    ("base", "train", 256),
    ("base", "infer", 1024),
    ("tiny", "train", 512),
    ("tiny", "infer", 2048),
)
SMOKE_PLAN: tuple[tuple[str, str, int], ...] = (("debug", "train", 2), ("debug", "infer", 2))
SMOKE_SHAPES = {"context": 64, "output_patches": 1, "warmup": 0, "repeats": 1}
# Issue 17's GPU targets, on training: JAX over PyTorch eager and torch.compile, MFU of base in bf16.
TARGETS = {"train_vs_torch_eager": 1.5, "train_vs_torch_compile": 1.0, "base_train_mfu": 0.35}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="directory for gpu_pass.json")
    parser.add_argument("--smoke", action="store_true", help="debug model, tiny shapes, torch.compile backend 'eager'")
    parser.add_argument("--budget-s", type=float, default=450.0, help="seconds the whole pass may take")
    parser.add_argument("--min-worker-s", type=float, default=45.0, help="skip a workload with less time left")
    parser.add_argument("--frameworks", default=",".join(MODEL_FRAMEWORKS), help="comma list")
    parser.add_argument("--only", default=None, help="comma list of MODEL:PHASE from the plan (default: all)")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--output-patches", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "auto"))
    args = parser.parse_args(argv)
    args.frameworks = run._choices(args.frameworks, MODEL_FRAMEWORKS, "--frameworks")
    args.plan = SMOKE_PLAN if args.smoke else PLAN
    if args.only:
        wanted = {item.strip() for item in args.only.split(",") if item.strip()}
        args.plan = tuple(item for item in args.plan if f"{item[0]}:{item[1]}" in wanted)
        if not args.plan:
            parser.error(f"--only {args.only!r} matches nothing in {[f'{m}:{p}' for m, p, _ in PLAN]}")
    if args.smoke:
        args.min_worker_s = min(args.min_worker_s, 1.0)
        for key, value in SMOKE_SHAPES.items():
            setattr(args, key, value)
    return args


def workload_spec(args: argparse.Namespace, model: str, phase: str, batch: int) -> dict[str, Any]:
    """The speed worker's spec (benchmarks/speed.py) for one workload, frameworks in timing order."""
    spec = {"model": model, "phase": phase, "batch": batch, "context": args.context,
            "output_patches": args.output_patches, "warmup": args.warmup, "repeats": args.repeats,
            "dtype": args.dtype, "seed": 0,
            # JAX first: its device peak cannot be reset, so it is only its own when it is built first.
            "frameworks": sorted(args.frameworks, key=lambda name: name != "jax")}
    if args.smoke:
        spec["torch_compile_backend"] = "eager"
    return spec


def target_status(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each GPU target of issue 17 with its measured value (None = not measured) and met / not met."""
    train = [row for row in rows if row.get("phase") == "train" and "skipped" not in row]
    out: dict[str, Any] = {}
    for key in ("train_vs_torch_eager", "train_vs_torch_compile"):
        column = key.replace("train_", "jax_")
        values = {row["model"]: row.get(column) for row in train}
        measured = [value for value in values.values() if value is not None]
        out[key] = {"min": TARGETS[key], "by_model": values,
                    "met": None if not measured else all(value >= TARGETS[key] for value in measured)}
    base = next((row for row in train if row["model"] == "base"), {})
    mfu = base.get("jax_mfu")
    out["base_train_mfu"] = {"min": TARGETS["base_train_mfu"], "jax": mfu,
                             "met": None if mfu is None else mfu >= TARGETS["base_train_mfu"]}
    return out


def device_info() -> dict[str, Any]:
    """nvidia-smi's name, memory and driver when it exists (the worker rows name the device too)."""
    if shutil.which("nvidia-smi") is None:
        return {"nvidia_smi": None}
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"nvidia_smi": f"failed: {error}"}
    return {"nvidia_smi": done.stdout.strip() or done.stderr.strip()}


def format_mfu(rows: list[dict[str, Any]]) -> str:
    """Per row: each framework's tokens/s, MFU and peak device memory."""
    lines = [f"{'model':<6} {'phase':<6} {'framework':<14} {'win/s':>9} {'tokens/s':>11} {'MFU':>6} {'peak MB':>9}"]
    for row in rows:
        for name in MODEL_FRAMEWORKS:
            if row.get(f"{name}_per_s") is None:
                continue
            lines.append(
                f"{row['model']:<6} {row['phase']:<6} {name:<14} {run._fmt(row[f'{name}_per_s'], ',.1f'):>9} "
                f"{run._fmt(row.get(f'{name}_tokens_per_s'), ',.0f'):>11} {run._fmt(row.get(f'{name}_mfu'), '.1%'):>6} "
                f"{run._fmt(row.get(f'{name}_peak_mem_mb'), ',.0f'):>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    arguments = sys.argv[1:] if argv is None else argv
    command = "python3 benchmarks/gpu_pass.py " + " ".join(shlex.quote(a) for a in arguments)
    meta: dict[str, Any] = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "machine": run.machine_info(), "device": device_info(), "budget_s": args.budget_s,
                            "load_avg_1m_start": run._loadavg()}
    rows: list[dict[str, Any]] = []
    path = args.output / "gpu_pass.json"
    run._INDUCTOR_CACHE["dir"] = tempfile.mkdtemp(prefix="factost_gpu_pass_inductor_")
    try:
        for model, phase, batch in args.plan:
            left = args.budget_s - (time.monotonic() - started)
            if left < args.min_worker_s:
                rows.append({"model": model, "phase": phase, "batch": batch, "skipped": f"budget: {left:.0f} s left"})
                print(f"{model} {phase}: skipped, {left:.0f} s of the budget left", flush=True)
                continue
            spec = workload_spec(args, model, phase, batch)
            settings = run.BEST_SETTINGS[phase]
            if args.smoke:
                settings = dict(settings, jax_variant="fast_compile")
            load_start, begin = run._loadavg(), time.monotonic()
            worker = run.run_worker(spec, settings, left)
            row = run.make_row(spec, args.frameworks, worker, {}, settings, None, (load_start, run._loadavg()))
            row["wall_s"] = round(time.monotonic() - begin, 1)
            rows.append(row)
            print(run.format_rows([row], header=len(rows) == 1), flush=True)
            for name in args.frameworks:
                if row.get(f"{name}_error"):
                    print(f"  {name}: {row[f'{name}_error']}", flush=True)
            meta["wall_s"] = round(time.monotonic() - started, 1)
            path.write_text(json.dumps({"meta": meta, "rows": rows, "targets": target_status(rows)}, indent=1) + "\n")
    finally:
        shutil.rmtree(run._INDUCTOR_CACHE["dir"], ignore_errors=True)
        run._INDUCTOR_CACHE["dir"] = None
    meta["wall_s"] = round(time.monotonic() - started, 1)
    meta["load_avg_1m_end"] = run._loadavg()
    targets = target_status(rows)
    path.write_text(json.dumps({"meta": meta, "rows": rows, "targets": targets}, indent=1) + "\n")
    measured = [row for row in rows if "skipped" not in row]
    print("\n" + run.format_rows(measured) + "\n\n" + format_mfu(measured))
    print("\ntargets: " + json.dumps(targets))
    print(f"wrote {path} in {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
