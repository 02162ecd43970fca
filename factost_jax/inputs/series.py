"""Checks and conversions of the Forecaster's array inputs: series, horizons, quantile levels.

Pure numpy (jax only to recognise a `jax.Array` input); every bad input raises one ValueError that
names the argument and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import pandas as pd

LEVEL_TOLERANCE = 1e-9  # two quantile levels closer than this are the same level
MAX_NAMED = 5  # how many offending indices / ids an error message lists


def check_horizon(horizon: Any) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer):
        raise ValueError(f"horizon must be an int, got {type(horizon).__name__} {horizon!r}")
    if horizon <= 0:
        raise ValueError(f"horizon must be a positive int, got {horizon}")
    return int(horizon)


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_levels(quantiles: Any) -> np.ndarray:
    """Requested levels -> [Q] float64, sorted, duplicates removed; each strictly inside (0, 1)."""
    if isinstance(quantiles, str | bytes) or not isinstance(quantiles, Sequence | np.ndarray):
        raise ValueError(f"quantiles must be a sequence of levels in (0, 1), got {quantiles!r}")
    try:
        levels = np.asarray(quantiles, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"quantiles must be numbers in (0, 1), got {quantiles!r}") from None
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError(f"quantiles must be a non-empty 1-D sequence of levels, got {quantiles!r}")
    outside = [float(v) for v in levels if not (np.isfinite(v) and 0.0 < v < 1.0)]
    if outside:
        raise ValueError(f"quantile levels must lie strictly inside (0, 1); got {outside}")
    return np.unique(levels)


def trained_index(trained: np.ndarray, level: float) -> int | None:
    hits = np.flatnonzero(np.abs(trained - level) < LEVEL_TOLERANCE)
    return int(hits[0]) if hits.size else None


def to_float_series(item: Any, where: str) -> np.ndarray:
    try:
        series = np.asarray(item, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where} is not numeric (got {type(item).__name__})") from None
    return series


def series_matrix(inputs: Any, max_length: int) -> np.ndarray:
    """[B, T] array or list of 1-D series -> [B, L] float64 (last `max_length` steps), NaN-left-padded.

    Infinite values count as missing. Raises ValueError for wrong dimensions or empty series.
    """
    if isinstance(inputs, pd.DataFrame):
        raise ValueError("inputs is a DataFrame: use forecast_df(df, ...) for long-format pandas input")
    if isinstance(inputs, np.ndarray | jax.Array):
        matrix = to_float_series(inputs, "inputs")
        if matrix.ndim == 1:
            raise ValueError(f"inputs must be [B, T] or a list of 1-D series, got a 1-D array of shape {matrix.shape}; "
                             "for one series pass x[None, :] or [x]")
        if matrix.ndim != 2:
            raise ValueError(f"inputs must be [B, T] or a list of 1-D series, got an array of shape {matrix.shape}")
        if matrix.shape[0] == 0:
            raise ValueError("inputs is empty: got 0 series")
        if matrix.shape[1] == 0:
            raise ValueError(f"inputs has series of length 0 (shape {matrix.shape})")
        matrix = matrix[:, -max_length:]
    elif isinstance(inputs, Sequence) and not isinstance(inputs, str | bytes):
        if len(inputs) == 0:
            raise ValueError("inputs is empty: got 0 series")
        rows = []
        for index, item in enumerate(inputs):
            series = to_float_series(item, f"inputs[{index}]")
            if series.ndim != 1:
                raise ValueError(f"inputs[{index}] must be a 1-D series, got shape {series.shape}")
            if series.size == 0:
                raise ValueError(f"inputs[{index}] is an empty series")
            rows.append(series[-max_length:])
        width = max(row.size for row in rows)
        matrix = np.full((len(rows), width), np.nan)
        for index, row in enumerate(rows):
            matrix[index, width - row.size:] = row
    else:
        raise ValueError(f"inputs must be a [B, T] array or a list of 1-D series, got {type(inputs).__name__}")
    return np.where(np.isfinite(matrix), matrix, np.nan)


def rows_per_call(batch_size: int) -> int:
    """The rollout's row cap for `batch_size` series per chunk: the next power of two (it requires one)."""
    return 1 << max(batch_size - 1, 0).bit_length()


def check_observed(matrix: np.ndarray, names: Sequence[Any] | None = None) -> None:
    empty = np.flatnonzero(~np.isfinite(matrix).any(axis=1))
    if empty.size:
        shown = [names[i] for i in empty[:MAX_NAMED]] if names is not None else empty[:MAX_NAMED].tolist()
        more = f" and {empty.size - MAX_NAMED} more" if empty.size > MAX_NAMED else ""
        what = "ids" if names is not None else "indices"
        raise ValueError(f"series with no observed (finite) value at {what} {shown}{more}: "
                         "drop them or give them at least one value")


def standardise(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[B, L] float64 -> (standardised float32, loc [B, 1], scale [B, 1]) over each row's observed values."""
    observed = np.isfinite(matrix)
    count = observed.sum(axis=1, keepdims=True)
    safe = np.where(observed, matrix, 0.0)
    loc = np.where(count > 0, safe.sum(axis=1, keepdims=True) / np.maximum(count, 1), 0.0)
    spread = np.sqrt(np.where(observed, np.square(matrix - loc), 0.0).sum(axis=1, keepdims=True) / np.maximum(count, 1))
    # A flat row is scaled by its level, so the encoder's epsilon-sized response to a flat input
    # stays tiny relative to the series (a constant 1e-9 is not forecast as 1e-9 +- 1e-6).
    flat_scale = np.where(np.abs(loc) > 0, np.abs(loc), 1.0)
    scale = np.where(np.isfinite(spread) & (spread > 0), spread, flat_scale)
    return ((matrix - loc) / scale).astype(np.float32), loc, scale

