"""Simple reference forecasters for `evaluate`: each maps a `WindowBatch` to a `[B, H, N]` forecast.

* `last_value`: the last observed value of each node's input window, held flat over the horizon.
* `seasonal_naive_day` / `seasonal_naive_week`: `y[t+h] = x[t + (h mod P) - P]` with P one day /
  one week of steps, i.e. the last full period before `t` repeated; they look back P steps, further
  than the input window when P > L (their name says so).
* `historical_average`: per node and (day_of_week, time_of_day) slot, the mean over the TRAIN split
  only; slots never seen in train fall back to the node's train mean (then to the train mean over
  all nodes, for a node never observed in train).
* `context_mean`: the mean of the observed values of each node's input window, held flat (the
  reference of `benchmarks/sanity.py`; not in the "naive" group, whose four are docs/baselines.md's
  tables).

Missing values: a look-back baseline never forecasts NaN where an earlier observation exists. Where
the value it would copy is missing it carries back to the most recent observation before that step
(for `last_value`: the last observed value in the input window, and only when the node's whole input
window is unobserved, the most recent observation before the window). Only steps `< target_start`
are ever read, so no baseline sees the values it forecasts.

All five are affine-equivariant, so they work on whatever scale the evaluator hands them.

`BASELINES` also registers `autoets` and `autotheta` (statsforecast models fitted on each window,
`factost_jax/eval/statistical.py`), which need the optional `baselines` extra.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from factost_jax.data.types import STDataset
from factost_jax.data.windows import WindowBatch

PredictFn = Callable[[WindowBatch], np.ndarray]


def forward_fill(series: np.ndarray) -> np.ndarray:
    """`[T, N]` -> `[T, N]`: each NaN replaced by the most recent earlier non-NaN of its column.

    Leading NaNs (nothing observed yet) stay NaN.
    """
    series = np.asarray(series)
    steps = np.arange(series.shape[0])[:, None]
    last_observed = np.where(np.isnan(series), -1, steps)
    np.maximum.accumulate(last_observed, axis=0, out=last_observed)
    filled = series[np.maximum(last_observed, 0), np.arange(series.shape[1])[None, :]]
    return np.where(last_observed >= 0, filled, np.nan).astype(series.dtype, copy=False)


class _ForwardFilled:
    """Caches the forward-filled copy of the `values_full` array the evaluator keeps passing."""

    def __init__(self):
        self._source = None
        self._filled = None

    def __call__(self, values_full: np.ndarray) -> np.ndarray:
        if self._source is not values_full:
            self._filled = forward_fill(values_full)
            self._source = values_full
        return self._filled


def last_value(dataset: STDataset) -> PredictFn:
    """Forecast the last observed input value of each node for every horizon step."""
    filled_history = _ForwardFilled()

    def predict(batch: WindowBatch) -> np.ndarray:
        context = np.asarray(batch.context)
        observed = ~np.isnan(context)
        steps = np.arange(context.shape[1])[None, :, None]
        last_index = np.where(observed, steps, -1).max(axis=1)  # [B, N]
        last = np.take_along_axis(context, np.maximum(last_index, 0)[:, None, :], axis=1)[:, 0, :]
        # A node whose whole input window is unobserved falls back to its last observation before
        # the window; without it the forecast would be undefined.
        before_window = batch.target_start - batch.input_len - 1
        history = filled_history(batch.values_full)
        fallback = np.where(before_window[:, None] >= 0, history[np.maximum(before_window, 0)], np.nan)
        last = np.where(last_index >= 0, last, fallback)
        return np.repeat(last[:, None, :], batch.horizon, axis=1).astype(np.float32)

    return predict


def context_mean(dataset: STDataset) -> PredictFn:
    """Forecast the mean of the observed input values of each node for every horizon step."""
    filled_history = _ForwardFilled()

    def predict(batch: WindowBatch) -> np.ndarray:
        context = np.asarray(batch.context, np.float64)
        observed = ~np.isnan(context)
        count = observed.sum(axis=1)  # [B, N]
        mean = np.where(observed, context, 0.0).sum(axis=1) / np.maximum(count, 1)
        # A node whose whole input window is unobserved falls back to its last observation before
        # the window, as last_value does.
        before_window = batch.target_start - batch.input_len - 1
        history = filled_history(batch.values_full)
        fallback = np.where(before_window[:, None] >= 0, history[np.maximum(before_window, 0)], np.nan)
        mean = np.where(count > 0, mean, fallback)
        return np.repeat(mean[:, None, :], batch.horizon, axis=1).astype(np.float32)

    return predict


def _seasonal_naive(dataset: STDataset, period: int, name: str) -> PredictFn:
    filled_history = _ForwardFilled()

    def predict(batch: WindowBatch) -> np.ndarray:
        starts = np.asarray(batch.target_start, dtype=np.int64)
        if starts.min() < period:
            raise ValueError(
                f"{name} needs {period} steps of history before every target window, but dataset "
                f"{dataset.name} has a window starting at step {starts.min()}")
        offsets = np.arange(batch.horizon) % period - period  # always < 0: only the past is read
        source = starts[:, None] + offsets[None, :]  # [B, H]
        return filled_history(batch.values_full)[source].astype(np.float32)

    return predict


def seasonal_naive_day(dataset: STDataset) -> PredictFn:
    """Repeat the last day before the target start (P = steps_per_day)."""
    return _seasonal_naive(dataset, dataset.steps_per_day, "seasonal_naive_day")


def seasonal_naive_week(dataset: STDataset) -> PredictFn:
    """Repeat the last week before the target start (P = 7 * steps_per_day)."""
    return _seasonal_naive(dataset, 7 * dataset.steps_per_day, "seasonal_naive_week")


def slot_means(values: np.ndarray, day_of_week: np.ndarray, time_of_day: np.ndarray,
               steps_per_day: int) -> np.ndarray:
    """`[7, steps_per_day, N]` mean of `values [T, N]` per calendar slot, NaN-aware.

    Unseen slots get the node's mean over `values`, then the mean over all nodes, then 0.
    """
    values = np.asarray(values, dtype=np.float64)
    observed = ~np.isnan(values)
    slot = np.asarray(day_of_week, dtype=np.int64) * steps_per_day + np.asarray(time_of_day, dtype=np.int64)
    num_slots = 7 * steps_per_day
    sums = np.zeros((num_slots, values.shape[1]))
    counts = np.zeros((num_slots, values.shape[1]))
    np.add.at(sums, slot, np.where(observed, values, 0.0))
    np.add.at(counts, slot, observed)
    node_count = counts.sum(axis=0)
    node_mean = np.divide(sums.sum(axis=0), node_count, out=np.zeros(values.shape[1]), where=node_count > 0)
    overall = sums.sum() / counts.sum() if counts.sum() > 0 else 0.0
    node_mean = np.where(node_count > 0, node_mean, overall)
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    means = np.where(counts > 0, means, node_mean[None, :])
    return means.reshape(7, steps_per_day, values.shape[1])


def historical_average(dataset: STDataset) -> PredictFn:
    """Per node and (day_of_week, time_of_day) slot mean of the train split."""
    train_start, train_end = dataset.split_range("train")
    train_day_of_week = dataset.day_of_week[train_start:train_end]
    train_time_of_day = dataset.time_of_day[train_start:train_end]
    cache: dict[str, object] = {"source": None, "table": None}

    def predict(batch: WindowBatch) -> np.ndarray:
        # The table is built from the evaluator's series so it is on the evaluator's scale.
        if cache["source"] is not batch.values_full:
            cache["table"] = slot_means(batch.values_full[train_start:train_end], train_day_of_week,
                                        train_time_of_day, dataset.steps_per_day)
            cache["source"] = batch.values_full
        table = cache["table"]
        return table[batch.future_day_of_week, batch.future_time_of_day].astype(np.float32)

    return predict


def autoets(dataset: STDataset) -> PredictFn:
    """statsforecast AutoETS fitted on each window's input (eval/statistical.py; optional extra)."""
    from factost_jax.eval.statistical import statistical_baseline  # statsforecast loads only when asked for

    return statistical_baseline("autoets", dataset)


