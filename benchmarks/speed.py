"""Speed measurements in a fresh process: `python benchmarks/speed.py --spec JSON` prints `RESULT {...}`.

`run.py` starts one worker per (model, phase, settings). XLA_FLAGS and GLIBC_TUNABLES are read once
at process start, so settings that differ need different processes; within one process the
frameworks are measured side by side: each is built and warmed up, then `repeats` rounds each time
one call of every framework in turn. Interleaving gives every framework the same share of whatever
else the (shared, noisy) machine is doing, so the ratios are fair even when the absolute numbers move.

Spec keys:
  frameworks: list of "jax" | "jax@<variant>" | "torch_eager" | "torch_compile" (or one of
    "jax_matmul" | "torch_matmul", alone, for the matmul roof); "jax" uses spec "jax_variant"
    (default "default"), "jax@<variant>" names one of common.JAX_VARIANTS, so several JAX
    compilations can be timed side by side;
  model (a size of MODEL_SIZES), phase ("train" | "infer"), batch, context, output_patches,
  warmup, repeats, dtype ("float32" | "bfloat16" | "auto": bfloat16 on a GPU, float32 on CPU),
  seed, jax_variant (for plain "jax"), torch_freezing (bool, inductor weight freezing for plain
  "torch_compile" inference; "torch_compile@freezing" always freezes), torch_compile_backend
  (default "inductor"; "eager" only traces with dynamo, for smoke tests that must take seconds).
  memory_only (bool): one framework, warmup + 1 call, reports only its peak memory. On CPU the
    peak RSS is per process, so a framework's own peak needs a process of its own.

What is timed:
  train: one optimizer step = forward + pinball loss + backward + global-norm clip (1.0) + AdamW
    (lr 1e-3, weight decay 0.01), dropout on (the model's 0.1), as in pretraining.
  infer: one deterministic forward pass over the whole batch (zero-shot forecast of `batch` series).
Every timed call blocks until its results are ready.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import common  # noqa: E402

MODEL_FRAMEWORKS = ("jax", "torch_eager", "torch_compile")
MATMUL_FRAMEWORKS = ("jax_matmul", "torch_matmul")
MATMUL_SIZE = 2048
ADAMW = {"lr": 1e-3, "weight_decay": 0.01, "clip_norm": 1.0}


@dataclasses.dataclass
class Runner:
    """A built, compiled benchmark for one framework: `run_once()` does one blocking call."""

    run_once: Callable[[], None]
    config: Any
    compile_s: float
    info: dict[str, Any]
    peak_memory_mb: Callable[[], float | None]  # device peak on an accelerator, else None
    hlo_text: Callable[[], str] | None = None  # JAX: the optimised HLO of the compiled program


def _resolve_dtype(requested: str, on_accelerator: bool) -> str:
    if requested == "auto":
        return "bfloat16" if on_accelerator else "float32"
    if requested not in ("float32", "bfloat16"):
        raise ValueError(f"spec dtype must be 'float32', 'bfloat16' or 'auto', got {requested!r}")
    return requested


def _workload(spec: dict[str, Any]) -> common.Workload:
    return common.Workload(spec["phase"], spec["batch"], spec["context"], spec["output_patches"])


# ----------------------------------------------------------------------------- JAX


def make_jax_loss(config: Any, num_output_patches: int, unroll: bool | None = None) -> Callable[..., Any]:
    """`loss_fn(params, batch, rng, deterministic) -> (pinball loss, {})`, the task interface of train/steps.py."""
    import numpy as np

    from factost_jax.metrics import pinball_loss
    from factost_jax.model.encoder import Encoder

    model = Encoder(config, unroll=unroll)
    levels = np.asarray(config.quantile_levels, np.float32)

    def loss_fn(params, batch, rng, deterministic):
        quantiles = model.apply(
            {"params": params},
            batch["context"],
            batch["context_mask"],
            num_output_patches,
            deterministic,
            rngs=None if deterministic else {"dropout": rng},
        )
        return pinball_loss(quantiles, batch["target"], levels, batch["target_mask"]), {}

    return loss_fn


def jax_train_config() -> SimpleNamespace:
    """The optimizer settings of spec §2.4 in the shape `train/optim.make_optimizer` reads."""
    return SimpleNamespace(
        lr=ADAMW["lr"],
        steps=100_000,
        warmup_frac=0.1,
        stable_until_frac=0.6,
        weight_decay=ADAMW["weight_decay"],
        clip_norm=ADAMW["clip_norm"],
    )


def build_jax(spec: dict[str, Any], variant: str = "default") -> Runner:
    """The project's own train step (factost_jax.train) or jitted forward (encoder.jitted_apply).

    `variant` names an entry of common.JAX_VARIANTS: XLA compiler options for this compilation, the
    PRNG of the dropout key and the layer stack's unroll. CPU-only options are dropped on an accelerator.
    """
    import jax

    from factost_jax.model import encoder as enc
    from factost_jax.model.config import model_config
    from factost_jax.train.optim import make_optimizer
    from factost_jax.train.steps import TrainState, make_train_step

    device = jax.devices()[0]
    on_accelerator = device.platform != "cpu"
    dtype = _resolve_dtype(spec.get("dtype", "auto"), on_accelerator)
    workload = _workload(spec)
    settings = common.jax_variant(variant)
    options = {
        key: value
        for key, value in settings["compiler_options"].items()
        if not (on_accelerator and key.startswith("xla_cpu"))
    }
    config = model_config(spec["model"], compute_dtype=dtype)
    params = enc.unbox(jax.jit(lambda key: enc.init_params(config, key))(jax.random.key(spec.get("seed", 0))))
    num_patches = workload.output_patches
    batch = jax.device_put(common.synthetic_batch(workload, spec.get("seed", 0)))

    if workload.phase == "train":
        loss_fn = make_jax_loss(config, num_patches, settings["unroll"])
        optimizer = make_optimizer(jax_train_config())
        holder = {"state": TrainState.create(params, optimizer)}
        rng = jax.random.key(1, impl=settings["prng_impl"])
        start = time.perf_counter()
        program = (
            jax.jit(make_train_step(loss_fn, optimizer), donate_argnums=0)
            .lower(holder["state"], batch, rng)
            .compile(compiler_options=options or None)
        )
        compile_s = time.perf_counter() - start

        def run_once() -> None:
            new_state, metrics = program(holder["state"], batch, rng)
            jax.block_until_ready((new_state, metrics))
            holder["state"] = new_state

    else:
        context, mask = batch["context"], batch["context_mask"]
        forward = enc.jitted_apply(config)  # the Forecaster's program, unless a variant changes the model
        if settings["unroll"] is not None:
            model = enc.Encoder(config, unroll=settings["unroll"])
            forward = jax.jit(lambda p, c, m, f: model.apply({"params": p}, c, m, f, True), static_argnums=3)
        start = time.perf_counter()
        program = forward.lower(params, context, mask, num_patches).compile(compiler_options=options or None)
        compile_s = time.perf_counter() - start

        def run_once() -> None:
            jax.block_until_ready(program(params, context, mask))

    def peak_memory_mb() -> float | None:
        if not on_accelerator:
            return None
        peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
        return None if peak is None else peak / 2**20

    info = {
        "device": device.device_kind if on_accelerator else "cpu",
        "dtype": dtype,
        "xla_buffers_mb": _xla_buffers_mb(program),
        "jax_version": jax.__version__,
        "jax_variant": variant,
        "compiler_options": options,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    return Runner(run_once, config, compile_s, info, peak_memory_mb, program.as_text)


def _xla_buffers_mb(program: Any) -> float | None:
    """XLA's own account of the program's buffers (arguments + outputs + temporaries - aliased), in MiB.

    (`peak_memory_in_bytes` is not filled in by the CPU backend of jaxlib 0.10, so the sum is used.)
    """
    stats = program.memory_analysis()
    if stats is None:
        return None
    total = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
    return round((total - stats.alias_size_in_bytes) / 2**20, 1)


# ----------------------------------------------------------------------------- PyTorch


def build_torch(spec: dict[str, Any], compiled: bool, freezing: bool = False) -> Runner:
    """benchmarks/reference_torch.py, eager or under torch.compile (model + loss compiled together).

    `freezing` (torch.compile inference only) turns on inductor's weight freezing: parameters become
    constants, folded and pre-packed for the CPU GEMM kernels.

    The AdamW step stays eager and uses torch's fused CPU/GPU kernel (foreach where fused is missing).
    Inference runs under torch.no_grad(): under torch.inference_mode() the compiled forward of the
    debug model took 0.8 s per call instead of a few ms (torch 2.13, CPU).
    """
    import torch

    from benchmarks import reference_torch as ref
    from factost_jax.model.config import model_config

    on_accelerator = torch.cuda.is_available()
    device = torch.device("cuda" if on_accelerator else "cpu")
    dtype = _resolve_dtype(spec.get("dtype", "auto"), on_accelerator)
    workload = _workload(spec)
    torch.manual_seed(spec.get("seed", 0))
    config = model_config(spec["model"])
    model = ref.TorchEncoder(config).to(device)
    batch = {
        name: torch.from_numpy(array).to(device)
        for name, array in common.synthetic_batch(workload, spec.get("seed", 0)).items()
    }
    levels = torch.tensor(config.quantile_levels, dtype=torch.float32, device=device)
    num_patches = workload.output_patches
    freezing = freezing and compiled and workload.phase == "infer"
    backend = spec.get("torch_compile_backend", "inductor")
    if compiled:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = freezing

    def autocast():
        if dtype == "bfloat16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync() -> None:
        if on_accelerator:
            torch.cuda.synchronize()

    optimizer_impl = None
    if workload.phase == "train":
        model.train()

        def loss_fn(context, mask, target, target_mask):
            with autocast():
                quantiles = model(context, mask, num_patches)
            return ref.pinball_loss(quantiles.float(), target, levels, target_mask)

        loss_impl = torch.compile(loss_fn, backend=backend) if compiled else loss_fn
        try:
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=ADAMW["lr"], weight_decay=ADAMW["weight_decay"], fused=True
            )
            optimizer_impl = "fused"
        except (RuntimeError, ValueError):  # fused AdamW is missing for this device/dtype
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=ADAMW["lr"], weight_decay=ADAMW["weight_decay"], foreach=True
            )
            optimizer_impl = "foreach"
        parameters = list(model.parameters())

        def run_once() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_impl(batch["context"], batch["context_mask"], batch["target"], batch["target_mask"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, ADAMW["clip_norm"], foreach=True)
            optimizer.step()
            sync()

    else:
        model.eval()

        def forward(context, mask):
            with autocast():
                return model(context, mask, num_patches)

        forward_impl = torch.compile(forward, backend=backend) if compiled else forward

        def run_once() -> None:
            with torch.no_grad():
                forward_impl(batch["context"], batch["context_mask"])
            sync()

    # Compilation happens inside the first call; time it, then subtract one steady call.
    start = time.perf_counter()
    run_once()
    first_call_s = time.perf_counter() - start
    start = time.perf_counter()
    run_once()
    second_call_s = time.perf_counter() - start
    compile_s = max(first_call_s - second_call_s, 0.0) if compiled else 0.0

    def peak_memory_mb() -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if on_accelerator else None

    info = {
        "device": torch.cuda.get_device_name() if on_accelerator else "cpu",
        "dtype": dtype,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "optimizer_impl": optimizer_impl,
        "inductor_freezing": freezing if compiled else None,
        "torch_compile_backend": backend if compiled else None,
    }
    return Runner(run_once, config, compile_s, info, peak_memory_mb)


TORCH_COMPILE_FREEZING = "torch_compile@freezing"


def is_model_framework(name: str) -> bool:
    """"jax", "jax@<variant>" (a key of common.JAX_VARIANTS), "torch_eager", "torch_compile" or
    "torch_compile@freezing"."""
    if name.startswith("jax@"):
        return name[4:] in common.JAX_VARIANTS
    return name in MODEL_FRAMEWORKS or name == TORCH_COMPILE_FREEZING


def build(framework: str, spec: dict[str, Any]) -> Runner:
    """A runner for `framework`; plain "jax" / "torch_compile" take spec's jax_variant / torch_freezing."""
    if framework == "jax" or framework.startswith("jax@"):
        variant = framework[4:] if framework.startswith("jax@") else spec.get("jax_variant", "default")
        return build_jax(spec, variant)
    if framework == TORCH_COMPILE_FREEZING:
        return build_torch(spec, compiled=True, freezing=True)
    compiled = framework == "torch_compile"
    return build_torch(spec, compiled=compiled, freezing=compiled and bool(spec.get("torch_freezing", False)))


