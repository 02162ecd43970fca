"""Checked conversions of config values shared by the data configs (one error naming the field)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def as_int(value: Any, name: str) -> int:
    """`value` as an int; ValueError naming `name` for a bool, float or anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def as_float(value: Any, name: str) -> float:
    """`value` as a finite float; ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def check_seed(seed: Any, what: str = "seed") -> None:
    """ValueError naming `what` unless `seed` is a non-negative integer (numpy's generators need one)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{what} must be a non-negative int, got {seed!r}")
