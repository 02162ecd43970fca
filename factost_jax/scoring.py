"""Scores a forecaster on every window of a split, BasicTS conventions: the one evaluation both
stage-2 validation (`train/stage2_task.py`) and `launch/evaluate.py` (`eval/evaluate.py`) run.

`evaluate` streams every stride-1 window of a split in batches, hands each batch to a forecaster as a
`WindowBatch` on the metric scale (original units when `dataset.rescale`, else z-scored with the
train-only `dataset.normalizer()`), and accumulates `HorizonMetrics`. Which targets count is decided
in original units with `dataset.null_val`, so a z-scored zero is never mistaken for a missing value.
It joins `data/` and `metrics.py` and knows nothing above them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import tqdm

from factost_jax import metrics as metrics_lib
from factost_jax.data.types import STDataset
from factost_jax.data.windows import WindowBatch, gather_calendar, split_target_starts, window_indices

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


def forecast_windows(dataset: STDataset, series: np.ndarray, batch_starts: np.ndarray, input_len: int, horizon: int,
                      predict_fn: Callable[[WindowBatch], ForecastOutput], time_of_day: np.ndarray,
                      day_of_week: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(future step index [B, H], point [B, H, N], quantiles [B, H, N, Q] or None, levels or None) of windows."""
    context_index, future_index = window_indices(batch_starts, input_len, horizon)
    batch = WindowBatch(context=series[context_index], target_start=batch_starts, values_full=series,
                        **gather_calendar(dataset, batch_starts, input_len, horizon, time_of_day, day_of_week))
    expected_shape = (batch_starts.size, horizon, dataset.num_nodes)
    return (future_index, *_unpack_forecast(predict_fn(batch), expected_shape))


def evaluate(dataset: STDataset, predict_fn: Callable[[WindowBatch], ForecastOutput], input_len: int,
             horizon: int, split: str = "test", batch_size: int = 256, channel: int = 0,
             progress: bool = True, steps: Sequence[int] = REPORT_STEPS, window_stride: int = 1,
             last_windows: int | None = None) -> dict[str, Any]:
    """Evaluates `predict_fn` on every window of `split` (or every `window_stride`-th, or the last few).

    Args:
      dataset: the dataset; targets are channel `channel` of its values.
      predict_fn: `WindowBatch -> point [B, H, N]` or `(point, quantiles [B, H, N, Q], levels [Q])`,
        on the metric scale.
      input_len, horizon: L context steps and H forecast steps per window.
      split: "train", "val" or "test".
      batch_size: windows per call of `predict_fn`.
      progress: show a tqdm bar (on stderr).
      steps: horizon steps reported besides the average.
      window_stride: keep windows 0, S, 2S, ... of the split's stride-1 windows (the first test step
        is always forecast), for forecasters too slow for every window; 1 = all.
      last_windows: then keep only the last N of those windows (stage-2 early stopping on a
        validation tail); None keeps them all (the BasicTS convention).
    Returns:
      {"dataset", "input_len", "horizon", "split", "channel", "num_windows" (evaluated),
       "window_stride", "split_windows" (the split's stride-1 windows),
       "metrics": {"avg": {"MAE", "RMSE", "MAPE"[, "QL", "coverage_80"]}, "step_3": {...}, ...}}.
    """
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(window_stride, bool) or int(window_stride) != window_stride or window_stride < 1:
        raise ValueError(f"window_stride must be a positive integer, got {window_stride!r}")
    all_starts = split_target_starts(dataset, split, input_len, horizon)
    starts = all_starts[::int(window_stride)]
    if last_windows is not None:
        if isinstance(last_windows, bool) or int(last_windows) != last_windows or last_windows < 1:
            raise ValueError(f"last_windows must be a positive integer or None, got {last_windows!r}")
        starts = starts[-int(last_windows):]
    series, observed = metric_scale_series(dataset, channel)
    time_of_day, day_of_week = dataset.time_of_day, dataset.day_of_week
    # The null mask was applied in original units above; on the z-scored scale there is no null value.
    null_val = dataset.null_val if dataset.rescale else float("nan")

    def forecast(offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        return forecast_windows(dataset, series, starts[offset:offset + batch_size], input_len, horizon,
                                 predict_fn, time_of_day, day_of_week)

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
        "window_stride": int(window_stride),
        "split_windows": int(all_starts.size),
        "metrics": accumulator.result(steps),
    }


def json_safe(result: Any) -> Any:
    """`result` with non-finite floats replaced by None, so the JSON is standard (null, not NaN)."""
    if isinstance(result, dict):
        return {key: json_safe(value) for key, value in result.items()}
    if isinstance(result, (list, tuple)):
        return [json_safe(value) for value in result]
    if isinstance(result, float) and not math.isfinite(result):
        return None
    return result
