"""Issue 17's CPU leads that did not pay, kept reproducible: `python benchmarks/cpu_leads.py --lead attention|batch`.

attention: the tiny forward (context 2048, 16 output patches, `--batch` windows, the Forecaster's
  compiler options) with GatedAttention written three ways, each compiled in turn and timed in
  interleaved rounds in one process:
    current     the model's einsums over [B, S, H, hd] with the safe masked softmax;
    sdpa_xla    jax.nn.dot_product_attention(implementation="xla") with a key mask, padded queries
                zeroed afterwards (the same function, as in benchmarks/reference_torch.py);
    head_major  q, k, v transposed to [B, H, S, hd] once after the projections, so both attention
                contractions see their batch axes leading.
  Prints each variant's largest difference from `current` and its speed-up.
batch: `Forecaster.forecast` of 1,024 series at `--setting` with batch sizes 64 ... 1,024 (all
  compiled first), timed in interleaved rounds: series/s of each.

Shapes and parameters are the model's; nothing here changes the package.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def interleaved(calls: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each call per round, the calls taking turns (every round times each once)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def attention_variants():
    """{name: GatedAttention subclass}; the subclasses keep the parent's parameter names and shapes."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from factost_jax.model import layers

    base = layers.GatedAttention

    def qkv(module, x, cos, sin):
        """q and gate [B, S, H, hd] each, k, v [B, S, H, hd] after QK-norm and RoPE, as the model has them."""
        cfg = module.config
        dtype = layers.compute_dtype_of(cfg)
        hd = cfg.head_dim

        def projection(width, name):
            return layers.Linear((cfg.num_heads, width), ("embed", "heads", "kv"), dtype=dtype, name=name)

        q_and_gate = projection(2 * hd, "q_proj")(x)
        k, v = projection(hd, "k_proj")(x), projection(hd, "v_proj")(x)
        q = layers.RMSNorm(cfg.norm_eps, "kv", jnp.float32, name="q_norm")(q_and_gate[..., :hd])
        k = layers.RMSNorm(cfg.norm_eps, "kv", jnp.float32, name="k_norm")(k)
        q = layers.apply_rope(q, cos, sin).astype(dtype)
        return q, q_and_gate[..., hd:], layers.apply_rope(k, cos, sin).astype(dtype), v

    def finish(module, out, gate):
        cfg = module.config
        out = out * nn.sigmoid(gate)
        return layers.Linear((cfg.d_model,), ("heads", "kv", "embed"), in_ndim=2,
                             dtype=layers.compute_dtype_of(cfg), name="o_proj")(out)

    class SdpaXla(base):
        @nn.compact
        def __call__(self, x, valid, cos, sin, prefix_gate=None):
            q, gate, k, v = qkv(self, x, cos, sin)
            out = jax.nn.dot_product_attention(q, k, v, mask=valid[:, None, None, :], implementation="xla")
            return finish(self, out * valid[:, :, None, None].astype(out.dtype), gate)

    class HeadMajor(base):
        @nn.compact
        def __call__(self, x, valid, cos, sin, prefix_gate=None):
            q, gate, k, v = qkv(self, x, cos, sin)
            q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # [B, H, S, hd]
            logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
            probs = layers.masked_softmax(logits / np.sqrt(self.config.head_dim).astype(np.float32),
                                          valid[:, None, :, None] & valid[:, None, None, :])
            return finish(self, jnp.einsum("bhqk,bhkd->bqhd", probs.astype(v.dtype), v), gate)

    return {"current": base, "sdpa_xla": SdpaXla, "head_major": HeadMajor}


def lead_attention(batch: int, rounds: int) -> None:
    import jax

    from benchmarks import common
    from factost_jax.model import encoder as enc
    from factost_jax.model import layers
    from factost_jax.model.config import model_config

    config = model_config("tiny")
    params = enc.unbox(jax.jit(lambda key: enc.init_params(config, key))(jax.random.key(0)))
    data = common.synthetic_batch(common.Workload("infer", batch, 2048, 16), 0)
    context, mask = jax.device_put(data["context"]), jax.device_put(data["context_mask"])
    programs, outputs = {}, {}
    original = layers.GatedAttention
    try:
        for name, attention in attention_variants().items():
            layers.GatedAttention = attention  # EncoderLayer looks the class up when it is traced
            model = enc.Encoder(config)
            forward = jax.jit(lambda p, c, m, model=model: model.apply({"params": p}, c, m, 16, True),
                              compiler_options=enc.CPU_INFERENCE_COMPILER_OPTIONS)
            programs[name] = forward.lower(params, context, mask).compile()
            outputs[name] = np.asarray(programs[name](params, context, mask))
    finally:
        layers.GatedAttention = original
    times = interleaved({name: (lambda p=program: jax.block_until_ready(p(params, context, mask)))
                         for name, program in programs.items()}, rounds)
    current = statistics.median(times["current"])
    for name in programs:
        difference = float(np.abs(outputs[name] - outputs["current"]).max())
        median = statistics.median(times[name])
        print(f"{name:<11} max |diff| {difference:.2e}  median {median:.3f} s  x{current / median:.3f} of current  "
              f"rounds {[round(t, 3) for t in times[name]]}")


def lead_batch(setting: str, rounds: int) -> None:
    from benchmarks.forecast_speed import make_series, parse_setting
    from factost_jax import Forecaster

    task = parse_setting(setting)
    forecaster = Forecaster.load("factost-tiny")
    series = make_series(1024, task.context)
    sizes = (64, 128, 256, 512, 1024)
    for size in sizes:  # compile every batch size's programs first
        forecaster.forecast(series[:size], task.horizon, batch_size=size, progress=False)
    times = interleaved({str(size): (lambda s=size: forecaster.forecast(series, task.horizon, batch_size=s,
                                                                        progress=False)) for size in sizes}, rounds)
    default = statistics.median(times["256"])
    for size in sizes:
        median = statistics.median(times[str(size)])
        print(f"batch {size:>5}: {len(series) / median:8.1f} series/s  x{default / median:.3f} of batch 256  "
              f"rounds {[round(t, 2) for t in times[str(size)]]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lead", required=True, choices=("attention", "batch"))
    parser.add_argument("--batch", type=int, default=64, help="attention: windows per forward")
    parser.add_argument("--setting", default="512x96", help="batch: CONTEXTxHORIZON")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    if args.lead == "attention":
        lead_attention(args.batch, args.rounds)
    else:
        lead_batch(args.setting, args.rounds)
    print(f"1-minute load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
