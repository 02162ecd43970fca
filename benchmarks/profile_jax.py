"""Where a JAX step spends its time: `python benchmarks/profile_jax.py --model tiny --phase train --output DIR`.

Two views, written to DIR/profile_{model}_{phase}.json and printed:
  1. Phase split, JAX and PyTorch eager side by side (interleaved rounds): forward (with dropout),
     forward + backward, and the whole step (+ clip + AdamW). For inference only the forward exists.
  2. The JAX step under `jax.profiler` (Perfetto trace): the time of every XLA CPU thunk, joined
     with the optimised HLO to name its primitive (dot_general, exp, ...) and its pass (forward,
     backward = transpose(jvp ...), other = optimizer / metrics / dropout bits), summed per category.
Thunks of one step may run concurrently and one thunk may use both cores, so the summed thunk time
is a share of work, not of wall time. Run it with the same environment as the benchmark
(GLIBC_TUNABLES, XLA_FLAGS) to profile what the benchmark measures.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import common, speed  # noqa: E402

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+\s+([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
MATMUL_PRIMITIVES = {"dot_general", "dot", "conv_general_dilated"}
MOVEMENT_PRIMITIVES = {
    "transpose", "reshape", "concatenate", "pad", "slice", "dynamic_slice", "dynamic_update_slice",
    "broadcast_in_dim", "copy", "gather", "scatter", "squeeze", "expand_dims", "select_n", "convert_element_type",
}
REDUCTION_PRIMITIVES = {"reduce_sum", "reduce_max", "reduce_min", "argmax", "reduce_precision", "cumsum"}
# Dropout masks: jax.random's bernoulli/uniform and the threefry hash (a while loop on CPU).
RNG_MARKERS = ("threefry", "_bernoulli", "_uniform", "random_bits", "rng_bit_generator", "random_fold_in")


def hlo_instruction_index(hlo_text: str) -> dict[str, dict[str, Any]]:
    """Instruction name -> {"opcode", "op_name", "has_dot", "has_transpose"} for an optimised HLO module.

    `has_dot` is True for a dot/convolution and for a fusion whose fused computation holds one
    (XLA CPU fuses matmuls with their neighbours into YNNPACK/XNNPACK or loop fusions);
    `has_transpose` for a transpose and for a fusion that physically transposes an array.
    """
    computation_has_dot: dict[str, bool] = {}
    computation_has_transpose: dict[str, bool] = {}
    current = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = header.group(1)
            computation_has_dot[current] = False
            computation_has_transpose[current] = False
        elif current is not None:
            if " dot(" in line or " convolution(" in line:
                computation_has_dot[current] = True
            if " transpose(" in line:
                computation_has_transpose[current] = True
    index = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        op_name = _OP_NAME.search(line)
        called = _CALLS.search(line)
        opcode = match.group(2)
        fused = called.group(1) if opcode == "fusion" and called else None
        has_dot = opcode in ("dot", "convolution") or computation_has_dot.get(fused, False)
        has_transpose = opcode == "transpose" or computation_has_transpose.get(fused, False)
        index[match.group(1)] = {
            "opcode": opcode,
            "op_name": op_name.group(1) if op_name else "",
            "has_dot": has_dot,
            "has_transpose": has_transpose,
        }
    return index


def classify(instruction: dict[str, Any]) -> tuple[str, str]:
    """(category, pass) of one XLA instruction, from its opcode, fused contents and JAX op_name."""
    op_name = instruction["op_name"]
    primitive = (op_name.rsplit("/", 1)[-1] if op_name else instruction["opcode"]).split("[", 1)[0]
    if instruction["has_dot"] or primitive in MATMUL_PRIMITIVES:
        category = "matmul"
    elif any(marker in op_name for marker in RNG_MARKERS):
        category = "rng (dropout)"
    elif instruction.get("has_transpose", False):
        category = "transpose (layout)"
    elif primitive in REDUCTION_PRIMITIVES:
        category = "reduction"
    elif primitive in MOVEMENT_PRIMITIVES:
        category = "data movement"
    elif instruction["opcode"] in ("while", "call", "conditional", "tuple", "get-tuple-element", "parameter"):
        category = "control"
    else:
        category = "elementwise"
    if "transpose(" in op_name:
        phase = "backward"
    elif "jvp(" in op_name or "Encoder" in op_name:
        phase = "forward"
    else:
        phase = "other"
    return category, phase


def thunk_times_us(trace_dir: Path) -> dict[str, float]:
    """Summed duration (µs) per event name in the newest Perfetto trace under `trace_dir`."""
    traces = sorted(trace_dir.rglob("perfetto_trace.json.gz"), key=lambda path: path.stat().st_mtime)
    if not traces:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}; jax.profiler wrote nothing")
    with gzip.open(traces[-1], "rt") as handle:
        trace = json.load(handle)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    totals: dict[str, float] = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and "dur" in event:
            totals[event["name"]] += float(event["dur"])
    return dict(totals)


def op_breakdown(runner: speed.Runner, steps: int) -> dict[str, Any]:
    """Traces `steps` calls of a (warm) JAX runner and sums thunk time per category, pass and op."""
    import jax

    index = hlo_instruction_index(runner.hlo_text())
    with tempfile.TemporaryDirectory(prefix="factost_profile_") as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                runner.run_once()
        totals = thunk_times_us(Path(tmp))
    by_category: dict[str, float] = collections.Counter()
    by_pass: dict[str, float] = collections.Counter()
    ops = []
    for name, micros in totals.items():
        instruction = index.get(name)
        if instruction is None:
            continue  # runtime / Python events: not XLA work
        category, phase = classify(instruction)
        per_step_ms = micros / steps / 1e3
        by_category[category] += per_step_ms
        by_pass[phase] += per_step_ms
        ops.append({"name": name, "ms_per_step": per_step_ms, "category": category, "pass": phase,
                    "op_name": instruction["op_name"][-160:]})
    total = sum(by_category.values())
    ops.sort(key=lambda op: -op["ms_per_step"])
    return {
        "thunk_ms_per_step": total,
        "by_category_ms": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
        "by_pass_ms": dict(sorted(by_pass.items(), key=lambda kv: -kv[1])),
        "top_ops": ops[:25],
    }


def phase_split(spec: dict[str, Any], repeats: int, jax_variant: str) -> dict[str, dict[str, float]]:
    """Median seconds of forward / forward+backward / step for JAX and PyTorch eager, interleaved."""
    import jax
    import torch

    from benchmarks import reference_torch as ref
    from factost_jax.model import encoder as enc
    from factost_jax.model.config import model_config

    workload = speed._workload(spec)
    config = model_config(spec["model"])
    batch_np = common.synthetic_batch(workload, 0)
    calls: dict[str, Any] = {}

    variant = common.jax_variant(jax_variant)
    options = variant["compiler_options"] or None
    params = enc.unbox(enc.init_params(config, jax.random.key(0)))
    batch = jax.device_put(batch_np)
    rng = jax.random.key(1, impl=variant["prng_impl"])
    if workload.phase == "train":
        loss_fn = speed.make_jax_loss(config, workload.output_patches)

        def loss(p, b, r):
            return loss_fn(p, b, r, False)[0]

        forward = jax.jit(loss).lower(params, batch, rng).compile(compiler_options=options)
        grad = jax.jit(jax.value_and_grad(loss)).lower(params, batch, rng).compile(compiler_options=options)
        calls["jax forward"] = lambda: jax.block_until_ready(forward(params, batch, rng))
        calls["jax forward+backward"] = lambda: jax.block_until_ready(grad(params, batch, rng))
    else:
        context, mask = batch["context"], batch["context_mask"]
        apply = enc.jitted_apply(config).lower(params, context, mask, workload.output_patches)
        apply = apply.compile(compiler_options=options)
        calls["jax forward"] = lambda: jax.block_until_ready(apply(params, context, mask))

    model = ref.TorchEncoder(config)
    tensors = {name: torch.from_numpy(array) for name, array in batch_np.items()}
    levels = torch.tensor(config.quantile_levels)

    def torch_loss():
        quantiles = model(tensors["context"], tensors["context_mask"], workload.output_patches)
        return ref.pinball_loss(quantiles, tensors["target"], levels, tensors["target_mask"])

    if workload.phase == "train":
        model.train()

        def torch_backward():
            model.zero_grad(set_to_none=True)
            torch_loss().backward()

        calls["torch forward"] = torch_loss
        calls["torch forward+backward"] = torch_backward
    else:
        model.eval()

        def torch_forward():
            with torch.no_grad():
                model(tensors["context"], tensors["context_mask"], workload.output_patches)

        calls["torch forward"] = torch_forward
    runners = {f"{name} step": speed.build(name, spec) for name in (f"jax@{jax_variant}", "torch_eager")}
    if workload.phase == "train":
        calls["jax step"] = runners[f"jax@{jax_variant} step"].run_once
        calls["torch step"] = runners["torch_eager step"].run_once
    for call in calls.values():
        call()  # compile / warm up
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].extend(common.time_calls(call, 0, 1, time.perf_counter))
    return {name: {"median_s": common.median(values), "all_s": values} for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--phase", default="train", choices=("train", "infer"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--output-patches", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="traced JAX calls")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the phase split")
    parser.add_argument("--jax-variant", default="default", help="a key of common.JAX_VARIANTS")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    common.jax_variant(args.jax_variant)  # a typo fails here, before minutes of compiling
    spec = {"model": args.model, "phase": args.phase, "batch": args.batch, "context": args.context,
            "output_patches": args.output_patches, "dtype": "auto", "seed": 0}
    args.output.mkdir(parents=True, exist_ok=True)

    runner = speed.build_jax(spec, args.jax_variant)
    runner.run_once()
    report: dict[str, Any] = {"spec": spec, "settings_env": runner.info}
    report["jax_ops"] = op_breakdown(runner, args.steps)
    report["phase_split"] = phase_split(spec, args.repeats, args.jax_variant)
    path = args.output / f"profile_{args.model}_{args.phase}_{args.jax_variant}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")

    ops = report["jax_ops"]
    print(f"JAX thunk time per step: {ops['thunk_ms_per_step']:.1f} ms")
    for title in ("by_category_ms", "by_pass_ms"):
        print("  " + ", ".join(f"{k} {v:.0f} ms ({v / ops['thunk_ms_per_step']:.0%})" for k, v in ops[title].items()))
    for op in ops["top_ops"][:10]:
        print(f"  {op['ms_per_step']:8.1f} ms  {op['category']:<14} {op['pass']:<9} {op['op_name'][-90:]}")
    for name, value in report["phase_split"].items():
        print(f"  {name:<24} {value['median_s'] * 1e3:9.1f} ms")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