# ----------------------------------------------------------------------------- measurement


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0][:500]


def _summary(
    workload: common.Workload, runner: Runner, times: list[float], device_peak_mb: float | None = None
) -> dict[str, Any]:
    """Rates, FLOPs and (on an accelerator) MFU and `device_peak_mb`, the framework's own peak."""
    config = runner.config
    step_s = common.median(times)
    flops = common.flops_per_window(config, workload)
    result = {
        "step_s": [round(t, 5) for t in times],
        "step_s_median": round(step_s, 5),
        "per_s": workload.batch / step_s,
        "tokens": common.num_tokens(config, workload.context, workload.output_patches),
        "compile_s": round(runner.compile_s, 3),
        "flops_per_window": flops,
        "gflops_per_s": flops * workload.batch / step_s / 1e9,
        **runner.info,
    }
    result["tokens_per_s"] = workload.batch * result["tokens"] / step_s
    if runner.info["device"] != "cpu":
        peak_flops = common.device_peak_flops(runner.info["device"], runner.info["dtype"])
        result["mfu"] = None if peak_flops is None else result["gflops_per_s"] * 1e9 / peak_flops
        result.update(peak_mem_mb=None if device_peak_mb is None else round(device_peak_mb, 1), mem_kind="device_peak")
    return result


