"""Stage-1 pretraining windows: the per-sample transform of spec §2.1 and the per-batch draws.

Per sample (code-exact parts of the spec):

1. series rejection is done ONCE when the corpus is built (`series_pool.keep_series`);
2. pad NaN left (context_length - min_context) and right (predict_length - patch_size);
3. uniform window of context_length + predict_length -> inputs / labels;
4. outlier masking and z-scoring with the input window's nanmean / nanstd;
5. randomized prefix masking, mask_len ~ UniformInt[0, context_length - min_context);
6. masks = ~isnan.

Per global batch, deterministically from (seed, batch index) so every process agrees: the number of
output patches F (`output_patches_for_batch`) and, with `context_buckets` (recipe v2, not in the
spec), the context width W the batch is cut to (`context_width_for_batch`). With buckets, step 5
happens on the batch: each window's visible length is uniform over [min_context + 1, W] or, for a
`user_context_share` of windows, a length users give; training then costs what W needs, not L.
A window whose first label patch or shortest visible context is unobserved is redrawn (same
series, the same per-record rng continues), up to `MAX_WINDOW_ATTEMPTS` times.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from factost_jax.data.pretrain_config import (
    MAX_WINDOW_ATTEMPTS,
    MIN_STD,
    TAG_CONTEXT_WIDTH,
    TAG_OUTPUT_PATCHES,
    USER_CONTEXT_LENGTHS,
    PretrainDataConfig,
)


def slice_with_nan_padding(series: np.ndarray, begin: int, length: int) -> np.ndarray:
    """`[length]` float32 copy of `series[begin:begin+length]`, NaN where that range leaves the series."""
    out = np.full(length, np.nan, dtype=np.float32)
    lo, hi = max(begin, 0), min(begin + length, series.shape[0])
    if hi > lo:
        out[lo - begin : hi - begin] = series[lo:hi]
    return out


def draw_window(series: np.ndarray, rng: np.random.Generator, config: PretrainDataConfig) -> tuple[np.ndarray, int]:
    """Spec §2.1 steps 2-3: a uniform window over the NaN-padded series.

    Args:
      series: `[n]` float32, NaN where unobserved.
    Returns:
      (`[context_length + predict_length]` float32 window, index in `series` of its first label step).
    """
    left_pad = config.context_length - config.min_context
    right_pad = config.predict_length - config.patch_size
    window_length = config.context_length + config.predict_length
    num_starts = left_pad + series.shape[0] + right_pad - window_length + 1
    if num_starts < 1:
        raise ValueError(f"series of length {series.shape[0]} is shorter than min_context + patch_size = "
                         f"{config.min_context + config.patch_size}; it should have been rejected")
    padded_start = int(rng.integers(num_starts))
    begin = padded_start - left_pad
    return slice_with_nan_padding(series, begin, window_length), begin + config.context_length


def normalize_window(inputs: np.ndarray, labels: np.ndarray, outlier_z: float = 4.0,
                     min_std: float = MIN_STD) -> tuple[np.ndarray, np.ndarray]:
    """Spec §2.1 step 4: outlier masking and z-scoring with the INPUT window's statistics.

    Args:
      inputs: `[L]` float32 with NaN.  labels: `[H]` float32 with NaN.
    Returns:
      (`[L]`, `[H]`) float32. Normally both z-scored with the inputs' nanmean / nanstd (ddof 0) and
      |z| > outlier_z set to NaN in both. When the inputs' std is below `min_std` the inputs are
      returned un-normalised and every observed label is replaced by the inputs' mean (unobserved
      labels stay NaN, so padding never becomes a target). With no observed input both are returned
      unchanged: there is nothing to normalise by.
    """
    inputs = np.asarray(inputs, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.float32)
    observed = inputs[np.isfinite(inputs)].astype(np.float64)
    if observed.size == 0:
        return inputs.copy(), labels.copy()
    mean, std = observed.mean(), observed.std()
    if std < min_std:
        return inputs.copy(), np.where(np.isnan(labels), np.nan, mean).astype(np.float32)
    z_inputs = (inputs.astype(np.float64) - mean) / std
    z_labels = (labels.astype(np.float64) - mean) / std
    with np.errstate(invalid="ignore"):  # NaN compares False: unobserved values stay NaN
        z_inputs[np.abs(z_inputs) > outlier_z] = np.nan
        z_labels[np.abs(z_labels) > outlier_z] = np.nan
    return z_inputs.astype(np.float32), z_labels.astype(np.float32)


def prefix_mask(inputs: np.ndarray, rng: np.random.Generator, min_context: int) -> np.ndarray:
    """Spec §2.1 step 5: `inputs[:mask_len] = NaN`, mask_len ~ UniformInt[0, L - min_context).

    Args:
      inputs: `[L]` float32.
    Returns:
      `[L]` float32 copy; the visible context is uniform in [min_context + 1, L] steps.
    """
    mask_len = int(rng.integers(0, inputs.shape[0] - min_context))
    out = np.array(inputs, dtype=np.float32, copy=True)
    out[:mask_len] = np.nan
    return out


def sample_training_window(series: np.ndarray, rng: np.random.Generator, config: PretrainDataConfig) -> dict:
    """Spec §2.1 steps 2-6 on one series, redrawing a window with nothing to learn from.

    With `config.context_buckets` the prefix mask (step 5) moves to the batch, which knows its
    context width: the window keeps its full context and carries two uniforms that fix its visible
    length there (`visible_lengths`).

    Args:
      series: `[n]` float32 with NaN (already past the rejection rule).
    Returns:
      {"context": `[L]` float32 NaN-missing, "labels": `[H]` float32 NaN-missing (z-scored),
       "target_start": int index in `series` of the first label,
       "context_draws": `[2]` float32 uniforms (only with context buckets)}.
    """
    L, ps = config.context_length, config.patch_size
    bucketed = bool(config.context_buckets)
    for _ in range(MAX_WINDOW_ATTEMPTS):
        window, target_start = draw_window(series, rng, config)
        inputs, labels = normalize_window(window[:L], window[L:], config.outlier_z)
        if bucketed:
            # The shortest visible context is the last min_context + 1 steps: it must hold a value.
            seen = np.isfinite(inputs[L - config.min_context - 1:]).any()
        else:
            inputs = prefix_mask(inputs, rng, config.min_context)
            seen = np.isfinite(inputs).any()
        # F >= 1 always keeps the first label patch, so that patch must hold a target.
        if seen and np.isfinite(labels[:ps]).any():
            break
    out = {"context": inputs, "labels": labels, "target_start": target_start}
    if bucketed:
        out["context_draws"] = rng.random(2, dtype=np.float32)
    return out


def to_model_batch(context: np.ndarray, labels: np.ndarray, horizon: int) -> dict[str, np.ndarray]:
    """The batch the stage-1 task consumes.

    Args:
      context: `[b, L]` float32 with NaN.  labels: `[b, H]` float32 with NaN.  horizon: F * patch_size <= H.
    Returns:
      {"context": `[b, L]` float32 (NaN missing), "context_mask": `[b, L]` bool,
       "target": `[b, horizon]` float32 (NaN -> 0), "target_mask": `[b, horizon]` bool}.
    """
    context = np.asarray(context, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.float32)[:, :horizon]
    target_mask = np.isfinite(labels)
    return {
        "context": np.where(np.isfinite(context), context, np.nan).astype(np.float32),
        "context_mask": np.isfinite(context),
        "target": np.where(target_mask, labels, 0.0).astype(np.float32),
        "target_mask": target_mask,
    }


# --------------------------------------------------------------------------- per-batch draws
def _batch_rng(seed: int, tag: str, batch_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(tag.encode()), int(batch_index)]))


def output_patches_for_batch(seed: int, batch_index: int, buckets: Sequence[int]) -> int:
    """F for one global batch: uniform over `buckets`, a pure function of (seed, batch_index)."""
    rng = _batch_rng(seed, TAG_OUTPUT_PATCHES, batch_index)
    return int(buckets[int(rng.integers(len(buckets)))])


def context_width_for_batch(seed: int, batch_index: int, widths: Sequence[int],
                            probabilities: Sequence[float]) -> int:
    """W (context steps) for one global batch, a pure function of (seed, batch_index).

    One width per batch keeps the batch rectangular and its cost that of W steps; every process of a
    multi-host run draws the same W, and XLA compiles one program per (W, F) pair.
    """
    rng = _batch_rng(seed, TAG_CONTEXT_WIDTH, batch_index)
    return int(widths[int(rng.choice(len(widths), p=np.asarray(probabilities, np.float64)))])


def visible_lengths(draws: np.ndarray, width: int, min_context: int, user_share: float) -> np.ndarray:
    """Visible context steps per window of a batch cut to `width` steps.

    Args:
      draws: `[b, 2]` uniforms in [0, 1) carried by the windows (`sample_training_window`).
    Returns:
      `[b]` int64 in [min_context + 1, width]: with probability `user_share` (decided by draws[:, 1])
      one of the `USER_CONTEXT_LENGTHS` below `width` or `width` itself (chosen by draws[:, 0]),
      otherwise uniform over the range (the spec's prefix-mask law on a width-W window).
    """
    draws = np.asarray(draws, np.float64)
    uniform = min_context + 1 + np.floor(draws[:, 0] * (width - min_context)).astype(np.int64)
    # The full width is a length users give too: the whole history they have, up to the maximum.
    fitting = np.asarray(sorted({n for n in USER_CONTEXT_LENGTHS if min_context < n < width} | {width}), np.int64)
    if user_share <= 0:
        return np.minimum(uniform, width)
    user = fitting[np.minimum((draws[:, 0] * fitting.size).astype(np.int64), fitting.size - 1)]
    return np.minimum(np.where(draws[:, 1] < user_share, user, uniform), width)


def apply_context_width(context: np.ndarray, draws: np.ndarray, width: int, min_context: int,
                        user_share: float) -> np.ndarray:
    """The batch's contexts cut to their last `width` steps, NaN before each window's visible part.

    Args:
      context: `[b, L]` float32 full contexts (no prefix mask yet).  draws: `[b, 2]` uniforms.
    Returns:
      `[b, width]` float32.
    """
    out = np.array(np.asarray(context, np.float32)[:, context.shape[1] - width:], copy=True)
    visible = visible_lengths(draws, width, min_context, user_share)
    out[np.arange(width)[None, :] < (width - visible)[:, None]] = np.nan
    return out
