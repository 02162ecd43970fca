"""Per-horizon evaluation of a forecaster over a whole split, BasicTS conventions.

`evaluate` streams every stride-1 window of a split in batches, hands each batch to a forecaster as a
`WindowBatch` on the metric scale (original units when `dataset.rescale`, else z-scored with the
train-only `dataset.normalizer()`), and accumulates `HorizonMetrics`. Which targets count is decided
in original units with `dataset.null_val`, so a z-scored zero is never mistaken for a missing value.

`run_evaluation` is what `launch/evaluate.py` calls: load a dataset by name, build a baseline, evaluate.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import tqdm

from factost_jax import metrics as metrics_lib
from factost_jax.data.types import STDataset
from factost_jax.data.windows import WindowBatch, gather_calendar, split_target_starts, window_indices
from factost_jax.eval import baselines

__all__ = ["WindowBatch", "evaluate", "format_table", "json_safe", "metric_scale_series", "run_evaluation"]

ForecastOutput = np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]
REPORT_STEPS = (3, 6, 12)


def metric_scale_series(dataset: STDataset, channel: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(`[T, N]` float32 series of `channel` on the metric scale, `[T, N]` bool observed mask).

    The observed mask follows BasicTS on the original units: not NaN and not `dataset.null_val`.
    """
    if isinstance(channel, bool) or int(channel) != channel or not 0 <= channel < dataset.num_channels:
        raise ValueError(f"dataset {dataset.name}: channel must be in 0..{dataset.num_channels - 1}, got {channel!r}")
    original = dataset.values[:, :, channel]
    observed = metrics_lib.observed_mask_np(original, dataset.null_val)
    if dataset.rescale:
        series = original.astype(np.float32, copy=True)
    else:
        normalizer = dataset.normalizer()
        series = ((original - normalizer.mean[..., channel]) / normalizer.std[..., channel]).astype(np.float32)
    series.flags.writeable = False  # forecasters share it; none may write into the targets
    return series, observed


