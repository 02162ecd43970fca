"""Helpers shared by the speed benchmark: model FLOPs, synthetic batches, memory, timing, settings.

Nothing here imports jax or torch at module level, so the orchestrator (`run.py`) can set XLA_FLAGS
and GLIBC_TUNABLES for each worker before either framework starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# The glibc allocator settings of the Makefile: no mmap'd chunks and no trimming, so the large
# activation buffers of each step are reused instead of being mapped and unmapped (page faults).
GLIBC_TUNABLES_BEST = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184:glibc.malloc.arena_max=1"

# JAX settings applied per compilation (`.compile(compiler_options=...)`) or per traced model
# (`unroll`), so that variants can be timed side by side in one process. "ynn_*" choose which ops XLA:CPU hands to YNNPACK (jaxlib
# 0.10's default fuses dots together with neighbouring elementwise ops and reductions); "rbg" draws
# dropout masks with the RBG generator instead of threefry (cheaper on CPU, a different stream).
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
JAX_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "ynn_dot": {"compiler_options": {YNN_OPTION: "LIBRARY_FUSION_TYPE_DOT"}},
    # INVALID is the enum's zero: XLA logs "Unsupported fusion type: 0" once and fuses nothing.
    "ynn_off": {"compiler_options": {YNN_OPTION: "LIBRARY_FUSION_TYPE_INVALID"}},
    "rbg": {"prng_impl": "rbg"},
    "ynn_dot_rbg": {"compiler_options": {YNN_OPTION: "LIBRARY_FUSION_TYPE_DOT"}, "prng_impl": "rbg"},
    # The layers under nn.scan instead of unrolled (EncoderStack.unroll, the CPU default): what unrolling buys.
    "scan": {"unroll": False},
    # Smoke runs only (benchmarks/gpu_pass.py --smoke): LLVM at -O0 compiles the debug training step
    # 3x faster (11 s against 33 s at load 7), and a smoke run times nothing worth keeping.
    "fast_compile": {"compiler_options": {"xla_backend_optimization_level": 0,
                                          "xla_llvm_disable_expensive_passes": True}},
}

# Dense peak of an accelerator per compute dtype (FLOP/s), for MFU. Values are the vendors' dense
# (no sparsity) tensor-core figures; float32 uses the plain FP32 (non-TF32) rate.
# Matched by substring in this order, so the PCIe H100 (a lower clock and power) comes before "H100".
DEVICE_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bfloat16": 756e12, "float32": 51e12},
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
    "L4": {"bfloat16": 121e12, "float32": 30.3e12},
}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmarked shape: `batch` windows of `context` steps predicting `output_patches` patches."""

    phase: str  # "train" | "infer"
    batch: int
    context: int
    output_patches: int

    def __post_init__(self) -> None:
        if self.phase not in ("train", "infer"):
            raise ValueError(f"Workload.phase must be 'train' or 'infer', got {self.phase!r}")
        for name in ("batch", "context", "output_patches"):
            if getattr(self, name) < 1:
                raise ValueError(f"Workload.{name} must be >= 1, got {getattr(self, name)}")