def autotheta(dataset: STDataset) -> PredictFn:
    """statsforecast AutoTheta fitted on each window's input (eval/statistical.py; optional extra)."""
    from factost_jax.eval.statistical import statistical_baseline

    return statistical_baseline("autotheta", dataset)


NAIVE_BASELINES: dict[str, Callable[[STDataset], PredictFn]] = {
    "last_value": last_value,
    "seasonal_naive_day": seasonal_naive_day,
    "seasonal_naive_week": seasonal_naive_week,
    "historical_average": historical_average,
}
# Fitted per window and node: minutes where the naive ones take seconds (evaluate's window_stride helps).
STATISTICAL_BASELINES: dict[str, Callable[[STDataset], PredictFn]] = {"autoets": autoets, "autotheta": autotheta}
# The capability benchmark's reference for intermittent and level series (benchmarks/sanity.py).
CONTEXT_BASELINES: dict[str, Callable[[STDataset], PredictFn]] = {"context_mean": context_mean}
BASELINES: dict[str, Callable[[STDataset], PredictFn]] = {**NAIVE_BASELINES, **CONTEXT_BASELINES,
                                                          **STATISTICAL_BASELINES}
BASELINE_GROUPS = {"naive": tuple(NAIVE_BASELINES), "statistical": tuple(STATISTICAL_BASELINES),
                   "all": tuple(BASELINES)}


def baseline_names(spec: str) -> list[str]:
    """Baseline names of a comma list of names and group names ("naive", "statistical", "all"), in order."""
    names: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item not in BASELINES and item not in BASELINE_GROUPS:
            raise ValueError(f"unknown baseline {item!r}: expected a comma list of {sorted(BASELINES)} "
                             f"or the groups {sorted(BASELINE_GROUPS)}")
        names += [name for name in BASELINE_GROUPS.get(item, (item,)) if name not in names]
    if not names:
        raise ValueError(f"no baseline named in {spec!r}: expected names from {sorted(BASELINES)} "
                         f"or the groups {sorted(BASELINE_GROUPS)}")
    return names


def make_baseline(name: str, dataset: STDataset) -> PredictFn:
    """The predict function of baseline `name` for `dataset`."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}: expected one of {sorted(BASELINES)}")
    return BASELINES[name](dataset)