def _unpack_forecast(output: Any, expected_shape: tuple[int, int, int]
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Splits a forecaster's output into (point, quantiles or None, levels or None), checked."""
    if isinstance(output, tuple):
        if len(output) != 3:
            raise ValueError("a forecaster must return point [B, H, N] or (point, quantiles [B, H, N, Q], "
                             f"levels [Q]); got a tuple of {len(output)}")
        point, quantiles, levels = (np.asarray(x) for x in output)
        if levels.ndim != 1 or quantiles.shape != expected_shape + levels.shape:
            raise ValueError(f"forecast quantiles must be [B, H, N, Q] = {expected_shape + levels.shape}, "
                             f"got {quantiles.shape} with levels {levels.shape}")
    else:
        point, quantiles, levels = np.asarray(output), None, None
    if point.shape != expected_shape:
        raise ValueError(f"forecast must be [B, H, N] = {expected_shape}, got {point.shape}")
    return point, quantiles, levels


def evaluate(dataset: STDataset, predict_fn: Callable[[WindowBatch], ForecastOutput], input_len: int,
             horizon: int, split: str = "test", batch_size: int = 256, channel: int = 0,
             progress: bool = True, steps: Sequence[int] = REPORT_STEPS) -> dict[str, Any]:
    """Evaluates `predict_fn` on every window of `split`.

    Args:
      dataset: the dataset; targets are channel `channel` of its values.
      predict_fn: `WindowBatch -> point [B, H, N]` or `(point, quantiles [B, H, N, Q], levels [Q])`,
        on the metric scale.
      input_len, horizon: L context steps and H forecast steps per window.
      split: "train", "val" or "test".
      batch_size: windows per call of `predict_fn`.
      progress: show a tqdm bar (on stderr).
      steps: horizon steps reported besides the average.
    Returns:
      {"dataset", "input_len", "horizon", "split", "channel", "num_windows",
       "metrics": {"avg": {"MAE", "RMSE", "MAPE"[, "QL", "coverage_80"]}, "step_3": {...}, ...}}.
    """
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    starts = split_target_starts(dataset, split, input_len, horizon)
    series, observed = metric_scale_series(dataset, channel)
    time_of_day, day_of_week = dataset.time_of_day, dataset.day_of_week
    # The null mask was applied in original units above; on the z-scored scale there is no null value.
    null_val = dataset.null_val if dataset.rescale else float("nan")

    def forecast(offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        batch_starts = starts[offset:offset + batch_size]
        context_index, future_index = window_indices(batch_starts, input_len, horizon)
        batch = WindowBatch(context=series[context_index], target_start=batch_starts, values_full=series,
                            **gather_calendar(dataset, batch_starts, input_len, horizon, time_of_day, day_of_week))
        expected_shape = (batch_starts.size, horizon, dataset.num_nodes)
        return (future_index, *_unpack_forecast(predict_fn(batch), expected_shape))

    # The first batch runs before the progress bar exists, so a forecaster that rejects the windows
    # (e.g. too little history; starts are sorted, so the first batch has the earliest) fails cleanly.
    future_index, point, quantiles, levels = forecast(0)
    accumulator = metrics_lib.HorizonMetrics(horizon, null_val, levels)
    accumulator.update(point, series[future_index], mask=observed[future_index], quantiles=quantiles)
    offsets = range(batch_size, starts.size, batch_size)
    with tqdm.tqdm(total=len(offsets) + 1, initial=1, desc=f"evaluate {dataset.name} {split}", unit="batch",
                   disable=not progress) as bar:
        for offset in offsets:
            future_index, point, quantiles, next_levels = forecast(offset)
            if (next_levels is None) != (levels is None) or (
                    levels is not None and not np.array_equal(next_levels, levels)):
                raise ValueError("predict_fn must return the same kind of forecast (and quantile levels) for every batch")
            accumulator.update(point, series[future_index], mask=observed[future_index], quantiles=quantiles)
            bar.update(1)

    return {
        "dataset": dataset.name,
        "input_len": int(input_len),
        "horizon": int(horizon),
        "split": split,
        "channel": int(channel),
        "num_windows": int(starts.size),
        "metrics": accumulator.result(steps),
    }


def run_evaluation(dataset_name: str, model_name: str | None, input_len: int, horizon: int, split: str = "test",
                   data_dir: str | None = None, batch_size: int = 256, channel: int = 0,
                   checkpoint: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Loads `dataset_name`, builds baseline `model_name` and evaluates it.

    Returns `evaluate`'s dict with "model" added after "dataset". Raises ValueError /
    FileNotFoundError for user errors (unknown dataset or model, impossible lengths, missing files).
    """
    if checkpoint is not None:
        raise ValueError(f"checkpoint evaluation ({checkpoint}) needs the stage-1 model, which is not wired "
                         f"into evaluation yet; use --model with one of {sorted(baselines.BASELINES)}")
    if model_name not in baselines.BASELINES:
        raise ValueError(f"unknown model {model_name!r}: expected one of {sorted(baselines.BASELINES)}")
    from factost_jax.data.formats import load_dataset  # imported here: only the CLI path needs the readers

    dataset = load_dataset(dataset_name, data_dir)
    predict_fn = baselines.make_baseline(model_name, dataset)
    result = evaluate(dataset, predict_fn, input_len, horizon, split=split, batch_size=batch_size,
                      channel=channel, progress=progress)
    return {"dataset": result.pop("dataset"), "model": model_name, **result}


def format_table(result: dict[str, Any]) -> str:
    """The per-horizon table of an evaluation result: rows avg, step_k; columns MAE, RMSE, MAPE (+ QL, coverage)."""
    rows = result["metrics"]
    columns = list(next(iter(rows.values())))
    title = " | ".join(str(part) for part in (result.get("dataset"), result.get("model"), result.get("split"),
                                               f"{result.get('input_len')}->{result.get('horizon')}") if part)
    lines = [title, f"{'':<8}" + "".join(f"{name:>12}" for name in columns)]
    for row_name, row in rows.items():
        cells = "".join(f"{_format_number(row[name]):>12}" for name in columns)
        lines.append(f"{row_name:<8}{cells}")
    return "\n".join(lines)


def _format_number(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.4f}"


def json_safe(result: Any) -> Any:
    """`result` with non-finite floats replaced by None, so the JSON is standard (null, not NaN)."""
    if isinstance(result, dict):
        return {key: json_safe(value) for key, value in result.items()}
    if isinstance(result, (list, tuple)):
        return [json_safe(value) for value in result]
    if isinstance(result, float) and not math.isfinite(result):
        return None
    return result
