"""Arbitrary-horizon quantile forecasts from the stage-1 encoder (spec §2.6).

One forward pass predicts at most `max_output_patches * patch_size` steps. Longer horizons roll
out: the forecast so far is interpolated to the path levels (0.1..0.9), each quantile path is
appended to the context (the batch grows x9), the next chunk is predicted for every path, and the
9 x Q predictions are re-aggregated to the trained levels by a weighted quantile whose weights are
trapezoid probability masses of the path and trained levels. Repeat until the horizon is covered.

Bounded compilation: before every forward pass the context is cut to the model's maximum
(or the largest bucket) and left-padded with NaN to the smallest bucket length that holds it
(default: patch * 2^k up to the maximum context). The encoder is exactly invariant to extra
left padding up to float rounding (relative positions, masked keys and queries), so this changes
nothing but the program shape. Rows are processed in chunks of `max_batch_size` and a short
chunk is padded with all-NaN rows to the next power of two (at least 8, a multiple of the usual
device counts), so programs are bounded by buckets x log2(max_batch_size) x output-patch counts.

Output lengths: a pass that needs F = ceil(steps / patch) output patches may instead ask for the
smallest F the checkpoint was pretrained on that covers them (`output_patches`, `trained_patches`),
and the extra steps are dropped: the model is only trusted on output lengths it has seen (a 96-step
horizon is F = 6; pretraining drew F from {1, 2, 4, 8, 16}). Measured both ways in
`benchmarks/output_patches.py` (docs/results.md).

Output quantiles are sorted along Q here (the raw head output is not guaranteed monotone).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from factost_jax.model.config import ModelConfig
from factost_jax.model.encoder import Params, jitted_apply, unbox

MIN_BATCH_BUCKET = 8
DEFAULT_MAX_BATCH_SIZE = 1024


def _array_module(x):
    return np if isinstance(x, np.ndarray) else jnp


def interpolate_quantiles(quantiles, levels_from: Sequence[float], levels_to: Sequence[float]):
    """Linear interpolation in the level; flat extrapolation beyond the first and last level.

    Args:
      quantiles: [..., Q] values at `levels_from` (strictly increasing); numpy or jax array.
      levels_from: Q levels.
      levels_to: Q' target levels.
    Returns:
      [..., Q'] of the same array kind (numpy in, numpy out).
    """
    source = np.asarray(levels_from, np.float64)
    target = np.asarray(levels_to, np.float64)
    if source.ndim != 1 or source.size == 0 or np.any(np.diff(source) <= 0):
        raise ValueError(f"levels_from must be a non-empty strictly increasing sequence, got {levels_from}")
    if target.ndim != 1:
        raise ValueError(f"levels_to must be a 1-D sequence of levels, got {levels_to}")
    if quantiles.shape[-1] != source.size:
        raise ValueError(
            f"quantiles last axis ({quantiles.shape[-1]}) must equal len(levels_from) ({source.size})"
        )
    if source.size == 1:
        return quantiles[..., np.zeros(target.size, np.int64)]
    clipped = np.clip(target, source[0], source[-1])
    upper = np.clip(np.searchsorted(source, clipped, side="left"), 1, source.size - 1)
    lower = upper - 1
    weight_upper = ((clipped - source[lower]) / (source[upper] - source[lower])).astype(np.float32)
    return quantiles[..., lower] * (1.0 - weight_upper) + quantiles[..., upper] * weight_upper


def trapezoid_masses(levels: Sequence[float]) -> np.ndarray:
    """Probability mass each level stands for: (l[k+1] - l[k-1]) / 2 with l[-1] = 0, l[K] = 1, normalised.

    Returns [K] float32 summing to 1.
    """
    padded = np.concatenate([[0.0], np.asarray(levels, np.float64), [1.0]])
    masses = (padded[2:] - padded[:-2]) / 2.0
    return (masses / masses.sum()).astype(np.float32)


def weighted_quantile(samples, weights, levels: Sequence[float]):
    """Quantiles of a weighted empirical distribution along the last axis.

    Samples are sorted; sample k sits at cumulative probability (weights before it) + w_k / 2; a
    level is linearly interpolated between those points and clamped to the extreme samples.

    Args:
      samples: [..., S] values (numpy or jax).
      weights: [S] non-negative weights with a positive sum (normalised here).
      levels: K levels in (0, 1).
    Returns:
      [..., K] float32 of the same array kind as `samples`.
    """
    xp = _array_module(samples)
    samples = xp.asarray(samples, xp.float32)
    weights = np.asarray(weights, np.float64)
    if weights.shape != (samples.shape[-1],) or np.any(weights < 0) or not weights.sum() > 0:
        raise ValueError(
            f"weights must be [{samples.shape[-1]}] non-negative with a positive sum, got shape {weights.shape}"
        )
    weights = xp.asarray(weights / weights.sum(), xp.float32)
    order = xp.argsort(samples, axis=-1)
    sorted_samples = xp.take_along_axis(samples, order, axis=-1)
    sorted_weights = weights[order]
    positions = xp.cumsum(sorted_weights, axis=-1) - 0.5 * sorted_weights  # [..., S], non-decreasing
    targets = xp.asarray(levels, xp.float32)
    num_samples = samples.shape[-1]
    if num_samples == 1:
        return xp.repeat(sorted_samples, len(levels), axis=-1)
    # For each level: how many sample positions lie at or below it -> the bracketing pair.
    below = xp.sum(positions[..., None, :] <= targets[:, None], axis=-1)  # [..., K]
    upper = xp.clip(below, 1, num_samples - 1)
    lower = upper - 1
    pos_lower = xp.take_along_axis(positions, lower, axis=-1)
    pos_upper = xp.take_along_axis(positions, upper, axis=-1)
    gap = pos_upper - pos_lower
    fraction = xp.where(gap > 0, (targets - pos_lower) / xp.where(gap > 0, gap, 1.0), 1.0)
    fraction = xp.clip(fraction, 0.0, 1.0)
    value_lower = xp.take_along_axis(sorted_samples, lower, axis=-1)
    value_upper = xp.take_along_axis(sorted_samples, upper, axis=-1)
    return (value_lower + fraction * (value_upper - value_lower)).astype(xp.float32)


def default_context_buckets(config: ModelConfig) -> tuple[int, ...]:
    """patch * 2^k for every such length below the maximum context, then the maximum itself."""
    buckets = []
    length = config.patch_size
    while length < config.max_context_length:
        buckets.append(length)
        length *= 2
    buckets.append(config.max_context_length)
    return tuple(buckets)


def output_patches(steps: int, config: ModelConfig, trained_patches: Sequence[int] | None = None) -> int:
    """Output patches F of one forward pass that predicts (at least) `steps` more steps.

    F = ceil(steps / patch_size), at most `max_output_patches`; with `trained_patches` (the F values
    pretraining drew), rounded up to the smallest trained F >= it (unchanged past the largest).
    """
    needed = min(math.ceil(steps / config.patch_size), config.max_output_patches)
    covering = [int(f) for f in trained_patches or () if needed <= int(f) <= config.max_output_patches]
    return min(covering) if covering else needed


def _validate_buckets(buckets: Sequence[int], config: ModelConfig) -> tuple[int, ...]:
    buckets = tuple(int(b) for b in buckets)
    if not buckets or any(b <= 0 or b % config.patch_size for b in buckets):
        raise ValueError(
            f"context_buckets must be positive multiples of patch_size={config.patch_size}, got {buckets}"
        )
    if any(b2 <= b1 for b1, b2 in zip(buckets, buckets[1:])):
        raise ValueError(f"context_buckets must be strictly increasing, got {buckets}")
    return buckets


def _batch_bucket(rows: int, max_batch_size: int) -> int:
    """Next power of two >= rows (at least MIN_BATCH_BUCKET), capped at max_batch_size."""
    return min(max(MIN_BATCH_BUCKET, 1 << max(rows - 1, 0).bit_length()), max_batch_size)


def fit_to_bucket(context: np.ndarray, buckets: Sequence[int], max_length: int) -> np.ndarray:
    """Keeps the last min(max_length, max(buckets)) steps, then left-pads with NaN to a bucket.

    Shapes: [B, L] -> [B, bucket].
    """
    keep = min(max_length, buckets[-1])
    context = context[:, -keep:]
    length = context.shape[1]
    target = next(b for b in buckets if b >= length)
    if target == length:
        return context
    pad = np.full((context.shape[0], target - length), np.nan, np.float32)
    return np.concatenate([pad, context], axis=1)


def _predict_bucketed(
    params: Params,
    config: ModelConfig,
    context: np.ndarray,
    num_output_patches: int,
    buckets: tuple[int, ...],
    max_batch_size: int,
    max_context: int,
) -> np.ndarray:
    """Raw encoder quantiles [B, F*patch, Q] for context [B, L] (NaN = missing; its last `max_context`
    steps are used), shapes bucketed."""
    forward = jitted_apply(config)
    context = fit_to_bucket(context, buckets, max_context)
    outputs = []
    for start in range(0, context.shape[0], max_batch_size):
        chunk = context[start : start + max_batch_size]
        rows = chunk.shape[0]
        padded_rows = _batch_bucket(rows, max_batch_size)
        if padded_rows > rows:
            filler = np.full((padded_rows - rows, chunk.shape[1]), np.nan, np.float32)
            chunk = np.concatenate([chunk, filler], axis=0)
        mask = np.isfinite(chunk)
        outputs.append(np.asarray(forward(params, chunk, mask, num_output_patches))[:rows])
    return np.concatenate(outputs, axis=0)


def forecast_quantiles(
    params: Params,
    config: ModelConfig,
    context,
    horizon: int,
    context_buckets: Sequence[int] | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_context: int | None = None,
    trained_patches: Sequence[int] | None = None,
) -> np.ndarray:
    """Quantile forecasts at the trained levels for any horizon, sorted along Q.

    Args:
      params: encoder parameters (boxed or plain).
      config: the encoder's ModelConfig.
      context: [B, L] float (numpy or jax), NaN = missing; rows may be all NaN.
      horizon: H >= 1 steps to forecast.
      context_buckets: increasing multiples of patch_size the context is left-padded to; the
        largest also caps the context length. Default `default_context_buckets(config)`.
      max_batch_size: rows per forward pass, a power of two (rollout multiplies rows by the
        number of path levels).
      max_context: the most steps any forward pass sees, the rollout's extended contexts included
        (default: the model's maximum); e.g. the context length the checkpoint was pretrained on.
      trained_patches: output-patch counts every pass is rounded up to (`output_patches`); None
        asks for exactly ceil(steps / patch_size).
    Returns:
      [B, H, Q] float32 numpy array in the input's units, non-decreasing along Q.
    """
    context = np.asarray(context, np.float32)
    if context.ndim != 2 or context.shape[0] == 0 or context.shape[1] == 0:
        raise ValueError(f"context must have shape [batch>0, length>0], got {context.shape}")
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"horizon must be a positive int, got {horizon!r}")
    if max_batch_size < 1 or max_batch_size & (max_batch_size - 1):
        raise ValueError(f"max_batch_size must be a power of two, got {max_batch_size}")
    buckets = _validate_buckets(
        default_context_buckets(config) if context_buckets is None else context_buckets, config
    )
    params = unbox(params)
    levels = config.quantile_levels
    path_levels = config.rollout_quantile_levels
    sample_weights = np.outer(trapezoid_masses(path_levels), trapezoid_masses(levels)).reshape(-1)
    keep = min(config.max_context_length, buckets[-1], max_context or config.max_context_length)
    context = np.where(np.isfinite(context), context, np.nan)[:, -keep:]
    batch, num_paths = context.shape[0], len(path_levels)

    def patches_for(steps: int) -> int:
        return output_patches(steps, config, trained_patches)

    forecast = np.sort(
        _predict_bucketed(params, config, context, patches_for(horizon), buckets, max_batch_size, keep), axis=-1
    )
    while forecast.shape[1] < horizon:
        num_patches = patches_for(horizon - forecast.shape[1])
        paths = np.moveaxis(interpolate_quantiles(forecast, levels, path_levels), -1, 1)  # [B, paths, h]
        repeated = np.broadcast_to(context[:, None, :], (batch, num_paths, context.shape[1]))
        extended = np.concatenate([repeated, paths], axis=-1).reshape(batch * num_paths, -1)
        predicted = _predict_bucketed(params, config, extended, num_patches, buckets, max_batch_size, keep)
        steps = predicted.shape[1]
        samples = predicted.reshape(batch, num_paths, steps, len(levels)).transpose(0, 2, 1, 3)
        samples = samples.reshape(batch, steps, num_paths * len(levels))
        chunk = np.asarray(weighted_quantile(samples, sample_weights, levels))
        forecast = np.concatenate([forecast, np.sort(chunk, axis=-1)], axis=1)
    return forecast[:, :horizon].astype(np.float32)
