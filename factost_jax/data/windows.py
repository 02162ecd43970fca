"""Evaluation windows over a split (numpy only).

A window is identified by its target start `t`: the input is steps `[t - input_len, t)` and the
target `[t, t + horizon)`. Windows advance with stride 1. For "val" and "test" the whole target must
lie in the split while the input may reach back into the previous split (BasicTS: the first test
window forecasts the first test step). For "train" the input must lie in the train split too, so
nothing outside train is ever seen.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from factost_jax.data.types import STDataset


def _check_lengths(input_len: int, horizon: int) -> tuple[int, int]:
    for name, value in (("input_len", input_len), ("horizon", horizon)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(input_len), int(horizon)


def split_target_starts(dataset: STDataset, split: str, input_len: int, horizon: int) -> np.ndarray:
    """`[W]` int64 target start of every stride-1 window whose whole target lies in `split`.

    Raises ValueError when no window fits, naming the dataset, split and lengths.
    """
    input_len, horizon = _check_lengths(input_len, horizon)
    start, end = dataset.split_range(split)
    # Train windows may not look before the train split (it starts at 0 anyway); val/test inputs
    # may reach back into earlier splits, but never before step 0.
    first = max(start, input_len) if split != "train" else start + input_len
    last = end - horizon  # inclusive: the target [last, end) just fits
    if last < first:
        raise ValueError(
            f"dataset {dataset.name}: no {split} window fits input_len={input_len} + horizon={horizon}: "
            f"the {split} split is steps [{start}, {end}) ({end - start} steps) of T={dataset.num_steps}")
    return np.arange(first, last + 1, dtype=np.int64)


def window_indices(starts: np.ndarray, input_len: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(`[B, input_len]` context step indices, `[B, horizon]` target step indices) of windows."""
    input_len, horizon = _check_lengths(input_len, horizon)
    starts = np.asarray(starts, dtype=np.int64)
    if starts.ndim != 1:
        raise ValueError(f"starts must be a 1-D array of target starts, got shape {starts.shape}")
    context = starts[:, None] + np.arange(-input_len, 0, dtype=np.int64)
    future = starts[:, None] + np.arange(horizon, dtype=np.int64)
    return context, future


def _check_in_range(starts: np.ndarray, input_len: int, horizon: int, num_steps: int) -> None:
    if starts.size and (starts.min() - input_len < 0 or starts.max() + horizon > num_steps):
        raise ValueError(f"window starts must satisfy input_len={input_len} <= start <= T - horizon="
                         f"{num_steps - horizon}, got starts in [{starts.min()}, {starts.max()}]")


def gather_windows(values: np.ndarray, starts: np.ndarray, input_len: int, horizon: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets of windows.

    Args:
      values: `[T, ...]` series (typically `[T, N, C]`).
      starts: `[B]` target starts.
    Returns:
      (x `[B, input_len, ...]`, y `[B, horizon, ...]`), fresh copies.
    """
    values = np.asarray(values)
    context, future = window_indices(starts, input_len, horizon)
    _check_in_range(np.asarray(starts), input_len, horizon, values.shape[0])
    return values[context], values[future]


def gather_calendar(dataset: STDataset, starts: np.ndarray, input_len: int, horizon: int,
                    time_of_day: np.ndarray | None = None, day_of_week: np.ndarray | None = None
                    ) -> dict[str, np.ndarray]:
    """Calendar features of windows.

    Args:
      dataset: source of the `[T]` calendar when `time_of_day` / `day_of_week` are not given
        (pass them precomputed to avoid rebuilding them for every batch).
      starts: `[B]` target starts.
    Returns:
      {"context_time_of_day", "context_day_of_week": `[B, input_len]` int32,
       "future_time_of_day", "future_day_of_week": `[B, horizon]` int32}.
    """
    time_of_day = dataset.time_of_day if time_of_day is None else np.asarray(time_of_day)
    day_of_week = dataset.day_of_week if day_of_week is None else np.asarray(day_of_week)
    if time_of_day.shape != (dataset.num_steps,) or day_of_week.shape != (dataset.num_steps,):
        raise ValueError(f"dataset {dataset.name}: time_of_day {time_of_day.shape} and day_of_week "
                         f"{day_of_week.shape} must be [T={dataset.num_steps}]")
    context, future = window_indices(starts, input_len, horizon)
    _check_in_range(np.asarray(starts), input_len, horizon, dataset.num_steps)
    return {
        "context_time_of_day": time_of_day[context].astype(np.int32),
        "context_day_of_week": day_of_week[context].astype(np.int32),
        "future_time_of_day": time_of_day[future].astype(np.int32),
        "future_day_of_week": day_of_week[future].astype(np.int32),
    }


@dataclasses.dataclass(frozen=True, eq=False)
class WindowBatch:
    """What a forecaster sees for one batch of evaluation windows (one channel, metric scale).

    Attributes:
      context: `[B, L, N]` float32 inputs, NaN where unobserved.
      target_start: `[B]` int64 step index of each window's first target step.
      values_full: `[T, N]` float32 whole series of the channel on the metric scale, read-only. It
        includes the targets: a forecaster may only read steps `< target_start` (look-back
        baselines use it to reach further back than `L`).
      context_time_of_day, context_day_of_week: `[B, L]` int32 calendar of the inputs.
      future_time_of_day, future_day_of_week: `[B, H]` int32 calendar of the targets.
    """

    context: np.ndarray
    target_start: np.ndarray
    values_full: np.ndarray
    context_time_of_day: np.ndarray
    context_day_of_week: np.ndarray
    future_time_of_day: np.ndarray
    future_day_of_week: np.ndarray

    @property
    def batch_size(self) -> int:
        return self.context.shape[0]

    @property
    def input_len(self) -> int:
        return self.context.shape[1]

    @property
    def horizon(self) -> int:
        return self.future_time_of_day.shape[1]

    @property
    def num_nodes(self) -> int:
        return self.context.shape[2]