def _import_frameworks(frameworks: list[str]) -> None:
    """Imports the libraries before the memory baseline, so import cost is not counted as model memory."""
    if any(name.startswith("jax") for name in frameworks):
        import jax  # noqa: F401

        import factost_jax.model.encoder  # noqa: F401
    if any(name.startswith("torch") for name in frameworks):
        import torch  # noqa: F401

        import benchmarks.reference_torch  # noqa: F401


def device_memory_mark_mb(framework: str) -> float | None:
    """Device memory `framework`'s allocator holds now (MiB), resetting its peak where the library can.

    Taken before a framework is built, so that its peak after the warm-up minus this mark is its own
    peak even with other frameworks' buffers alive in the process: torch's peak is reset here; JAX's
    cannot be, so its figure is exact for the first JAX program of a process (the speed workers build
    one, first). None on CPU.
    """
    if framework.startswith("jax"):
        import jax

        device = jax.devices()[0]
        if device.platform == "cpu":
            return None
        return (device.memory_stats() or {}).get("bytes_in_use", 0) / 2**20
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 2**20


def measure_models(spec: dict[str, Any]) -> dict[str, Any]:
    """Builds every framework of the spec, warms each up, then times `repeats` interleaved rounds.

    Returns {"results": {framework: summary or {"error": ...}}}. A framework that fails to build
    (e.g. torch.compile without a working C++ toolchain) is reported with its error; the rest run on.
    """
    workload = _workload(spec)
    frameworks = list(spec["frameworks"])
    unknown = [name for name in frameworks if not is_model_framework(name)]
    if unknown or not frameworks:
        raise ValueError(
            f"spec frameworks must be a non-empty list of {MODEL_FRAMEWORKS} or jax@<variant>, got {frameworks}"
        )
    _import_frameworks(frameworks)
    runners: dict[str, Runner] = {}
    results: dict[str, dict[str, Any]] = {}
    first_peak_mb = None
    device_peaks: dict[str, float | None] = {}
    for position, name in enumerate(frameworks):
        if position == 0:
            reset = common.reset_peak_rss()
            baseline_kb = common.read_memory_kb().get("VmRSS", 0)
        try:
            mark = device_memory_mark_mb(name)
            runners[name] = build(name, spec)
            for _ in range(spec["warmup"]):
                runners[name].run_once()
            peak = runners[name].peak_memory_mb()
            device_peaks[name] = None if peak is None or mark is None else peak - mark
        except Exception as err:  # a failing framework is a result to record, never a crash of the others
            results[name] = {"error": _error_text(err), "traceback": traceback.format_exc()[-3000:]}
        if position == 0 and reset:
            # Only the first framework's growth is its own: later ones reuse memory freed before them.
            first_peak_mb = (common.read_memory_kb().get("VmHWM", baseline_kb) - baseline_kb) / 1024.0
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(spec["repeats"]):
        for name, runner in runners.items():
            times[name].extend(common.time_calls(runner.run_once, 0, 1, time.perf_counter))
    for name, runner in runners.items():
        results[name] = _summary(workload, runner, times[name], device_peaks.get(name))
    first = frameworks[0]
    if first_peak_mb is not None and first in runners and results[first].get("mem_kind") != "device_peak":
        results[first].update(peak_mem_mb=round(first_peak_mb, 1), mem_kind="host_rss_delta (built first)")
    return {"results": results}


