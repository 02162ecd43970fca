"""Stage-1 speed, JAX against the PyTorch reference, and stage-2 cost against N: `python benchmarks/run.py [--quick] --output DIR`.

For each model size and phase (train: forward + backward + AdamW at batch 64; infer: zero-shot
forecast of 256 series; context 2048 = 128 patches, 16 output patches, so 145 tokens) one worker
process (benchmarks/speed.py) builds JAX, PyTorch eager and torch.compile and times them in
interleaved rounds, each framework at its own best settings (BEST_SETTINGS). Optional workers
measure each framework's peak memory alone. `--ablate` measures what each setting buys.

Writes:
  DIR/speed.json     list of rows {"model", "phase", "device", "batch", "context", "jax_per_s",
                     "torch_eager_per_s", "torch_compile_per_s", ratios, tokens/s, compile_s,
                     GFLOP/s, peak memory, MFU (accelerator) or share of the matmul roof (CPU), ...}
                     (windows per second, medians over the rounds).
  DIR/speed_meta.json  machine, versions, load, matmul roof, settings, the command line.
  DIR/settings.json  with --ablate: one row per (phase, setting variant) with the JAX / eager ratio.
  DIR/scaling.json   stage-2 step time and XLA memory against the number of nodes with the fitted
                     exponents (benchmarks/scaling_nodes.py, run in a process of its own after the
                     speed workers; --quick passes on its --quick). `--skip-scaling` leaves it out,
                     `--skip-speed` measures only it; `--ablate` never runs it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
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

from benchmarks import common  # noqa: E402
from benchmarks.speed import MODEL_FRAMEWORKS  # noqa: E402

SPEED_SCRIPT = Path(__file__).resolve().parent / "speed.py"
SCALING_SCRIPT = Path(__file__).resolve().parent / "scaling_nodes.py"
SCALING_FILE = "scaling.json"
ALL_MODELS = ("minuscule", "tiny", "small", "base")
QUICK_MODELS = ("tiny",)  # one size keeps `make bench` under 15 min on 2 cores (torch.compile compiles dominate)
PHASES = ("train", "infer")

# Each framework at its own best settings on CPU, from the `--ablate` runs recorded in
# docs/performance.md. One process holds all three frameworks, so its process-wide settings are the
# union: the glibc tunables help both frameworks, OMP_WAIT_POLICY=PASSIVE only touches torch's
# OpenMP threads. The JAX variant (common.JAX_VARIANTS) is applied per compilation.
BEST_SETTINGS: dict[str, dict[str, Any]] = {
    "train": {"glibc": True, "omp_passive": True, "jax_variant": "default", "torch_freezing": False},
    "infer": {"glibc": True, "omp_passive": True, "jax_variant": "ynn_off", "torch_freezing": False},
}

# `--ablate`, per phase: process-wide variants each get a process of their own with JAX and
# PyTorch eager side by side; the per-compilation variants (JAX compiler options and PRNG, inductor
# freezing) share one process with PyTorch eager as the yardstick, timed in interleaved rounds.
PROCESS_VARIANTS: dict[str, dict[str, Any]] = {
    "no_glibc_tunables": {"glibc": False},
    "omp_active": {"omp_passive": False},
}
JAX_VARIANTS_BY_PHASE = {
    "train": ("default", "ynn_dot", "ynn_off", "rbg", "ynn_dot_rbg"),
    "infer": ("default", "ynn_dot", "ynn_off"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="directory for speed.json and speed_meta.json")
    parser.add_argument("--quick", action="store_true", help="tiny only, 1 warm-up + 3 rounds, --memory cheap; the quick stage-2 sweep")
    parser.add_argument("--models", default=None, help=f"comma list from {ALL_MODELS} (default: all, or quick's)")
    parser.add_argument("--phases", default="train,infer", help="comma list from train,infer")
    parser.add_argument("--frameworks", default=",".join(MODEL_FRAMEWORKS), help="comma list")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--infer-batch", type=int, default=256)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--output-patches", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls after the compiling one")
    parser.add_argument("--repeats", type=int, default=None, help="timed interleaved rounds")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument(
        "--memory",
        choices=("all", "cheap", "none"),
        default=None,
        help="all: a process per framework measures its peak RSS growth (comparable across frameworks); "
        "cheap: no extra process, PyTorch eager is built first in the timing process and its RSS growth "
        "is kept, JAX reports XLA's buffer total; none (default: all; --quick: cheap)",
    )
    parser.add_argument("--ablate", action="store_true", help="measure the settings variants instead (settings.json)")
    parser.add_argument("--ablate-model", default="tiny")
    parser.add_argument(
        "--ablate-scale",
        type=int,
        default=8,
        help="ablation batches are the run's batches divided by this (shorter runs, same per-token work)",
    )
    parser.add_argument("--worker-timeout", type=float, default=1800.0, help="seconds before a worker is abandoned")
    parser.add_argument("--skip-scaling", action="store_true", help="do not measure stage 2 against N (scaling.json)")
    parser.add_argument("--skip-speed", action="store_true",
                        help="only the stage-2 scaling (scaling.json); speed.json and speed_meta.json are left as they are")
    args = parser.parse_args(argv)
    if args.skip_speed and (args.skip_scaling or args.ablate):
        parser.error("--skip-speed leaves only the scaling run, which --skip-scaling / --ablate exclude")
    args.models = _choices(
        args.models or ",".join(QUICK_MODELS if args.quick else ALL_MODELS), ("debug", *ALL_MODELS), "--models"
    )
    args.phases = _choices(args.phases, PHASES, "--phases")
    args.frameworks = _choices(args.frameworks, MODEL_FRAMEWORKS, "--frameworks")
    if importlib.util.find_spec("torch") is None:
        dropped = [name for name in args.frameworks if name.startswith("torch")]
        args.frameworks = [name for name in args.frameworks if not name.startswith("torch")]
        if dropped:
            print(f"torch is not installed (pip install -e '.[bench]'): measuring JAX only, without {dropped}")
        if not args.frameworks:
            parser.error("--frameworks: nothing left to measure without torch")
    args.warmup = (1 if args.quick else 2) if args.warmup is None else args.warmup
    args.repeats = (3 if args.quick else 5) if args.repeats is None else args.repeats
    args.memory = ("cheap" if args.quick else "all") if args.memory is None else args.memory
    for name in ("train_batch", "infer_batch", "context", "output_patches", "repeats", "ablate_scale"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    bad = [value for value in values if value not in allowed]
    if bad or not values:
        raise SystemExit(f"{flag}: expected a comma list from {list(allowed)}, got {text!r}")
    return values


# A fresh inductor cache per run.py invocation: torch.compile's compile time is then the cold
# first-use cost (as JAX's, which has no persistent cache by default), and the memory worker of the
# same (model, phase) reuses the timing worker's compiled kernels.
_INDUCTOR_CACHE = {"dir": None}


def run_worker(spec: dict[str, Any], settings: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Runs benchmarks/speed.py in a fresh process with `settings`; returns its RESULT (or an error)."""
    spec = dict(
        spec,
        torch_freezing=settings.get("torch_freezing", False),
        jax_variant=settings.get("jax_variant", "default"),
    )
    command = [sys.executable, str(SPEED_SCRIPT), "--spec", json.dumps(spec)]
    env = common.worker_env(settings)
    if _INDUCTOR_CACHE["dir"] is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE["dir"]
    return common.run_result_worker(command, env, timeout, REPO_ROOT)


