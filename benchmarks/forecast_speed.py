"""Zero-shot throughput: `Forecaster.forecast` end to end against statsforecast and the PyTorch reference.

  python benchmarks/forecast_speed.py [--quick] --output benchmarks/results [--sizes 1000,10000,100000]
                                      [--settings 512x96,12x12] [--methods factost,torch,autoets,autotheta]

The question a practitioner asks: how many series per second does the foundation model forecast,
compared with the statistical tools they use today? For each setting (context length x horizon) and
number of series N, one fresh process per method (so each one's peak memory is its own) forecasts
the same synthetic series, numpy in, quantiles (0.1, 0.5, 0.9) out:

- factost: `Forecaster.load(--checkpoint).forecast(series, horizon, (0.1, 0.5, 0.9))`. The first call
  compiles its programs ("with compilation"); a second call over the first `--warm-series` of them
  compiles nothing ("without compilation").
- torch: benchmarks/reference_torch.py (eager, `no_grad`) with the same checkpoint's weights, in
  batches of `--batch-size`, the trained quantiles sorted and the three levels picked. Timed like
  factost (first call, then a second one).
- autoets / autotheta: statsforecast's `StatsForecast(models=[AutoETS(season_length=S)], freq=1,
  n_jobs=-1).forecast(df, h, level=[80])` (the 80 % interval = the 0.1 / 0.9 quantiles, the mean as
  the median), on a long DataFrame built from the same numpy array. These fit one model per series,
  about a CPU-second each at context 512, so only a prefix of the N series is fitted: a pilot of
  2 x cores series, then chunks sized by the last chunk's rate until `--stat-seconds` are spent.
  series/s is the largest chunk's, flagged `extrapolated` when fewer than N were fitted.
  They compile nothing: "with" and "without compilation" are the same number.

Season length S: 24 at 512 x 96 (the series have a daily season of 24 steps, and 24 is the longest
season statsforecast's ETS keeps), 1 at 12 x 12 (two seasons do not fit in 12 steps; the evaluation
harness does the same, factost_jax/eval/statistical.py).

Memory: each method's process resets its peak RSS after imports and after the series are made, so
`peak_rss_mb` is the growth caused by loading the model and forecasting (Linux VmHWM). statsforecast's
worker processes are children: their largest peak RSS is `children_peak_rss_mb`.

Writes OUTPUT/forecast_speed.json {"meta", "rows", "target"} and OUTPUT/forecast_speed.md (the table);
benchmarks/perf_report.py puts the table into docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import common  # noqa: E402

LEVELS = (0.1, 0.5, 0.9)
METHODS = ("factost", "torch", "autoets", "autotheta")
STATISTICAL = {"autoets": "AutoETS", "autotheta": "AutoTheta"}
FULL_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
DAY = 24  # the synthetic series' season, in steps (hourly data with a daily cycle)
# The issue-17 target: FactoST series/s, compilation included, over AutoETS's at 512 x 96 for 10k series.
TARGET = {"setting": "512x96", "num_series": 10_000, "min_ratio_vs_autoets": 10.0}


@dataclasses.dataclass(frozen=True)
class Setting:
    """A forecasting task: `context` steps in, `horizon` steps out; `season` for the statistical models."""

    context: int
    horizon: int
    season: int

    @property
    def name(self) -> str:
        return f"{self.context}x{self.horizon}"


def parse_setting(text: str) -> Setting:
    """"512x96" -> Setting(512, 96, season 24 when two days fit in the context, else 1)."""
    try:
        context, horizon = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"a setting is CONTEXTxHORIZON like 512x96, got {text!r}") from None
    if context < 1 or horizon < 1:
        raise ValueError(f"context and horizon must be positive, got {text!r}")
    return Setting(context, horizon, DAY if context >= 2 * DAY else 1)


def make_series(num_series: int, length: int, seed: int = 0) -> np.ndarray:
    """[N, length] float64 hourly-like series: positive level, trend, daily season, AR(1) noise.

    Row i depends only on (seed, i // 1024) and its place in that block, so the first rows of a larger
    N are the rows of a smaller one (the statistical models fit a prefix of the same series).
    """
    blocks = []
    for block in range(math.ceil(num_series / 1024)):
        rows = min(1024, num_series - block * 1024)
        rng = np.random.default_rng([seed, block])
        level = rng.uniform(20.0, 200.0, (1024, 1))[:rows]
        slope = rng.normal(0.0, 0.02, (1024, 1))[:rows] * level / 100.0
        amplitude = rng.uniform(0.05, 0.3, (1024, 1))[:rows] * level
        phase = rng.uniform(0.0, 2 * np.pi, (1024, 1))[:rows]
        noise_scale = rng.uniform(0.02, 0.1, (1024, 1))[:rows] * level
        shocks = rng.standard_normal((1024, length))[:rows]
        noise = np.empty_like(shocks)
        noise[:, 0] = shocks[:, 0]
        for t in range(1, length):  # AR(1), phi 0.5: a little persistence, as real sensors have
            noise[:, t] = 0.5 * noise[:, t - 1] + shocks[:, t]
        steps = np.arange(length)
        blocks.append(level + slope * steps + amplitude * np.sin(2 * np.pi * steps / DAY + phase) + noise_scale * noise)
    return np.concatenate(blocks, axis=0)


# ----------------------------------------------------------------------------- the methods

Forecast = Callable[[np.ndarray], np.ndarray]  # [N, L] float64 -> [N, H, len(LEVELS)] float32


def factost_method(checkpoint: str, horizon: int, batch_size: int) -> Forecast:
    from factost_jax import Forecaster

    forecaster = Forecaster.load(checkpoint)

    def forecast(series: np.ndarray) -> np.ndarray:
        return forecaster.forecast(series, horizon, LEVELS, batch_size=batch_size, progress=False).quantiles

    return forecast


def level_indices(trained: tuple[float, ...], wanted: tuple[float, ...] = LEVELS) -> np.ndarray:
    """Positions of `wanted` in the sorted trained levels; ValueError when one was not trained."""
    trained_array = np.asarray(trained, np.float64)
    indices = [int(np.argmin(np.abs(trained_array - level))) for level in wanted]
    if not np.allclose(trained_array[indices], wanted):
        raise ValueError(f"levels {wanted} are not all among the trained levels {trained}")
    return np.asarray(indices)


def torch_method(checkpoint: str, horizon: int, batch_size: int) -> Forecast:
    """The PyTorch reference with the checkpoint's weights (copied from the JAX tree); eager, no_grad."""
    import torch

    from benchmarks import reference_torch as ref
    from factost_jax import Forecaster

    loaded = Forecaster.load(checkpoint)
    config = loaded.config
    model = ref.load_jax_params(ref.TorchEncoder(config), loaded.params).eval()
    del loaded
    num_patches = math.ceil(horizon / config.patch_size)
    if num_patches > config.max_output_patches:
        raise ValueError(f"horizon {horizon} needs a rollout; the torch reference does one pass only")
    keep = level_indices(config.quantile_levels)

    def forecast(series: np.ndarray) -> np.ndarray:
        outputs = []
        with torch.no_grad():
            for start in range(0, series.shape[0], batch_size):
                chunk = torch.from_numpy(series[start:start + batch_size].astype(np.float32))
                raw = model(chunk, None, num_patches)[:, :horizon].numpy()
                outputs.append(np.sort(raw, axis=-1)[..., keep])
        return np.concatenate(outputs, axis=0)

    return forecast


def statistical_method(name: str, horizon: int, season: int, n_jobs: int = -1) -> Forecast:
    """statsforecast's own route: long DataFrame in, the mean and the 80 % interval out."""
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS, AutoTheta

    label = STATISTICAL[name]

    def forecast(series: np.ndarray) -> np.ndarray:
        rows, length = series.shape
        frame = pd.DataFrame({"unique_id": np.repeat(np.arange(rows), length),
                              "ds": np.tile(np.arange(length), rows), "y": series.reshape(-1)})
        model = AutoETS(season_length=season) if name == "autoets" else AutoTheta(season_length=season)
        out = StatsForecast(models=[model], freq=1, n_jobs=n_jobs).forecast(df=frame, h=horizon, level=[80])
        out = out.sort_values(["unique_id", "ds"])
        columns = [f"{label}-lo-80", label, f"{label}-hi-80"]
        return out[columns].to_numpy(np.float32).reshape(rows, horizon, len(LEVELS))

    return forecast


# ----------------------------------------------------------------------------- one worker


def _peak_rss_mb(baseline_kb: int) -> float | None:
    peak_kb = common.read_memory_kb().get("VmHWM")
    return None if peak_kb is None else round((peak_kb - baseline_kb) / 1024.0, 1)


def _children_peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, 1)


