"""The one post-processing of a quantile head's output, shared by training-time validation, the
Forecaster and evaluation, so the same checkpoint scores the same everywhere.

The head predicts the Q levels independently, so its raw outputs may cross; every consumer sorts
them along Q (a quantile function is non-decreasing) and takes the point forecast as the level
nearest 0.5 of the sorted values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def median_index(levels: Sequence[float] | np.ndarray) -> int:
    """Index of the level nearest 0.5 in `levels` [Q]."""
    levels = np.asarray(levels, np.float64)
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError(f"levels must be a non-empty 1-D sequence of quantile levels, got {levels!r}")
    return int(np.argmin(np.abs(levels - 0.5)))


def point_and_quantiles(raw: np.ndarray, levels: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw head output [..., Q] at `levels` -> (point forecast [...], quantiles [..., Q] sorted along Q)."""
    raw = np.asarray(raw)
    if raw.shape[-1:] != (len(levels),):
        raise ValueError(f"quantile output must end in Q={len(levels)} levels, got shape {raw.shape}")
    ordered = np.sort(raw, axis=-1)
    return np.ascontiguousarray(ordered[..., median_index(levels)]), ordered
