"""The time axis of pandas input: timestamp checks, frequency inference, regular grids, calendar slots.

Used by `Forecaster.forecast_df` (long tables) and `Forecaster.forecast_network` (stage 2, whose
adapter reads time-of-day and day-of-week slots computed here as the data layer computes them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def infer_step(timestamps: pd.DatetimeIndex, where: str) -> tuple[Any, pd.Timedelta]:
    """(frequency: a pandas offset or a Timedelta, step as a Timedelta) of strictly increasing stamps."""
    if len(timestamps) < 2:
        raise ValueError(f"{where} has {len(timestamps)} timestamp(s): at least 2 are needed to infer the frequency")
    median_step = pd.Timedelta(int(np.median(np.diff(timestamps.as_unit("ns").asi8))), unit="ns")
    freq = _infer_freq(timestamps) if len(timestamps) >= 3 else None
    if freq is not None:
        offset = pd.tseries.frequencies.to_offset(freq)
        try:
            step = pd.Timedelta(offset)
        except ValueError:  # calendar offsets (month, year, ...) have no fixed length
            step = median_step
        return offset, step
    # Irregular or gappy stamps: the median step is the most common spacing of real series.
    return median_step, median_step


def _infer_freq(timestamps: pd.DatetimeIndex) -> Any:
    """pd.infer_freq as an offset or string (None when irregular), without pandas' deprecation noise."""
    try:
        with pd.option_context("future.infer_freq_returns_offset", True):
            return pd.infer_freq(timestamps)
    except pd.errors.OptionError:  # older pandas: the option does not exist and strings are returned
        pass
    except (TypeError, ValueError):
        return None
    try:
        return pd.infer_freq(timestamps)
    except (TypeError, ValueError):
        return None


def future_timestamps(last: pd.Timestamp, freq: Any, horizon: int) -> pd.DatetimeIndex:
    if isinstance(freq, pd.Timedelta):
        return pd.DatetimeIndex([last + freq * k for k in range(1, horizon + 1)])
    return pd.date_range(start=last, periods=horizon + 1, freq=freq)[1:]


def check_timestamps(raw: Any, where: str) -> pd.DatetimeIndex:
    try:
        stamps = pd.DatetimeIndex(pd.to_datetime(np.asarray(raw)))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: timestamps are not datetimes ({error})") from None
    if stamps.hasnans:
        raise ValueError(f"{where}: timestamps contain missing values (NaT)")
    duplicated = stamps[stamps.duplicated()]
    if len(duplicated):
        raise ValueError(f"{where}: duplicate timestamp {duplicated[0]} (timestamps must be unique)")
    if not stamps.is_monotonic_increasing:
        position = int(np.flatnonzero(np.diff(stamps.as_unit("ns").asi8) < 0)[0]) + 1
        raise ValueError(f"{where}: timestamps are not increasing ({stamps[position]} comes after "
                         f"{stamps[position - 1]}); sort them first")
    return stamps


def regular_grid(values: np.ndarray, stamps: pd.DatetimeIndex, step: pd.Timedelta) -> np.ndarray:
    """Values on the regular grid of `step` (gaps become NaN) when every stamp lies on it, else as given."""
    nanoseconds = stamps.as_unit("ns").asi8
    offsets = nanoseconds - nanoseconds[0]
    step_ns = step.value
    if step_ns <= 0 or np.any(offsets % step_ns):
        return values
    positions = offsets // step_ns
    grid = np.full(int(positions[-1]) + 1, np.nan)
    grid[positions] = values
    return grid


def calendar_steps_per_day(step: pd.Timedelta) -> int:
    if step >= pd.Timedelta("1D"):
        return 1
    return max(1, int(round(pd.Timedelta("1D") / step)))


def calendar(stamps: pd.DatetimeIndex, steps_per_day: int) -> tuple[np.ndarray, np.ndarray]:
    """(time_of_day slot 0..steps_per_day-1, day_of_week Monday=0), both [T] int32, as STDataset computes them."""
    seconds = stamps.hour * 3600 + stamps.minute * 60 + stamps.second
    slot = np.floor(np.asarray(seconds) / (86400 / steps_per_day)).astype(np.int32) % steps_per_day
    return slot.astype(np.int32), np.asarray(stamps.day_of_week, np.int32)

