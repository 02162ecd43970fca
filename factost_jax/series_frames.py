"""Long-format pandas in and out for a stage-1 model: `Forecaster.forecast_df`'s frames (Nixtla /
Chronos conventions), one univariate series per id.

In: one row per (series id, timestamp) with an id, a timestamp and a numeric target column. Each
series' frequency is `pd.infer_freq` of its timestamps, else its median step; when every stamp lies
on that step's grid, gaps are filled with NaN (missing values). Out: `horizon` rows per series, in
the order the ids first appear, with "median" and one column per quantile level ("0.1", ...).
A stage-2 model forecasts every sensor jointly instead: `network_frames.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from factost_jax.inputs.timestamps import check_timestamps, future_timestamps, infer_step, regular_grid


def level_column(level: float) -> str:
    """The DataFrame column name of a quantile level: 0.1 -> "0.1", 0.05 -> "0.05"."""
    return np.format_float_positional(float(level), trim="-")


def read_series_frame(df: pd.DataFrame, id_column: str, timestamp_column: str, target: str,
                      horizon: int) -> tuple[list[Any], list[np.ndarray], list[pd.DatetimeIndex]]:
    """(ids in first-appearance order, each series [T_i] float64 on its regular grid with NaN where
    missing, each series' `horizon` future timestamps); ValueError naming the column or series at fault.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in (id_column, timestamp_column, target) if c not in df.columns]
    if missing:
        raise ValueError(f"df is missing columns {missing}; it has {list(df.columns)} "
                         f"(set id_column / timestamp_column / target to name yours)")
    if len(df) == 0:
        raise ValueError("df has no rows")
    if df[id_column].isna().any():
        raise ValueError(f"df column {id_column!r} has missing ids")
    ids, series, futures = [], [], []
    for series_id, group in df.groupby(id_column, sort=False):
        where = f"series {series_id!r}"
        stamps = check_timestamps(group[timestamp_column].to_numpy(), where)
        try:
            values = pd.to_numeric(group[target], errors="raise").to_numpy(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: column {target!r} is not numeric") from None
        freq, step = infer_step(stamps, where)
        ids.append(series_id)
        series.append(regular_grid(values, stamps, step))
        futures.append(future_timestamps(stamps[-1], freq, horizon))
    return ids, series, futures


def series_forecast_frame(df: pd.DataFrame, id_column: str, timestamp_column: str, ids: Sequence[Any],
                          futures: Sequence[pd.DatetimeIndex], median: np.ndarray, quantiles: np.ndarray,
                          levels: np.ndarray) -> pd.DataFrame:
    """The long result frame of `read_series_frame`'s series: median [B, H], quantiles [B, H, Q] at
    `levels` [Q] -> B * H rows (series-major), ids and timestamps in `df`'s dtypes."""
    horizon = median.shape[1]
    frame = pd.DataFrame({
        id_column: np.repeat(np.asarray(ids, dtype=object), horizon),
        timestamp_column: futures[0].append(list(futures[1:])) if len(futures) > 1 else futures[0],
        "median": median.reshape(-1),
    })
    for index, level in enumerate(levels):
        frame[level_column(level)] = quantiles[:, :, index].reshape(-1)
    source_dtype = df[timestamp_column].dtype
    if isinstance(source_dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(source_dtype):
        frame[timestamp_column] = frame[timestamp_column].astype(source_dtype)  # the caller's unit and zone
    frame[id_column] = frame[id_column].astype(df[id_column].dtype)
    return frame