def measure_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of one framework: host RSS growth over build + warmup + one call, or the device peak."""
    frameworks = list(spec["frameworks"])
    if len(frameworks) != 1 or not is_model_framework(frameworks[0]):
        raise ValueError(f"a memory_only spec needs exactly one framework from {MODEL_FRAMEWORKS}, got {frameworks}")
    _import_frameworks(frameworks)
    reset = common.reset_peak_rss()
    baseline_kb = common.read_memory_kb().get("VmRSS", 0)
    runner = build(frameworks[0], spec)
    for _ in range(spec.get("warmup", 1) + 1):
        runner.run_once()
    device_peak = runner.peak_memory_mb()
    if device_peak is not None:
        return {"peak_mem_mb": round(device_peak, 1), "mem_kind": "device_peak"}
    peak_kb = common.read_memory_kb().get("VmHWM")
    if not reset or peak_kb is None:
        return {"peak_mem_mb": None, "mem_kind": "unavailable (no /proc/self/clear_refs)"}
    return {"peak_mem_mb": round((peak_kb - baseline_kb) / 1024.0, 1), "mem_kind": "host_rss_delta"}


def measure_matmul(framework: str, repeats: int) -> dict[str, Any]:
    """float32 [n, n] @ [n, n] throughput (GFLOP/s): the practical roof a dense model can approach."""
    n = MATMUL_SIZE
    if framework == "jax_matmul":
        import jax
        import jax.numpy as jnp

        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        matmul = jax.jit(jnp.matmul)

        def run_once() -> None:
            jax.block_until_ready(matmul(a, b))

    else:
        import torch

        a, b = torch.randn(n, n), torch.randn(n, n)

        def run_once() -> None:
            torch.matmul(a, b)

    times = common.time_calls(run_once, 2, repeats, time.perf_counter)
    return {"gflops_per_s": 2 * n**3 / common.median(times) / 1e9, "matmul_size": n}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    frameworks = spec.get("frameworks")
    if not isinstance(frameworks, list):
        raise ValueError(f"spec frameworks must be a list, got {frameworks!r}")
    if len(frameworks) == 1 and frameworks[0] in MATMUL_FRAMEWORKS:
        return measure_matmul(frameworks[0], spec.get("repeats", 5))
    if spec.get("memory_only", False):
        return measure_memory(spec)
    return measure_models(spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One benchmark worker (see the module docstring).")
    parser.add_argument("--spec", required=True, help="JSON object describing the measurement")
    args = parser.parse_args(argv)
    try:
        spec = json.loads(args.spec)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--spec must be a JSON object: {err}") from None
    if not isinstance(spec, dict):
        raise SystemExit(f"--spec must be a JSON object, got {type(spec).__name__}")
    result: dict[str, Any] = {"spec": spec, "host": platform.node(), "pid": os.getpid()}
    try:
        result.update(measure(spec))
    except Exception as err:  # reported to run.py, which records it in the output
        result["error"] = _error_text(err)
        result["traceback"] = traceback.format_exc()[-4000:]
    print(common.RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