def _workload_spec(args: argparse.Namespace, model: str, phase: str, scale: int = 1) -> dict[str, Any]:
    batch = args.train_batch if phase == "train" else args.infer_batch
    return {
        "model": model,
        "phase": phase,
        "batch": max(batch // scale, 1),
        "context": args.context,
        "output_patches": args.output_patches,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "dtype": args.dtype,
        "seed": 0,
    }


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _roof_fraction(result: dict[str, Any], roof_gflops: float | None) -> float | None:
    if result.get("device") != "cpu" or not roof_gflops:
        return None
    return result["gflops_per_s"] / roof_gflops


def make_row(
    spec: dict[str, Any],
    frameworks: list[str],
    worker: dict[str, Any],
    memory: dict[str, dict[str, Any]],
    settings: dict[str, Any],
    roof_gflops: float | None,
    load: tuple[float | None, float | None],
) -> dict[str, Any]:
    """One speed.json row from a worker's per-framework results (+ separately measured memory)."""
    results = worker.get("results", {})
    ok = {name: r for name, r in results.items() if "error" not in r}
    any_result = next(iter(ok.values()), {})
    row: dict[str, Any] = {
        "model": spec["model"],
        "phase": spec["phase"],
        "device": any_result.get("device", "unknown"),
        "dtype": any_result.get("dtype", spec["dtype"]),
        "batch": spec["batch"],
        "context": spec["context"],
        "output_patches": spec["output_patches"],
        "tokens": any_result.get("tokens"),
        "flops_per_window": any_result.get("flops_per_window"),
    }
    if "error" in worker:
        row["error"] = worker["error"]
    for name in MODEL_FRAMEWORKS:
        row[f"{name}_per_s"] = ok[name]["per_s"] if name in ok else None
    jax_rate = row["jax_per_s"]
    for name in ("torch_eager", "torch_compile"):
        other = row[f"{name}_per_s"]
        row[f"jax_vs_{name}"] = jax_rate / other if jax_rate and other else None
    for name in frameworks:
        result = results.get(name, {})
        if "error" in result:
            row[f"{name}_error"] = result["error"]
            continue
        if name not in ok:
            continue
        row[f"{name}_tokens_per_s"] = result["tokens_per_s"]
        row[f"{name}_compile_s"] = result["compile_s"]
        row[f"{name}_gflops_per_s"] = result["gflops_per_s"]
        row[f"{name}_step_s"] = result["step_s"]
        if "mfu" in result:
            row[f"{name}_mfu"] = result["mfu"]
        fraction = _roof_fraction(result, roof_gflops)
        if fraction is not None:
            row[f"{name}_frac_of_matmul_roof"] = fraction
        mem = memory.get(name) or {key: result[key] for key in ("peak_mem_mb", "mem_kind") if key in result}
        if "peak_mem_mb" in mem:
            row[f"{name}_peak_mem_mb"] = mem["peak_mem_mb"]
            row[f"{name}_mem_kind"] = mem.get("mem_kind")
        elif "error" in mem:
            row[f"{name}_peak_mem_error"] = mem["error"]
        if result.get("xla_buffers_mb") is not None:
            row[f"{name}_xla_buffers_mb"] = result["xla_buffers_mb"]
    torch_info = ok.get("torch_eager") or ok.get("torch_compile") or {}
    row["torch_threads"] = torch_info.get("torch_threads")
    row["settings"] = settings
    row["load_avg_1m"] = {"start": load[0], "end": load[1]}
    return row


def measure_roof(timeout: float) -> dict[str, Any]:
    """float32 2048^3 matmul GFLOP/s of each framework at best settings (the CPU roof for the ratios)."""
    roof = {}
    for name in ("torch_matmul", "jax_matmul"):
        result = run_worker({"frameworks": [name], "repeats": 7}, BEST_SETTINGS["train"], timeout)
        roof[name] = result.get("gflops_per_s", result.get("error"))
    return roof


def run_speed(args: argparse.Namespace, roof_gflops: float | None) -> list[dict[str, Any]]:
    rows = []
    for model in args.models:
        for phase in args.phases:
            spec = _workload_spec(args, model, phase)
            settings = BEST_SETTINGS[phase]
            load_start = _loadavg()
            started = time.perf_counter()
            # Built first, PyTorch eager's RSS growth is its own (the "cheap" memory figure).
            order = sorted(args.frameworks, key=lambda name: name != "torch_eager")
            worker = run_worker(dict(spec, frameworks=order), settings, args.worker_timeout)
            memory = {}
            for name in args.frameworks if args.memory == "all" else []:
                mem_spec = dict(spec, frameworks=[name], memory_only=True, warmup=1)
                result = run_worker(mem_spec, settings, args.worker_timeout)
                memory[name] = {"error": result["error"]} if "error" in result else result
            row = make_row(spec, args.frameworks, worker, memory, settings, roof_gflops, (load_start, _loadavg()))
            row["wall_s"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(format_rows([row], header=not rows[:-1]), flush=True)
    return rows


def _ablation_row(
    variant: str, phase: str, spec: dict[str, Any], settings: dict[str, Any], worker: dict[str, Any],
    load: tuple[float | None, float | None],
) -> dict[str, Any]:
    """{variant, phase, settings, per-framework rates and step times, each rate / eager's, load}."""
    results = worker.get("results", {})
    eager = results.get("torch_eager", {}).get("per_s")
    row: dict[str, Any] = {
        "variant": variant,
        "phase": phase,
        "model": spec["model"],
        "batch": spec["batch"],
        "context": spec["context"],
        "settings": settings,
        "load_avg_1m": {"start": load[0], "end": load[1]},
        "frameworks": {},
    }
    if "error" in worker:
        row["error"] = worker["error"]
    for name, result in results.items():
        if "error" in result:
            row["frameworks"][name] = {"error": result["error"]}
            continue
        row["frameworks"][name] = {
            "per_s": result["per_s"],
            "vs_torch_eager": result["per_s"] / eager if eager else None,
            "step_s": result["step_s"],
            "compile_s": result["compile_s"],
            "gflops_per_s": result["gflops_per_s"],
        }
    return row


def run_ablation(args: argparse.Namespace) -> list[dict[str, Any]]:
    """What each setting buys, per phase (see PROCESS_VARIANTS / JAX_VARIANTS_BY_PHASE)."""
    rows = []
    for phase in args.phases:
        spec = _workload_spec(args, args.ablate_model, phase, args.ablate_scale)
        best = BEST_SETTINGS[phase]
        jax_best = f"jax@{best['jax_variant']}"
        in_process = [f"jax@{name}" for name in JAX_VARIANTS_BY_PHASE[phase]] + ["torch_eager"]
        if phase == "infer" and "torch_compile" in args.frameworks:
            in_process += ["torch_compile", "torch_compile@freezing"]
        runs = [("compile_options", best, in_process)]
        runs += [(name, dict(best, **change), [jax_best, "torch_eager"]) for name, change in PROCESS_VARIANTS.items()]
        for variant, settings, frameworks in runs:
            load_start = _loadavg()
            worker = run_worker(dict(spec, frameworks=frameworks), settings, args.worker_timeout)
            row = _ablation_row(variant, phase, spec, settings, worker, (load_start, _loadavg()))
            rows.append(row)
            rates = {name: _fmt(r.get("per_s")) + " (" + _fmt(r.get("vs_torch_eager")) + "x eager)"
                     for name, r in row["frameworks"].items()}
            print(f"{phase:<6} {variant:<18} {rates} {row.get('error', '')}", flush=True)
    return rows


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def format_rows(rows: list[dict[str, Any]], header: bool = True) -> str:
    """Plain-text table: rates (windows/s), ratios, JAX GFLOP/s and compile times."""
    lines = []
    if header:
        lines.append(
            f"{'model':<10} {'phase':<6} {'batch':>5} {'jax/s':>8} {'eager/s':>8} {'compile/s':>9} "
            f"{'jax/eager':>9} {'jax/comp':>8} {'jax GF/s':>8} {'jax cmp s':>9} {'tc cmp s':>8}"
        )
    for row in rows:
        lines.append(
            f"{row['model']:<10} {row['phase']:<6} {row['batch']:>5} {_fmt(row['jax_per_s']):>8} "
            f"{_fmt(row['torch_eager_per_s']):>8} {_fmt(row['torch_compile_per_s']):>9} "
            f"{_fmt(row['jax_vs_torch_eager']):>9} {_fmt(row['jax_vs_torch_compile']):>8} "
            f"{_fmt(row.get('jax_gflops_per_s'), '.1f'):>8} {_fmt(row.get('jax_compile_s'), '.1f'):>9} "
            f"{_fmt(row.get('torch_compile_compile_s'), '.1f'):>8}"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        cpu_model = names[0] if names else cpu_model
    except OSError:
        pass
    versions = {}
    for package in ("jax", "jaxlib", "flax", "optax", "torch", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def run_scaling(args: argparse.Namespace) -> int:
    """benchmarks/scaling_nodes.py in a fresh process (its buffers never share one with the speed
    workers'), at the train phase's process settings; it writes DIR/scaling.json. -> its exit code."""
    command = [sys.executable, str(SCALING_SCRIPT), "--output", str(args.output)] + (["--quick"] if args.quick else [])
    print(f"\nstage-2 scaling against N: {' '.join(shlex.quote(part) for part in command[1:])}", flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=common.worker_env(BEST_SETTINGS["train"]), capture_output=True, text=True,
                              timeout=args.worker_timeout)  # this cwd: --output may be relative to it
    except subprocess.TimeoutExpired:
        print(f"scaling run exceeded --worker-timeout {args.worker_timeout:.0f}s; {SCALING_FILE} not written")
        return 1
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])[:500]
        print(f"scaling run exited {done.returncode}: {tail}")
        return done.returncode
    table = done.stdout.strip().splitlines()
    start = next((i for i, line in enumerate(table) if line.startswith("stage-2 cost against N")), 0)
    print("\n".join(table[start:]))
    print(f"scaling run took {time.perf_counter() - started:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    if args.skip_speed:
        return run_scaling(args)
    command = "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    started = time.time()
    meta: dict[str, Any] = {
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "machine": machine_info(),
        "load_avg_1m_start": _loadavg(),
        "best_settings": BEST_SETTINGS,
        "glibc_tunables_best": common.GLIBC_TUNABLES_BEST,
    }
    _INDUCTOR_CACHE["dir"] = tempfile.mkdtemp(prefix="factost_bench_inductor_")
    try:
        meta_path = _run(args, meta)
    finally:
        shutil.rmtree(_INDUCTOR_CACHE["dir"], ignore_errors=True)
        _INDUCTOR_CACHE["dir"] = None
    meta["load_avg_1m_end"] = _loadavg()
    meta["wall_s"] = round(time.time() - started, 1)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {meta_path.parent}/ in {meta['wall_s']:.0f} s")
    if args.ablate or args.skip_scaling:
        return 0
    return run_scaling(args)


def _run(args: argparse.Namespace, meta: dict[str, Any]) -> Path:
    """Runs the ablation or the speed table, writes its JSON, returns the meta file's path."""
    if args.ablate:
        rows = run_ablation(args)
        (args.output / "settings.json").write_text(json.dumps(rows, indent=1) + "\n")
        meta_path = args.output / "settings_meta.json"
    else:
        roof = measure_roof(args.worker_timeout)
        meta["matmul_roof_gflops"] = roof
        roof_values = [value for value in roof.values() if isinstance(value, float)]
        rows = run_speed(args, max(roof_values) if roof_values else None)
        (args.output / "speed.json").write_text(json.dumps(rows, indent=1) + "\n")
        meta_path = args.output / "speed_meta.json"
        print("\n" + format_rows(rows))
    return meta_path


if __name__ == "__main__":
    sys.exit(main())