def _timed(forecast: Forecast, series: np.ndarray) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = forecast(series)
    return time.perf_counter() - start, out


def measure_model(spec: dict[str, Any], series: np.ndarray) -> dict[str, Any]:
    """factost / torch: build, a first call over all N series, a second over the first warm_series."""
    build = factost_method if spec["method"] == "factost" else torch_method
    start = time.perf_counter()
    forecast = build(spec["checkpoint"], spec["horizon"], spec["batch_size"])
    load_s = time.perf_counter() - start
    cold_s, out = _timed(forecast, series)
    warm_rows = min(spec.get("warm_series") or len(series), len(series))
    warm_s, _ = _timed(forecast, series[:warm_rows])
    return {"load_s": round(load_s, 3), "cold_s": round(cold_s, 3), "warm_s": round(warm_s, 3),
            "warm_series": warm_rows, "series_per_s_cold": len(series) / cold_s,
            "series_per_s_warm": warm_rows / warm_s, "fitted_series": len(series), "extrapolated": False,
            "finite": bool(np.isfinite(out).all()), "output_shape": list(out.shape)}


def measure_statistical(spec: dict[str, Any], series: np.ndarray) -> dict[str, Any]:
    """autoets / autotheta: a pilot of 2 x cores series, then chunks sized by the last chunk's rate to fill
    --stat-seconds. The rate is the largest chunk's: its process-pool start weighs least."""
    forecast = statistical_method(spec["method"], spec["horizon"], spec["season"])
    size = min(len(series), 2 * (os.cpu_count() or 1))
    chunks, fitted, finite = [], 0, True
    while size > 0:
        seconds, out = _timed(forecast, series[fitted:fitted + size])
        chunks.append({"series": size, "seconds": round(seconds, 3)})
        fitted, finite = fitted + size, finite and bool(np.isfinite(out).all())
        left = spec["stat_seconds"] - sum(chunk["seconds"] for chunk in chunks)
        next_size = min(len(series) - fitted, int(left * size / seconds))
        # A chunk under half the largest would give a noisier rate and spend its pool start on few series.
        largest = max(chunk["series"] for chunk in chunks)
        size = next_size if next_size >= max(chunks[0]["series"], largest // 2) else 0
    largest = max(chunks, key=lambda chunk: chunk["series"])
    rate = largest["series"] / largest["seconds"]
    return {"cold_s": round(sum(chunk["seconds"] for chunk in chunks), 3), "series_per_s_cold": rate,
            "series_per_s_warm": rate, "fitted_series": fitted, "extrapolated": fitted < len(series),
            "chunks": chunks, "finite": finite, "n_jobs": os.cpu_count()}


def run_worker_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """One method on one (setting, N) in this process; memory baselines taken after imports and data."""
    if spec["method"] in ("factost", "torch"):
        import jax  # noqa: F401  (imports before the memory baseline: they are not the method's memory)

        import factost_jax.forecast  # noqa: F401
        if spec["method"] == "torch":
            import torch  # noqa: F401

            import benchmarks.reference_torch  # noqa: F401
    else:
        import pandas  # noqa: F401
        import statsforecast  # noqa: F401
    series = make_series(spec["num_series"], spec["context"], spec.get("seed", 0))
    reset = common.reset_peak_rss()
    baseline_kb = common.read_memory_kb().get("VmRSS", 0)
    load = os.getloadavg()[0]
    measure = measure_statistical if spec["method"] in STATISTICAL else measure_model
    result = measure(spec, series)
    result["peak_rss_mb"] = _peak_rss_mb(baseline_kb) if reset else None
    result["children_peak_rss_mb"] = _children_peak_rss_mb()
    result["load_avg_1m"] = {"start": round(load, 2), "end": round(os.getloadavg()[0], 2)}
    return result


# ----------------------------------------------------------------------------- the orchestrator


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """This script in `--worker` mode in a fresh process, with the speed benchmark's inference settings."""
    from benchmarks.run import BEST_SETTINGS

    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    return common.run_result_worker(command, common.worker_env(BEST_SETTINGS["infer"]), timeout, REPO_ROOT)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's series/s (with compilation) over AutoETS's and AutoTheta's on the same (setting, N)."""
    for row in rows:
        for name in STATISTICAL:
            other = next((r for r in rows if r["method"] == name and r["setting"] == row["setting"]
                          and r["num_series"] == row["num_series"] and r.get("series_per_s_cold")), None)
            ours = row.get("series_per_s_cold")
            row[f"vs_{name}"] = ours / other["series_per_s_cold"] if ours and other else None


def target_status(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue-17 target: factost (compilation included) >= 10x AutoETS series/s at 512x96, 10k series."""
    row = next((r for r in rows if r["method"] == "factost" and r["setting"] == TARGET["setting"]
                and r["num_series"] == TARGET["num_series"]), None)
    ratio = None if row is None else row.get("vs_autoets")
    return dict(TARGET, ratio=ratio, met=None if ratio is None else ratio >= TARGET["min_ratio_vs_autoets"])


def _fmt(value: Any, spec: str = ",.1f") -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """One line per (setting, N, method): series/s with and without compilation, ratios, memory."""
    lines = ["| context x horizon | series | method | series/s, compilation included | series/s, compiled | "
             "× AutoETS | × AutoTheta | peak RSS MB (children) | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['setting']} | {row['num_series']:,} | {row['method']} | error: "
                         f"{row['error'][:120]} | | | | | |")
            continue
        notes = []
        if row.get("extrapolated"):
            notes.append(f"fitted {row['fitted_series']:,} series, rate extrapolated")
        if row["method"] in ("factost", "torch") and row.get("warm_series", row["num_series"]) < row["num_series"]:
            notes.append(f"compiled rate from {row['warm_series']:,} series")
        if row["method"] == "factost":
            notes.append(f"checkpoint read {row['load_s']:.1f} s")
        memory = _fmt(row.get("peak_rss_mb"), ",.0f")
        if row["method"] in STATISTICAL:
            memory += f" ({_fmt(row.get('children_peak_rss_mb'), ',.0f')})"
        warm = "= with" if row["method"] in STATISTICAL else _fmt(row.get("series_per_s_warm"))
        lines.append(
            f"| {row['setting']} | {row['num_series']:,} | {row['method']} | {_fmt(row.get('series_per_s_cold'))} | "
            f"{warm} | {_fmt(row.get('vs_autoets'), '.1f')} | {_fmt(row.get('vs_autotheta'), '.1f')} | {memory} | "
            f"{'; '.join(notes)} |")
    return lines


def render(result: dict[str, Any]) -> str:
    """Markdown: command, machine load, the table and the target's status."""
    meta, target = result["meta"], result["target"]
    loads = [value for row in result["rows"] for value in (row.get("load_avg_1m") or {}).values()]
    verdict = ("not measured" if target["met"] is None else
               f"**{'met' if target['met'] else 'not met'}**: {target['ratio']:.1f}x")
    out = [f"Command: `{meta['command']}` ({meta['started']}, {meta['wall_s']:.0f} s; checkpoint "
           f"`{meta['checkpoint']}`, batch size {meta['batch_size']}; {meta['machine']['cpu_count']} CPUs, "
           f"1-minute load average {_fmt(min(loads, default=None), '.1f')} to {_fmt(max(loads, default=None), '.1f')} "
           "in the workers).", "",
           *markdown_table(result["rows"]), "",
           f"Target: FactoST series/s with compilation >= {TARGET['min_ratio_vs_autoets']:.0f}x AutoETS at "
           f"{TARGET['setting']} for {TARGET['num_series']:,} series: {verdict}."]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="directory for forecast_speed.json / .md")
    parser.add_argument("--quick", action="store_true",
                        help=f"sizes {QUICK_SIZES}, compiled rate from 1,000 series, --stat-seconds 15")
    parser.add_argument("--sizes", default=None, help=f"comma list of N (default {FULL_SIZES}; --quick {QUICK_SIZES})")
    parser.add_argument("--settings", default="512x96,12x12", help="comma list of CONTEXTxHORIZON")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list from {METHODS}")
    parser.add_argument("--checkpoint", default="factost-tiny")
    parser.add_argument("--batch-size", type=int, default=256, help="series per model call (Forecaster's default)")
    parser.add_argument("--warm-series", type=int, default=None,
                        help="series of the second (compiled) call of factost / torch (default: all N; --quick 1000)")
    parser.add_argument("--stat-seconds", type=float, default=None,
                        help="seconds of fitting per statistical model and (setting, N) after the pilot "
                             "(default 120; --quick 15)")
    parser.add_argument("--worker-timeout", type=float, default=3600.0)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return args
    if args.output is None:
        parser.error("--output is required")
    try:
        args.settings = [parse_setting(text) for text in args.settings.split(",") if text.strip()]
        sizes = args.sizes or ",".join(str(n) for n in (QUICK_SIZES if args.quick else FULL_SIZES))
        args.sizes = [int(text) for text in sizes.split(",") if text.strip()]
    except ValueError as error:
        parser.error(str(error))
    args.methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    bad = [name for name in args.methods if name not in METHODS]
    if bad or not args.methods or not args.settings or not args.sizes or min(args.sizes) < 1:
        parser.error(f"--methods from {METHODS}, positive --sizes and at least one setting (bad: {bad})")
    if args.warm_series is None and args.quick:
        args.warm_series = 1000
    args.stat_seconds = (15.0 if args.quick else 120.0) if args.stat_seconds is None else args.stat_seconds
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker)
        try:
            result = run_worker_spec(spec)
        except Exception as error:  # reported in the JSON row, never a crash of the whole run
            result = {"error": f"{type(error).__name__}: {error}".splitlines()[0][:500]}
        print(common.RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    from benchmarks.run import machine_info

    args.output.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/forecast_speed.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    started = time.time()
    meta = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
            "machine": machine_info(), "checkpoint": args.checkpoint, "batch_size": args.batch_size,
            "warm_series": args.warm_series, "stat_seconds": args.stat_seconds, "levels": LEVELS}
    rows: list[dict[str, Any]] = []
    for setting in args.settings:
        for num_series in args.sizes:
            for method in args.methods:
                spec = {"method": method, "context": setting.context, "horizon": setting.horizon,
                        "season": setting.season, "num_series": num_series, "checkpoint": args.checkpoint,
                        "batch_size": args.batch_size, "warm_series": args.warm_series,
                        "stat_seconds": args.stat_seconds, "seed": 0}
                result = run_worker(spec, args.worker_timeout)
                row = {"setting": setting.name, "context": setting.context, "horizon": setting.horizon,
                       "season": setting.season, "num_series": num_series, "method": method, **result}
                rows.append(row)
                print(f"{setting.name:>7} {num_series:>7} {method:<10} "
                      f"{_fmt(row.get('series_per_s_cold'))} series/s with compilation, "
                      f"{_fmt(row.get('series_per_s_warm'))} compiled, peak RSS {_fmt(row.get('peak_rss_mb'))} MB "
                      f"{row.get('error', '')}", flush=True)
    add_ratios(rows)
    meta["wall_s"] = round(time.time() - started, 1)
    result = {"meta": meta, "rows": rows, "target": target_status(rows)}
    (args.output / "forecast_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    generated = render(result)
    (args.output / "forecast_speed.md").write_text(generated)
    print("\n" + generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