def num_tokens(config: Any, context: int, output_patches: int) -> int:
    """Sequence length the encoder runs on: context patches (after truncation) + [REG] + F."""
    kept = min(context, config.max_context_patches * config.patch_size)
    return -(-kept // config.patch_size) + 1 + output_patches


def forward_flops_per_window(config: Any, context: int, output_patches: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward pass over one window.

    Counts every dense layer on every token the encoder computes (padded context patches cost the
    same as observed ones: shapes are static) and both attention products. Elementwise work (norms,
    RoPE, softmax, gates) is left out, as MFU conventions do.
    """
    d, ffn, heads = config.d_model, config.ffn_dim, config.num_heads
    head_dim = d // heads
    patch = config.patch_size
    seq = num_tokens(config, context, output_patches)
    embedded = seq - 1  # every token but [REG] goes through the token embedding
    q_width = 2 * head_dim if config.gated_attention else head_dim
    embed = embedded * 2 * (2 * (2 * patch) * ffn + ffn * d)
    projections = seq * 2 * (d * heads * q_width + 2 * d * heads * head_dim + heads * head_dim * d)
    attention = 2 * 2 * seq * seq * heads * head_dim  # q k^T and probs v
    mlp = seq * 2 * 3 * d * ffn
    head = output_patches * 2 * (2 * d * ffn + ffn * patch * len(config.quantile_levels))
    return int(embed + config.num_layers * (projections + attention + mlp) + head)


def flops_per_window(config: Any, workload: Workload) -> int:
    """Forward FLOPs for inference; 3x forward for a training step (backward = 2x forward)."""
    forward = forward_flops_per_window(config, workload.context, workload.output_patches)
    return forward if workload.phase == "infer" else 3 * forward


def synthetic_batch(workload: Workload, seed: int = 0) -> dict[str, np.ndarray]:
    """A pretraining-like batch (spec §2.1): z-scored seasonal series with outlier gaps and prefix masking.

    Returns context [B, L] float32 (NaN = missing), context_mask [B, L] bool,
    target [B, F*16] float32, target_mask [B, F*16] bool. The effective context length is uniform
    in about [48, L] as the randomized prefix masking makes it.
    """
    rng = np.random.default_rng(seed)
    batch, length = workload.batch, workload.context
    horizon = workload.output_patches * 16
    time = np.arange(length + horizon, dtype=np.float32)
    period = rng.uniform(12.0, 200.0, (batch, 1)).astype(np.float32)
    phase = rng.uniform(0.0, 2 * np.pi, (batch, 1)).astype(np.float32)
    series = np.sin(2 * np.pi * time / period + phase) + 0.3 * rng.standard_normal((batch, length + horizon))
    series = series.astype(np.float32)
    series[rng.random(series.shape) < 0.02] = np.nan
    context, target = series[:, :length].copy(), series[:, length:].copy()
    min_context = min(48, length)
    for row, masked in enumerate(rng.integers(0, length - min_context + 1, batch)):
        context[row, :masked] = np.nan
    return {
        "context": context,
        "context_mask": np.isfinite(context),
        "target": target,
        "target_mask": np.isfinite(target),
    }


def read_memory_kb() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process in kB, from /proc/self/status (empty if unreadable)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def time_calls(run_once: Callable[[], None], warmup: int, repeats: int, clock: Callable[[], float]) -> list[float]:
    """Seconds of each of `repeats` calls of `run_once` (which must block until done), after `warmup` calls."""
    for _ in range(warmup):
        run_once()
    times = []
    for _ in range(repeats):
        start = clock()
        run_once()
        times.append(clock() - start)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def device_peak_flops(device_kind: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of a named accelerator (matched by substring, e.g. 'NVIDIA H200'), or None."""
    for name, peaks in DEVICE_PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def jax_variant(name: str) -> dict[str, Any]:
    """{"compiler_options": {...}, "prng_impl": str | None, "unroll": bool | None} of a named JAX variant
    (see JAX_VARIANTS); unroll None is the model's default."""
    if name not in JAX_VARIANTS:
        raise ValueError(f"unknown JAX variant {name!r}; expected one of {sorted(JAX_VARIANTS)}")
    variant = JAX_VARIANTS[name]
    return {"compiler_options": dict(variant.get("compiler_options", {})), "prng_impl": variant.get("prng_impl"),
            "unroll": variant.get("unroll")}


def worker_env(settings: Mapping[str, Any], base_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of one benchmark worker: the process-wide settings that cannot differ in one process.

    settings: {"glibc": bool, "omp_passive": bool, ...}. glibc sets GLIBC_TUNABLES_BEST (or removes
    GLIBC_TUNABLES); omp_passive sets OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads then sleep at
    barriers instead of spinning, which matters when other processes share the cores. Inherited
    XLA_FLAGS that simulate several host devices (the test suite's) are dropped: a benchmark runs on
    the real device count. On a GPU, JAX must not preallocate most of the memory: PyTorch shares it.
    """
    env = dict(os.environ if base_env is None else base_env)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if settings.get("glibc", True):
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES_BEST
    else:
        env.pop("GLIBC_TUNABLES", None)
    if settings.get("omp_passive", False):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        env.pop("OMP_WAIT_POLICY", None)
    simulated_devices = "--xla_force_host_platform_device_count"
    flags = " ".join(flag for flag in env.get("XLA_FLAGS", "").split() if not flag.startswith(simulated_devices))
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    return env


# A worker prints its result as one line "RESULT {json}"; everything else it prints is log.
RESULT_PREFIX = "RESULT "


def run_result_worker(command: list[str], env: Mapping[str, str], timeout: float, cwd: Any) -> dict[str, Any]:
    """Runs a benchmark worker process and returns the JSON of its last RESULT line, or {"error": ...}
    naming the timeout or the worker's exit code and the tail of its output."""
    try:
        done = subprocess.run(command, env=dict(env), capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        return {"error": f"worker exceeded --worker-timeout {timeout:.0f}s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"error": f"worker exited {done.returncode} without a result: {' | '.join(tail)[:500]}"}
