"""Forecast metrics with the BasicTS masking conventions, plus quantile metrics.

Two families live here:

* Pure `jax.numpy` functions (`masked_mae`, `masked_mse`, `masked_rmse`, `masked_mape`,
  `pinball_loss`, `weighted_quantile_loss`, `interval_coverage`) used as training losses and for
  quick evaluation. They accept numpy or jax arrays, work under `jax.jit`, and return a scalar jax
  array.
* `HorizonMetrics`, a numpy accumulator that evaluates a whole split batch by batch and reports
  per-horizon-step and average metrics computed from global sums (as BasicTS does over the whole
  prediction tensor).

Conventions (BasicTS):

* A target counts ("observed") when it is not NaN and, when `null_val` is a number, not within
  `NULL_ATOL` (5e-5, absolute, rtol 0) of `null_val`; this is AND-ed with an optional extra `mask`.
  NaN targets never count, whatever `null_val` is.
* MAPE additionally drops targets with `|target| <= 5e-5` and is a fraction (0.1234 means 12.34 %).
* RMSE is the square root of the masked MSE over everything given (never a mean of per-batch RMSEs).
* NaN predictions are not hidden: a NaN prediction at an observed target makes the metric NaN
  (BasicTS's `nan_to_num` would silently score it as a perfect 0). A NaN prediction where the
  target does not count is ignored, because that point is not evaluated.
* When nothing counts, the loss-style functions (`masked_*`, `pinball_loss`) return 0.0 so that a
  training step on a fully-missing batch stays finite (BasicTS's `nan_to_num` behaviour);
  evaluation metrics that have no defined value (`weighted_quantile_loss`, `interval_coverage`, and
  every `HorizonMetrics` entry without an observed target) are NaN instead, so that "no data" never
  reads as a perfect score.
* `null_val` is a static Python float (0.0 or NaN), not a traced array.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np

NULL_ATOL = 5e-5  # BasicTS: targets within this absolute distance of null_val are missing
MAPE_MIN_ABS_TARGET = 5e-5  # BasicTS: MAPE ignores near-zero targets
COVERAGE_LEVELS = (0.1, 0.9)  # the central 80 % interval reported as "coverage_80"


def _is_nan(null_val) -> bool:
    return isinstance(null_val, float) and math.isnan(null_val)


def _check_null_val(null_val) -> float:
    try:
        value = float(null_val)
    except (TypeError, ValueError):
        raise ValueError(f"null_val must be a float (0.0 or NaN), got {null_val!r}") from None
    return value


# ----------------------------------------------------------------------------- jax functions
def observed_mask(target, null_val: float = np.nan, mask=None):
    """`[...]` bool: True where `target [...]` counts (not NaN, not null_val, and `mask` if given)."""
    null_val = _check_null_val(null_val)
    target = jnp.asarray(target)
    valid = ~jnp.isnan(target)
    if not _is_nan(null_val):
        valid = valid & ~jnp.isclose(target, null_val, atol=NULL_ATOL, rtol=0.0)
    if mask is not None:
        valid = valid & jnp.broadcast_to(jnp.asarray(mask, dtype=bool), target.shape)
    return valid


def _safe_masked_mean(values, valid):
    """Mean of `values` over `valid`; NaN values at valid points propagate, 0.0 when none valid."""
    total = jnp.sum(jnp.where(valid, values, 0.0))
    count = jnp.sum(valid)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def _prepare(pred, target, null_val, mask):
    pred = jnp.asarray(pred, dtype=jnp.float32)
    target = jnp.asarray(target, dtype=jnp.float32)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} does not match target shape {target.shape}")
    valid = observed_mask(target, null_val, mask)
    # Replace unobserved targets before subtracting so NaN targets cannot leak NaN into gradients.
    safe_target = jnp.where(valid, target, 0.0)
    return pred, safe_target, valid


def masked_mae(pred, target, null_val: float = np.nan, mask=None):
    """Masked mean absolute error (scalar) of `pred [...]` against `target [...]`."""
    pred, target, valid = _prepare(pred, target, null_val, mask)
    return _safe_masked_mean(jnp.abs(pred - target), valid)


def masked_mse(pred, target, null_val: float = np.nan, mask=None):
    """Masked mean squared error (scalar)."""
    pred, target, valid = _prepare(pred, target, null_val, mask)
    return _safe_masked_mean(jnp.square(pred - target), valid)


def masked_rmse(pred, target, null_val: float = np.nan, mask=None):
    """Square root of the masked MSE over all given points (scalar)."""
    return jnp.sqrt(masked_mse(pred, target, null_val, mask))


def masked_mape(pred, target, null_val: float = np.nan, mask=None):
    """Masked mean absolute percentage error as a fraction; also drops `|target| <= 5e-5`."""
    pred, target, valid = _prepare(pred, target, null_val, mask)
    valid = valid & ~jnp.isclose(target, 0.0, atol=MAPE_MIN_ABS_TARGET, rtol=0.0)
    denominator = jnp.where(valid, jnp.abs(target), 1.0)
    return _safe_masked_mean(jnp.abs(pred - target) / denominator, valid)


def _quantile_inputs(pred_quantiles, target, levels, mask):
    pred_quantiles = jnp.asarray(pred_quantiles, dtype=jnp.float32)
    target = jnp.asarray(target, dtype=jnp.float32)
    levels = jnp.asarray(levels, dtype=jnp.float32)
    if levels.ndim != 1 or pred_quantiles.shape != target.shape + levels.shape:
        raise ValueError(f"pred_quantiles must be target shape {target.shape} + [Q={levels.shape}], "
                         f"got {pred_quantiles.shape}")
    valid = observed_mask(target, np.nan, mask)
    safe_target = jnp.where(valid, target, 0.0)
    return pred_quantiles, safe_target, levels, valid


def _pinball(pred_quantiles, target, levels):
    """`[..., Q]` pinball loss of each quantile: max((q-1)(y-yhat), q(y-yhat))."""
    diff = target[..., None] - pred_quantiles
    return jnp.maximum((levels - 1.0) * diff, levels * diff)


def pinball_loss(pred_quantiles, target, levels, mask=None):
    """Masked multi-quantile pinball loss (spec §2.3), averaged over observed points and levels.

    Args:
      pred_quantiles: `[..., Q]` predicted quantiles.
      target: `[...]` targets; NaN targets never count.
      levels: `[Q]` quantile levels in (0, 1).
      mask: optional `[...]` bool, True where the target counts.
    Returns:
      scalar `sum_{q,t} pinball * m / (sum m * Q)`; 0.0 when nothing counts.
    """
    pred_quantiles, target, levels, valid = _quantile_inputs(pred_quantiles, target, levels, mask)
    loss = jnp.where(valid[..., None], _pinball(pred_quantiles, target, levels), 0.0)
    denominator = jnp.sum(valid) * levels.shape[0]
    return jnp.where(denominator > 0, jnp.sum(loss) / jnp.maximum(denominator, 1), 0.0)


def weighted_quantile_loss(pred_quantiles, target, levels, mask=None):
    """Mean weighted quantile loss (the GluonTS/Chronos CRPS approximation).

    `mean_q [2 * sum_t pinball_q(t) / sum_t |y_t|]` over observed points. NaN when nothing counts or
    the observed targets are all zero (the weighting is undefined).

    Args:
      pred_quantiles: `[..., Q]`; target: `[...]`; levels: `[Q]`; mask: optional `[...]` bool.
    """
    pred_quantiles, target, levels, valid = _quantile_inputs(pred_quantiles, target, levels, mask)
    loss = jnp.where(valid[..., None], _pinball(pred_quantiles, target, levels), 0.0)
    per_level = 2.0 * jnp.sum(loss.reshape(-1, levels.shape[0]), axis=0)
    scale = jnp.sum(jnp.where(valid, jnp.abs(target), 0.0))
    return jnp.where(scale > 0, jnp.mean(per_level) / jnp.where(scale > 0, scale, 1.0), jnp.nan)


def interval_coverage(lower, upper, target, mask=None):
    """Fraction of observed `target [...]` inside `[lower, upper]` (both `[...]`); NaN if none observed."""
    lower = jnp.asarray(lower, dtype=jnp.float32)
    upper = jnp.asarray(upper, dtype=jnp.float32)
    target = jnp.asarray(target, dtype=jnp.float32)
    if lower.shape != target.shape or upper.shape != target.shape:
        raise ValueError(f"lower {lower.shape} and upper {upper.shape} must match target {target.shape}")
    valid = observed_mask(target, np.nan, mask)
    inside = (target >= lower) & (target <= upper) & valid
    count = jnp.sum(valid)
    return jnp.where(count > 0, jnp.sum(inside) / jnp.maximum(count, 1), jnp.nan)


# ----------------------------------------------------------------------------- numpy accumulator
def observed_mask_np(target: np.ndarray, null_val: float = np.nan, mask: np.ndarray | None = None) -> np.ndarray:
    """numpy twin of `observed_mask`: `[...]` bool, True where `target [...]` counts."""
    null_val = _check_null_val(null_val)
    target = np.asarray(target)
    valid = ~np.isnan(target)
    if not _is_nan(null_val):
        valid &= ~np.isclose(target, null_val, atol=NULL_ATOL, rtol=0.0)
    if mask is not None:
        valid &= np.broadcast_to(np.asarray(mask, dtype=bool), target.shape)
    return valid


def _ratio(numerator: np.ndarray | float, denominator: np.ndarray | float) -> float:
    """numerator / denominator as a float, NaN when the denominator is 0 (nothing observed)."""
    numerator, denominator = float(numerator), float(denominator)
    return numerator / denominator if denominator > 0 else float("nan")


class HorizonMetrics:
    """Accumulates per-horizon-step sums over a whole split and reports BasicTS metrics.

    Every metric is computed once from global sums, so results do not depend on how windows were
    batched. Unobserved targets follow `observed_mask_np(target, null_val, mask)`.

    Args:
      horizon: H, the number of forecast steps per window.
      null_val: BasicTS null value (0.0 or NaN) applied to the targets.
      quantile_levels: `[Q]` levels of the quantiles passed to `update`, or None for point-only
        evaluation. When given, results also hold "QL" (mean weighted quantile loss) and, if 0.1
        and 0.9 are among the levels, "coverage_80".
    """

    def __init__(self, horizon: int, null_val: float = np.nan, quantile_levels: Sequence[float] | None = None):
        if int(horizon) != horizon or horizon < 1:
            raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
        self.horizon = int(horizon)
        self.null_val = _check_null_val(null_val)
        self.quantile_levels = None if quantile_levels is None else np.asarray(quantile_levels, dtype=np.float64)
        if self.quantile_levels is not None and (self.quantile_levels.ndim != 1 or self.quantile_levels.size == 0):
            raise ValueError(f"quantile_levels must be a non-empty 1-D sequence, got {quantile_levels!r}")
        h = self.horizon
        self.abs_error = np.zeros(h)
        self.squared_error = np.zeros(h)
        self.count = np.zeros(h)
        self.percentage_error = np.zeros(h)
        self.percentage_count = np.zeros(h)
        self._coverage_index = None
        if self.quantile_levels is not None:
            q = self.quantile_levels.size
            self.pinball = np.zeros((h, q))  # sum of 2 * pinball per level
            self.abs_target = np.zeros(h)
            lower = np.flatnonzero(np.isclose(self.quantile_levels, COVERAGE_LEVELS[0]))
            upper = np.flatnonzero(np.isclose(self.quantile_levels, COVERAGE_LEVELS[1]))
            if lower.size and upper.size:
                self._coverage_index = (int(lower[0]), int(upper[0]))
                self.covered = np.zeros(h)

    def update(self, pred, target, mask=None, quantiles=None) -> None:
        """Adds one batch.

        Args:
          pred: `[B, H, N]` point forecasts.
          target: `[B, H, N]` targets (NaN where unobserved).
          mask: optional `[B, H, N]` bool, True where the target counts.
          quantiles: `[B, H, N, Q]` forecast quantiles at `quantile_levels`, or None.
        """
        pred = np.asarray(pred, dtype=np.float64)
        target = np.asarray(target, dtype=np.float64)
        if target.ndim != 3 or target.shape[1] != self.horizon:
            raise ValueError(f"target must be [B, H={self.horizon}, N], got {target.shape}")
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {pred.shape} does not match target shape {target.shape}")
        valid = observed_mask_np(target, self.null_val, mask)
        safe_target = np.where(valid, target, 0.0)
        error = pred - safe_target
        # Sum over batch and nodes; NaN predictions at observed points stay NaN on purpose.
        self.abs_error += np.where(valid, np.abs(error), 0.0).sum(axis=(0, 2))
        self.squared_error += np.where(valid, np.square(error), 0.0).sum(axis=(0, 2))
        self.count += valid.sum(axis=(0, 2))
        percentage_valid = valid & ~np.isclose(safe_target, 0.0, atol=MAPE_MIN_ABS_TARGET, rtol=0.0)
        denominator = np.where(percentage_valid, np.abs(safe_target), 1.0)
        self.percentage_error += np.where(percentage_valid, np.abs(error) / denominator, 0.0).sum(axis=(0, 2))
        self.percentage_count += percentage_valid.sum(axis=(0, 2))

        if quantiles is None:
            return
        if self.quantile_levels is None:
            raise ValueError("quantiles were given but HorizonMetrics was built without quantile_levels")
        quantiles = np.asarray(quantiles, dtype=np.float64)
        if quantiles.shape != target.shape + (self.quantile_levels.size,):
            raise ValueError(f"quantiles must be [B, H, N, Q={self.quantile_levels.size}] = "
                             f"{target.shape + (self.quantile_levels.size,)}, got {quantiles.shape}")
        diff = safe_target[..., None] - quantiles
        pinball = np.maximum((self.quantile_levels - 1.0) * diff, self.quantile_levels * diff)
        self.pinball += 2.0 * np.where(valid[..., None], pinball, 0.0).sum(axis=(0, 2))
        self.abs_target += np.where(valid, np.abs(safe_target), 0.0).sum(axis=(0, 2))
        if self._coverage_index is not None:
            lo, hi = self._coverage_index
            inside = (safe_target >= quantiles[..., lo]) & (safe_target <= quantiles[..., hi]) & valid
            self.covered += inside.sum(axis=(0, 2))

    def _metrics(self, index) -> dict[str, float]:
        """Metrics over the horizon steps selected by `index` (a slice or an int)."""
        count = np.sum(self.count[index])
        result = {
            "MAE": _ratio(np.sum(self.abs_error[index]), count),
            "RMSE": math.sqrt(_ratio(np.sum(self.squared_error[index]), count)),
            "MAPE": _ratio(np.sum(self.percentage_error[index]), np.sum(self.percentage_count[index])),
        }
        if self.quantile_levels is not None:
            scale = np.sum(self.abs_target[index])
            per_level = self.pinball[index].reshape(-1, self.quantile_levels.size).sum(axis=0)
            result["QL"] = _ratio(per_level.mean(), scale)
            if self._coverage_index is not None:
                result["coverage_80"] = _ratio(np.sum(self.covered[index]), count)
        return result

    def result(self, steps: Sequence[int] = (3, 6, 12)) -> dict[str, dict[str, float]]:
        """{"avg": {...}, "step_3": {...}, ...}; step k is horizon index k-1, only steps <= H."""
        output = {"avg": self._metrics(slice(None))}
        for step in steps:
            if 1 <= step <= self.horizon:
                output[f"step_{step}"] = self._metrics(step - 1)
        return output
