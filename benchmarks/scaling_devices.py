"""Weak and strong scaling of the stage-1 train step over 1/2/4/8 devices.

  python benchmarks/scaling_devices.py                      # CPU: 8 simulated devices, debug model
  python benchmarks/scaling_devices.py --model tiny --steps 20 --per_device_batch 64   # on GPUs

On CPU the devices are simulated (`--xla_force_host_platform_device_count=8` on 2 cores share the
same cores), so this is a CORRECTNESS-of-scaling table: the loss of every step on n devices must
equal the 1-device loss of the same global batch (float tolerance); step times are printed for
completeness only and say nothing about speed. With GPUs (or TPUs) present, the same sweep runs over
1..all real devices and reports windows/s per device (weak scaling efficiency), in bfloat16.

  strong: a fixed global batch (--global_batch) split over n devices;
  weak:   --per_device_batch rows per device, global batch = n * per_device_batch; the reference is
          the same global batch on ONE device, so the check is the same as for strong scaling.

Writes benchmarks/results/scaling_devices.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "scaling_devices.json"
SIMULATED_CPU_DEVICES = 8


def _prepare_cpu_devices() -> None:
    """Simulate 8 CPU devices unless an accelerator is visible (XLA_FLAGS is read once, at jax import)."""
    if os.environ.get("JAX_PLATFORMS", "") not in ("", "cpu"):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={SIMULATED_CPU_DEVICES}".strip()


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="debug", help="a model size of factost_jax.model.config.MODEL_SIZES")
    parser.add_argument("--num_layers", type=int, default=None, help="override the size's layer count")
    parser.add_argument("--devices", default="1,2,4,8", help="device counts to sweep (capped at what exists)")
    parser.add_argument("--steps", type=int, default=4, help="timed train steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (compilation) before the timed ones")
    parser.add_argument("--global_batch", type=int, default=32, help="strong scaling: global batch")
    parser.add_argument("--per_device_batch", type=int, default=4, help="weak scaling: rows per device")
    parser.add_argument("--context", type=int, default=128, help="context length of the synthetic windows")
    parser.add_argument("--output_patches", type=int, default=2, help="F, output patches per window")
    parser.add_argument("--rtol", type=float, default=1e-4, help="loss tolerance against the 1-device reference")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        args.devices = sorted({int(d) for d in args.devices.split(",") if d.strip()})
    except ValueError:
        parser.error(f"--devices must be comma-separated integers, got {args.devices!r}")
    if not args.devices or min(args.devices) < 1:
        parser.error("--devices must list positive counts")
    for name in ("steps", "global_batch", "per_device_batch", "context", "output_patches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


def _make_task(args: argparse.Namespace):
    """A PretrainTask on the chosen model size; its data section is never read (batches are synthetic)."""
    import importlib.util

    from factost_jax.train.tasks import PretrainTask

    spec = importlib.util.spec_from_file_location("factost_configs_pretrain_bench", REPO / "configs" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("debug" if args.model == "debug" else "tiny")
    config.model.size = args.model
    config.model.dropout = 0.0  # identical computation on every mesh, whatever the rng layout
    if args.num_layers is not None:
        config.model.num_layers = args.num_layers
    config.data.corpora = (("kernelsynth", 1.0),)
    config.data.context_length = args.context
    config.data.predict_length = args.output_patches * 16
    config.data.output_patch_buckets = (args.output_patches,)
    config.data.batch_size = args.global_batch
    config.train.eval_windows = max(args.global_batch, config.train.eval_windows)
    run_config = module.validate_config(config)
    return PretrainTask(run_config), run_config


def _batches(args: argparse.Namespace, global_batch: int, count: int) -> list[dict]:
    import numpy as np

    from benchmarks.common import Workload, synthetic_batch

    out = []
    for seed in range(count):
        batch = synthetic_batch(Workload("train", global_batch, args.context, args.output_patches), seed=seed)
        batch["target"] = np.where(batch["target_mask"], batch["target"], 0.0).astype(np.float32)
        out.append(batch)
    return out


def run_on_devices(task, run_config, devices, host_batches, warmup: int) -> dict:
    """Train from the same init on a `(n, 1, 1)` data-parallel mesh -> losses and timed step seconds."""
    import jax

    from factost_jax.train import mesh as mesh_lib
    from factost_jax.train.setup import build_setup, jit_steps

    mesh = mesh_lib.make_mesh((len(devices), 1, 1), devices=devices)
    with mesh_lib.mesh_context(mesh):
        init_rng, dropout_rng = jax.random.split(jax.random.key(run_config.train.seed))
        setup = build_setup(task, run_config.train, mesh, init_rng)
        state = setup.create_state(init_rng)
        train_step, _ = jit_steps(task, setup)
        losses, times = [], []
        for index, host_batch in enumerate(host_batches):
            batch = mesh_lib.host_to_global(host_batch, mesh)
            start = time.perf_counter()
            state, metrics = train_step(state, batch, dropout_rng)
            loss = float(metrics["loss"])  # blocks until the step is done
            if index >= warmup:
                times.append(time.perf_counter() - start)
            losses.append(loss)
    return {"losses": losses, "step_s": sorted(times)[len(times) // 2] if times else None}


def sweep(args: argparse.Namespace) -> dict:
    import jax
    import numpy as np

    task, run_config = _make_task(args)
    available = jax.devices()
    counts = [n for n in args.devices if n <= len(available)]
    accelerator = jax.default_backend() != "cpu"
    rows = []
    total = args.warmup + args.steps
    strong_batches = _batches(args, args.global_batch, total)
    references: dict[int, list[float]] = {}

    def reference(global_batch: int, batches: list[dict]) -> list[float]:
        if global_batch not in references:
            references[global_batch] = run_on_devices(task, run_config, available[:1], batches, args.warmup)["losses"]
        return references[global_batch]

    for mode in ("strong", "weak"):
        for n in counts:
            global_batch = args.global_batch if mode == "strong" else n * args.per_device_batch
            if global_batch % n:
                rows.append({"mode": mode, "devices": n, "global_batch": global_batch,
                             "skipped": f"global batch {global_batch} not divisible by {n} devices"})
                continue
            batches = strong_batches if mode == "strong" else _batches(args, global_batch, total)
            result = run_on_devices(task, run_config, available[:n], batches, args.warmup)
            ref = reference(global_batch, batches)
            max_rel = float(np.max(np.abs(np.asarray(result["losses"]) - ref) / np.maximum(np.abs(ref), 1e-12)))
            step_s = result["step_s"]
            windows_per_s = global_batch / step_s if step_s else None
            rows.append({
                "mode": mode, "devices": n, "global_batch": global_batch, "losses": result["losses"],
                "max_rel_diff_vs_1_device": max_rel, "losses_match": bool(max_rel <= args.rtol),
                "step_s": step_s, "windows_per_s": windows_per_s,
                "windows_per_s_per_device": windows_per_s / n if windows_per_s else None,
            })
    return {
        "benchmark": "scaling_devices",
        "backend": jax.default_backend(),
        "device_kind": available[0].device_kind,
        "simulated_devices": not accelerator,
        "speed_claim": accelerator,
        "note": ("simulated CPU devices share the same cores: step times are not a speed measurement"
                 if not accelerator else "throughput per device on real accelerators"),
        "model": args.model, "num_layers": run_config.model.num_layers,
        "compute_dtype": run_config.model.compute_dtype, "context": args.context,
        "output_patches": args.output_patches, "steps": args.steps, "warmup": args.warmup, "rtol": args.rtol,
        "jax_version": jax.__version__, "python": platform.python_version(),
        "rows": rows,
    }


def format_table(result: dict) -> str:
    lines = [f"scaling of the stage-1 train step: model {result['model']} ({result['compute_dtype']}), "
             f"backend {result['backend']} ({result['device_kind']}); {result['note']}",
             f"{'mode':<7}{'devices':>8}{'batch':>7}{'max rel diff':>14}{'match':>7}{'step s':>9}{'win/s/dev':>11}"]
    for row in result["rows"]:
        if "skipped" in row:
            lines.append(f"{row['mode']:<7}{row['devices']:>8}{row['global_batch']:>7}  {row['skipped']}")
            continue
        per_device = row["windows_per_s_per_device"]
        lines.append(f"{row['mode']:<7}{row['devices']:>8}{row['global_batch']:>7}{row['max_rel_diff_vs_1_device']:>14.2e}"
                     f"{'yes' if row['losses_match'] else 'NO':>7}{row['step_s'] or float('nan'):>9.3f}"
                     f"{per_device if per_device is not None else float('nan'):>11.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    _prepare_cpu_devices()
    sys.path.insert(0, str(REPO))
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    result = sweep(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    print(f"wrote {args.out}")
    mismatched = [r for r in result["rows"] if r.get("losses_match") is False]
    return 1 if mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
