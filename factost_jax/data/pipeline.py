"""Stage-1 pretraining data: corpus of univariate series -> randomized windows -> Grain batches.

The per-sample transform follows spec §2.1 (code-exact parts):

1. series rejection (last observed index < min_context + predict_length + 2, or under 50 % observed)
   is done ONCE when the corpus is built, not per sample;
2. pad NaN left (context_length - min_context) and right (predict_length - patch_size);
3. uniform window of context_length + predict_length -> inputs / labels;
4. outlier masking and z-scoring with the input window's nanmean / nanstd;
5. randomized prefix masking, mask_len ~ UniformInt[0, context_length - min_context);
6. masks = ~isnan.

The number of output patches F is drawn per GLOBAL batch from a small bucket set, deterministically
from (seed, batch index), so every process of a multi-host run truncates its labels identically and
XLA compiles one program per bucket.

Choices the spec leaves open (each is documented where it is made):
- Corpus "real" pools every univariate column of every dataset present in `data_dir`, minus the
  exclusion list (evaluation sets and their twins), minus datasets named explicitly as their own
  component, minus the synthetic sensor network. Inside the pool every kept series is equally likely,
  so datasets are weighted by their number of kept series.
- Every real series is trimmed to its observed span and its last `predict_length` points are held
  out of training: they are the labels of the validation windows. The rejection rule is applied to
  the training part (indices counted from its first observed step, observed fraction over it).
- An evaluation dataset named explicitly with `allow_overlap=True` contributes its train split only.
- A window whose first label patch or whole context ends up unobserved is redrawn (same series, the
  same per-record rng continues), up to `MAX_WINDOW_ATTEMPTS` times; the last draw is kept otherwise
  (its masks are all-False where nothing is observed and the loss ignores it).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import zlib
from typing import Any, Sequence

import numpy as np

KERNELSYNTH = "kernelsynth"
REAL = "real"
# The synthetic sensor network is a stage-2 stand-in, never part of the "real" pool.
_NOT_REAL = ("SYNTHETIC",)
MAX_WINDOW_ATTEMPTS = 8
MIN_STD = 1e-3

# Tags that separate the random streams derived from the one config seed.
_TAG_SHUFFLE = "shuffle"
_TAG_WINDOW = "window"
_TAG_OUTPUT_PATCHES = "output_patches"
_TAG_VALIDATION = "validation"
_TAG_KERNELSYNTH = "kernelsynth_series"

_log = logging.getLogger(__name__)


def _default_exclusions() -> tuple[str, ...]:
    from factost_jax.data import formats  # lazy: data/ modules stay importable on their own

    return tuple(formats.EVALUATION_DATASETS)


@dataclasses.dataclass(frozen=True)
class PretrainDataConfig:
    """Everything that decides which windows stage-1 pretraining sees.

    Attributes:
      context_length: L, input steps per window (multiple of patch_size).
      predict_length: H, label steps per window (multiple of patch_size).
      patch_size: steps per patch.
      min_context: shortest visible context after prefix masking.
      output_patch_buckets: the values F (output patches per batch) is drawn from, uniformly.
      batch_size: GLOBAL batch size over all processes.
      corpora: (name, weight) pairs; name is "kernelsynth", "real" or a dataset name.
      exclude: dataset names never used by "real" (default: formats.EVALUATION_DATASETS); naming one
        explicitly in `corpora` is an error unless `allow_overlap`.
      allow_overlap: allow explicitly named excluded datasets (their train split only).
      kernelsynth_series: number of distinct KernelSynth training series.
      kernelsynth_length: length of each KernelSynth series.
      kernelsynth_max_kernels: most GP kernels combined per KernelSynth series.
      outlier_z: |z| above this (input-window statistics) becomes NaN.
      min_observed_frac: series observed below this fraction are dropped.
      seed: the one seed every random stream derives from.
      data_dir: real-data directory (None: formats.default_data_dir()).
      worker_count: Grain worker processes (0: in-process).
      read_threads: in-process Grain threads building batches (0: synchronous).
      prefetch_batches: batches Grain builds ahead per process.
    """

    context_length: int = 2048
    predict_length: int = 256
    patch_size: int = 16
    min_context: int = 48
    output_patch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16)
    batch_size: int = 512
    corpora: tuple[tuple[str, float], ...] = ((KERNELSYNTH, 0.5), (REAL, 0.5))
    exclude: tuple[str, ...] = dataclasses.field(default_factory=_default_exclusions)
    allow_overlap: bool = False
    kernelsynth_series: int = 1_000_000
    kernelsynth_length: int = 1024
    kernelsynth_max_kernels: int = 5
    outlier_z: float = 4.0
    min_observed_frac: float = 0.5
    seed: int = 2025
    data_dir: str | None = None
    worker_count: int = 0
    read_threads: int = 2
    prefetch_batches: int = 4

    def __post_init__(self):
        # ml_collections hands lists and PathLikes over; store hashable, canonical Python types.
        try:
            corpora = tuple((str(name), float(weight)) for name, weight in self.corpora)
        except (TypeError, ValueError):
            raise ValueError(f"corpora must be (name, weight) pairs, got {self.corpora!r}") from None
        object.__setattr__(self, "corpora", corpora)
        if isinstance(self.exclude, str):
            raise ValueError(f"exclude must be a sequence of dataset names, got the string {self.exclude!r}")
        object.__setattr__(self, "exclude", tuple(str(name) for name in self.exclude))
        try:
            buckets = tuple(_as_int(b, "output_patch_buckets") for b in self.output_patch_buckets)
        except TypeError:
            raise ValueError(f"output_patch_buckets must be a sequence of ints, got {self.output_patch_buckets!r}") from None
        object.__setattr__(self, "output_patch_buckets", buckets)
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        self.validate()

    @property
    def max_output_patches(self) -> int:
        return self.predict_length // self.patch_size

    @property
    def min_series_last_index(self) -> int:
        """The spec's rejection threshold on a series' last observed index."""
        return self.min_context + self.predict_length + 2

    def validate(self, process_count: int = 1) -> "PretrainDataConfig":
        """Raises ValueError naming the first bad field; returns self."""
        for name in ("context_length", "predict_length", "patch_size", "min_context", "batch_size",
                     "kernelsynth_length", "kernelsynth_max_kernels"):
            if _as_int(getattr(self, name), name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("kernelsynth_series", "worker_count", "read_threads", "prefetch_batches", "seed"):
            if _as_int(getattr(self, name), name) < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if self.seed >= 2**32:
            raise ValueError(f"seed must be below 2**32, got {self.seed}")
        for name in ("context_length", "predict_length"):
            if getattr(self, name) % self.patch_size:
                raise ValueError(f"{name}={getattr(self, name)} must be a multiple of patch_size={self.patch_size}")
        if not self.min_context < self.context_length:
            raise ValueError(f"min_context={self.min_context} must be below context_length={self.context_length}")
        if self.predict_length < self.patch_size:
            raise ValueError(f"predict_length={self.predict_length} must be at least patch_size={self.patch_size}")
        buckets = self.output_patch_buckets
        if not buckets or len(set(buckets)) != len(buckets):
            raise ValueError(f"output_patch_buckets must be non-empty and distinct, got {buckets}")
        if min(buckets) < 1 or max(buckets) > self.max_output_patches:
            raise ValueError(f"output_patch_buckets {buckets} must lie in 1..predict_length/patch_size="
                             f"{self.max_output_patches}")
        if not math.isfinite(self.outlier_z) or self.outlier_z <= 0:
            raise ValueError(f"outlier_z must be a positive number, got {self.outlier_z}")
        if not 0.0 <= self.min_observed_frac <= 1.0:
            raise ValueError(f"min_observed_frac must lie in [0, 1], got {self.min_observed_frac}")
        self._validate_corpora()
        if _as_int(process_count, "process_count") < 1:
            raise ValueError(f"process_count must be a positive integer, got {process_count}")
        if self.batch_size % process_count:
            raise ValueError(f"batch_size={self.batch_size} (global) must be divisible by the process count "
                             f"{process_count}")
        return self

    def _validate_corpora(self) -> None:
        if not self.corpora:
            raise ValueError("corpora must name at least one (name, weight) pair")
        for name, weight in self.corpora:
            if not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"corpora: weight of {name!r} must be a positive number, got {weight}")
        lowered = [name.lower() for name, _ in self.corpora]
        if KERNELSYNTH in lowered:
            if self.kernelsynth_series < 1:
                raise ValueError("kernelsynth_series must be at least 1 when corpora includes 'kernelsynth'")
            if self.kernelsynth_length - 1 < self.min_series_last_index:
                raise ValueError(
                    f"kernelsynth_length={self.kernelsynth_length} is too short: every series would be rejected "
                    f"(last index must reach min_context + predict_length + 2 = {self.min_series_last_index})")
        if any(name not in (KERNELSYNTH, REAL) for name in lowered) or self.exclude:
            _plan_corpus(self)  # canonicalises names, rejects duplicates and evaluation-set overlap


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- seeds
def derive_seed(seed: int, *parts: str | int) -> int:
    """A uint32 seed for one named random stream of the config seed (stable across runs)."""
    words = [int(seed)] + [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0])


def output_patches_for_batch(seed: int, batch_index: int, buckets: Sequence[int]) -> int:
    """F for one global batch: uniform over `buckets`, a pure function of (seed, batch_index)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(_TAG_OUTPUT_PATCHES.encode()),
                                                        int(batch_index)]))
    return int(buckets[int(rng.integers(len(buckets)))])


# --------------------------------------------------------------------------- per-sample transform
def _slice_with_nan_padding(series: np.ndarray, begin: int, length: int) -> np.ndarray:
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
    return _slice_with_nan_padding(series, begin, window_length), begin + config.context_length


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

    Args:
      series: `[n]` float32 with NaN (already past the rejection rule).
    Returns:
      {"context": `[L]` float32 NaN-missing, "labels": `[H]` float32 NaN-missing (z-scored),
       "target_start": int index in `series` of the first label}.
    """
    L, ps = config.context_length, config.patch_size
    for _ in range(MAX_WINDOW_ATTEMPTS):
        window, target_start = draw_window(series, rng, config)
        inputs, labels = normalize_window(window[:L], window[L:], config.outlier_z)
        inputs = prefix_mask(inputs, rng, config.min_context)
        # F >= 1 always keeps the first label patch, so that patch must hold a target.
        if np.isfinite(inputs).any() and np.isfinite(labels[:ps]).any():
            break
    return {"context": inputs, "labels": labels, "target_start": target_start}


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


# --------------------------------------------------------------------------- series sources
class RaggedSeriesSource:
    """Random access over many 1-D series held as ONE concatenated float32 array (cheap to pickle).

    `source[i]` is the read-only view `values[starts[i] : starts[i] + lengths[i]]`.
    """

    def __init__(self, values: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
        values = np.asarray(values, dtype=np.float32)
        starts = np.asarray(starts, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        if values.ndim != 1 or starts.shape != lengths.shape or starts.ndim != 1:
            raise ValueError(f"RaggedSeriesSource: values must be 1-D and starts/lengths equal 1-D shapes, got "
                             f"{values.shape}, {starts.shape}, {lengths.shape}")
        if starts.size and (starts.min() < 0 or (starts + lengths).max() > values.size or lengths.min() < 0):
            raise ValueError("RaggedSeriesSource: a series range lies outside the values array")
        for array in (values, starts, lengths):
            array.flags.writeable = False
        self.values, self.starts, self.lengths = values, starts, lengths

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def __getitem__(self, index: int) -> np.ndarray:
        start = int(self.starts[index])
        return self.values[start : start + int(self.lengths[index])]

    def __repr__(self) -> str:
        return f"RaggedSeriesSource(num_series={len(self)}, num_points={int(self.lengths.sum())})"


@dataclasses.dataclass(frozen=True, eq=False)
class SeriesPool:
    """The kept real series of one corpus component.

    Attributes:
      values: `[total]` float32, every kept series trimmed to its observed span, concatenated.
      offsets: `[S + 1]` int64 series boundaries in `values`.
      train_lengths: `[S]` int64 length of each series' training part (the series minus its held-out
        last `predict_length` points, trailing NaNs trimmed).
      dataset_index: `[S]` int32 index into `dataset_names`.
      dataset_names: canonical names of the datasets pooled.
      dropped: per dataset, how many columns the rejection rule dropped.
    """

    values: np.ndarray
    offsets: np.ndarray
    train_lengths: np.ndarray
    dataset_index: np.ndarray
    dataset_names: tuple[str, ...]
    dropped: tuple[int, ...]

    @property
    def num_series(self) -> int:
        return int(self.train_lengths.shape[0])

    def full_series(self, i: int) -> np.ndarray:
        """`[n]` float32 view of series i including its held-out tail."""
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def training_source(self) -> RaggedSeriesSource:
        return RaggedSeriesSource(self.values, self.offsets[:-1], self.train_lengths)


def _observed_span(column: np.ndarray) -> tuple[int, int] | None:
    """[first, last] observed index of a 1-D series, or None if nothing is observed."""
    observed = np.flatnonzero(np.isfinite(column))
    return (int(observed[0]), int(observed[-1])) if observed.size else None


def keep_series(series: np.ndarray, min_last_index: int, min_observed_frac: float) -> bool:
    """The spec's rejection rule, negated: last observed index >= min_last_index and enough observed."""
    span = _observed_span(series)
    if span is None or span[1] < min_last_index:
        return False
    return float(np.isfinite(series).mean()) >= min_observed_frac


@functools.lru_cache(maxsize=8)
def _load_series_pool(datasets: tuple[tuple[str, bool], ...], data_dir: str | None, predict_length: int,
                      min_last_index: int, min_observed_frac: float) -> SeriesPool:
    """Every (node, channel) column of `datasets` that passes the rejection rule, as one pool.

    `datasets` holds (canonical name, train_split_only) pairs. A column is trimmed to its observed
    span; its training part drops the last `predict_length` points (validation labels) and any NaNs
    that then trail; the rule is applied to that training part.
    """
    from factost_jax.data import formats

    chunks, offsets, train_lengths, owners, dropped = [], [0], [], [], []
    for dataset_id, (name, train_split_only) in enumerate(datasets):
        dataset = formats.load_dataset(name, data_dir=data_dir)
        end = dataset.split_range("train")[1] if train_split_only else dataset.num_steps
        num_dropped = 0
        for column in dataset.univariate_series():
            column = np.where(np.isfinite(column[:end]), column[:end], np.nan).astype(np.float32)
            span = _observed_span(column)
            train_part = column[span[0] : max(span[0], span[1] + 1 - predict_length)] if span else column[:0]
            if not keep_series(train_part, min_last_index, min_observed_frac):
                num_dropped += 1
                continue
            full = column[span[0] : span[1] + 1]
            chunks.append(full)
            offsets.append(offsets[-1] + full.shape[0])
            train_lengths.append(_observed_span(train_part)[1] + 1)
            owners.append(dataset_id)
        dropped.append(num_dropped)
    values = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    pool = SeriesPool(values=values, offsets=np.asarray(offsets, np.int64),
                      train_lengths=np.asarray(train_lengths, np.int64),
                      dataset_index=np.asarray(owners, np.int32),
                      dataset_names=tuple(name for name, _ in datasets), dropped=tuple(dropped))
    for array in (pool.values, pool.offsets, pool.train_lengths, pool.dataset_index):
        array.flags.writeable = False  # the pool is cached and shared: nobody may edit it
    return pool


# --------------------------------------------------------------------------- corpus plan
@dataclasses.dataclass(frozen=True)
class _ComponentPlan:
    name: str
    weight: float
    datasets: tuple[tuple[str, bool], ...]  # (canonical name, train_split_only); () for kernelsynth


def _base_name(name: str) -> str:
    return name.split(":", 1)[0]


def _is_excluded(name: str, exclusions: frozenset[str]) -> bool:
    # Excluding "HZMETRO" excludes every variant ("HZMETRO:out") too.
    return name in exclusions or _base_name(name) in exclusions


def _plan_corpus(config: PretrainDataConfig, *, resolve_real: bool = False) -> tuple[_ComponentPlan, ...]:
    """Canonical component list. Raises ValueError on duplicates or an unallowed evaluation set."""
    named = [(name, weight) for name, weight in config.corpora if name.lower() not in (KERNELSYNTH, REAL)]
    formats = None
    if named or config.exclude or resolve_real:
        from factost_jax.data import formats
    exclusions = frozenset(formats.canonical_name(n) for n in config.exclude) if formats else frozenset()
    plans, seen = [], set()
    for name, weight in config.corpora:
        key = name.lower() if name.lower() in (KERNELSYNTH, REAL) else formats.canonical_name(name)
        if key in seen:
            raise ValueError(f"corpora names {key!r} more than once")
        seen.add(key)
        if key == KERNELSYNTH:
            plans.append(_ComponentPlan(KERNELSYNTH, weight, ()))
        elif key == REAL:
            plans.append(_ComponentPlan(REAL, weight, ()))
        else:
            excluded = _is_excluded(key, exclusions)
            if excluded and not config.allow_overlap:
                raise ValueError(f"corpora names {key!r}, an evaluation dataset (in the exclusion list); "
                                 f"pretraining on it leaks into zero-shot results: drop it or set allow_overlap=True")
            plans.append(_ComponentPlan(key, weight, ((key, excluded),)))
    if resolve_real:
        plans = [_resolve_real(plan, config, exclusions, seen, formats) if plan.name == REAL else plan
                 for plan in plans]
    return tuple(plans)


def _resolve_real(plan: _ComponentPlan, config: PretrainDataConfig, exclusions: frozenset[str],
                  named: set[str], formats) -> _ComponentPlan:
    if config.data_dir is not None and not os.path.isdir(config.data_dir):
        # A directory the user named must exist: silently training on KernelSynth alone would waste the run.
        raise FileNotFoundError(f"data.data_dir={config.data_dir!r} is not a directory (expected the real-data "
                                "directory, e.g. ../shared/data; leave it unset to use $FACTOST_DATA_DIR)")
    try:
        present = formats.list_datasets(config.data_dir)
    except FileNotFoundError as error:
        _log.warning("corpus 'real': no data directory (%s); the component is empty", error)
        present = []
    names = sorted({formats.canonical_name(n) for n in present}
                   - named - set(_NOT_REAL))
    names = [n for n in names if not _is_excluded(n, exclusions)]
    return dataclasses.replace(plan, datasets=tuple((n, False) for n in names))


# --------------------------------------------------------------------------- corpus
@dataclasses.dataclass(frozen=True, eq=False)
class CorpusComponent:
    """One weighted corpus component.

    Attributes:
      name: "kernelsynth", "real" or a canonical dataset name.
      weight: normalised mixture weight (components sum to 1).
      source: random access `source[i] -> [n] float32` training series.
      pool: the real series with their held-out tails (None for kernelsynth).
    """

    name: str
    weight: float
    source: Any
    pool: SeriesPool | None


def _kernelsynth_source(config: PretrainDataConfig, num_series: int):
    from factost_jax.data.synthetic import KernelSynthSource

    return KernelSynthSource(num_series, length=config.kernelsynth_length,
                             max_kernels=config.kernelsynth_max_kernels,
                             seed=derive_seed(config.seed, _TAG_KERNELSYNTH))


def _concrete_data_dir(config: PretrainDataConfig) -> str:
    # The pool cache is keyed by directory: resolve the default now so a later change of
    # FACTOST_DATA_DIR cannot return another directory's series.
    from factost_jax.data import formats

    return config.data_dir if config.data_dir is not None else str(formats.default_data_dir())


def build_corpus(config: PretrainDataConfig) -> tuple[CorpusComponent, ...]:
    """The non-empty components with normalised weights (real pools are cached in memory).

    Raises ValueError when a named dataset keeps no series or the whole corpus is empty.
    """
    components = []
    for plan in _plan_corpus(config, resolve_real=True):
        if plan.name == KERNELSYNTH:
            components.append((plan, _kernelsynth_source(config, config.kernelsynth_series), None))
            continue
        pool = _load_series_pool(plan.datasets, _concrete_data_dir(config), config.predict_length,
                                 config.min_series_last_index, config.min_observed_frac)
        if pool.num_series == 0:
            if plan.name != REAL:
                raise ValueError(
                    f"corpus component {plan.name!r} keeps no series: a column needs its training part (the "
                    f"series minus its held-out last predict_length={config.predict_length} steps) to reach a last "
                    f"observed index >= min_context + predict_length + 2 = {config.min_series_last_index} and "
                    f"to be at least {config.min_observed_frac:.0%} observed")
            _log.warning("corpus 'real' is empty (datasets considered: %s); it is left out",
                         [name for name, _ in plan.datasets] or "none")
            continue
        components.append((plan, pool.training_source(), pool))
    if not components:
        raise ValueError(f"the pretraining corpus is empty: corpora={config.corpora} yield no series "
                         f"(data_dir={config.data_dir!r})")
    total = sum(plan.weight for plan, _, _ in components)
    return tuple(CorpusComponent(plan.name, plan.weight / total, source, pool) for plan, source, pool in components)


def corpus_summary(config: PretrainDataConfig) -> list[dict]:
    """One row per source dataset: name, component, num_series, num_points, num_dropped, weight.

    `weight` is the probability that a training window comes from that dataset; `num_points` counts
    the training part of the kept series (held-out tails excluded).
    """
    rows = []
    for component in build_corpus(config):
        if component.pool is None:
            rows.append({"name": component.name, "component": component.name,
                         "num_series": config.kernelsynth_series,
                         "num_points": config.kernelsynth_series * config.kernelsynth_length,
                         "num_dropped": 0, "weight": component.weight})
            continue
        pool = component.pool
        for dataset_id, name in enumerate(pool.dataset_names):
            members = pool.dataset_index == dataset_id
            count = int(members.sum())
            rows.append({"name": name, "component": component.name, "num_series": count,
                         "num_points": int(pool.train_lengths[members].sum()),
                         "num_dropped": pool.dropped[dataset_id],
                         "weight": component.weight * count / pool.num_series})
    return rows


# --------------------------------------------------------------------------- grain pipeline
class _IndexedSource:
    """`source[i] -> (i, series)` so a window remembers which series it came from after shuffling."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray]:
        return index, self.source[index]

    def __repr__(self) -> str:
        return f"_IndexedSource({self.source!r})"


class _TrainingWindow:
    """Grain random_map: (series id, series) -> one window dict (spec §2.1 steps 2-6)."""

    def __init__(self, config: PretrainDataConfig, component_id: int):
        self.config, self.component_id = config, component_id

    def __call__(self, element: tuple[int, np.ndarray], rng: np.random.Generator) -> dict:
        series_id, series = element
        window = sample_training_window(np.asarray(series, dtype=np.float32), rng, self.config)
        return {"context": window["context"], "labels": window["labels"],
                "series_id": np.int64(series_id), "target_start": np.int64(window["target_start"]),
                "component": np.int32(self.component_id)}


class _FinalizeBatch:
    """Grain map_with_index on batches: draw F for the batch index and build the model batch."""

    def __init__(self, seed: int, buckets: tuple[int, ...], patch_size: int, include_provenance: bool):
        self.seed, self.buckets, self.patch_size = seed, buckets, patch_size
        self.include_provenance = include_provenance

    def __call__(self, batch_index: int, batch: dict) -> dict:
        num_patches = output_patches_for_batch(self.seed, batch_index, self.buckets)
        out = to_model_batch(batch["context"], batch["labels"], num_patches * self.patch_size)
        if self.include_provenance:
            out.update({key: batch[key] for key in ("series_id", "target_start", "component")})
        return out


def _ensure_absl_flags_parsed() -> None:
    """Grain worker processes read absl flags; outside an absl main (tests, notebooks) use their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_pretrain_dataset(config: PretrainDataConfig, process_index: int = 0, process_count: int = 1, *,
                          include_provenance: bool = False):
    """The infinite stage-1 training stream of this process.

    Per component: source -> shuffle(seed) -> repeat -> random_map(window) -> [process_index::process_count];
    components mixed by weight; batched to batch_size / process_count; F drawn per batch index.
    Batch k of every process comes from the same global step k, so F agrees across processes.

    Returns:
      grain.IterDataset of dicts {"context": `[b, L]` float32 NaN-missing, "context_mask": `[b, L]` bool,
      "target": `[b, F*patch_size]` float32 (0 where unobserved), "target_mask": `[b, F*patch_size]` bool},
      b = batch_size // process_count; with `include_provenance` also "series_id" / "target_start"
      `[b]` int64 and "component" `[b]` int32 (index into build_corpus(config)). Its iterator's
      get_state()/set_state() resume at exactly the next batch.
    """
    import grain

    config.validate(process_count)
    if not 0 <= _as_int(process_index, "process_index") < process_count:
        raise ValueError(f"process_index must lie in 0..{process_count - 1}, got {process_index}")
    streams, weights = [], []
    for component_id, component in enumerate(build_corpus(config)):
        stream = (grain.MapDataset.source(_IndexedSource(component.source))
                  .shuffle(seed=derive_seed(config.seed, _TAG_SHUFFLE, component.name))
                  .repeat()
                  .random_map(_TrainingWindow(config, component_id),
                              seed=derive_seed(config.seed, _TAG_WINDOW, component.name)))
        # Sharding by element index before batching makes the processes' shards disjoint.
        streams.append(stream[process_index::process_count])
        weights.append(component.weight)
    mixed = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights)
    batches = (mixed.batch(config.batch_size // process_count, drop_remainder=True)
               .map_with_index(_FinalizeBatch(config.seed, config.output_patch_buckets, config.patch_size,
                                              include_provenance)))
    dataset = batches.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                                        prefetch_buffer_size=config.prefetch_batches))
    if config.worker_count > 0:
        _ensure_absl_flags_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count))
    return dataset


# --------------------------------------------------------------------------- validation
def _allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` into integer shares proportional to `weights` (largest remainder)."""
    raw = [total * w / sum(weights) for w in weights]
    counts = [int(math.floor(r)) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _validation_windows(config: PretrainDataConfig, component: CorpusComponent, count: int,
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` fixed (context [L], labels [H]) pairs of one component, all unseen in training."""
    L, H = config.context_length, config.predict_length
    windows = []
    if component.pool is None:
        # KernelSynth indices at and beyond kernelsynth_series never reach the training stream.
        source = _kernelsynth_source(config, config.kernelsynth_series + count)
        for j in range(count):
            rng = np.random.default_rng(derive_seed(config.seed, _TAG_VALIDATION, component.name, j))
            window = sample_training_window(source[config.kernelsynth_series + j], rng, config)
            windows.append((window["context"], window["labels"]))
        return windows
    pool = component.pool
    order = np.random.default_rng(derive_seed(config.seed, _TAG_VALIDATION, component.name)).permutation(
        pool.num_series)
    for j in range(count):
        # More windows than series cycles through the series with fresh prefix masks.
        full = pool.full_series(int(order[j % pool.num_series]))
        split = full.shape[0] - H  # the held-out tail is exactly the labels
        rng = np.random.default_rng(derive_seed(config.seed, _TAG_VALIDATION, component.name, j))
        inputs, labels = normalize_window(_slice_with_nan_padding(full, split - L, L), full[split:],
                                          config.outlier_z)
        windows.append((prefix_mask(inputs, rng, config.min_context), labels))
    return windows


def make_validation_batches(config: PretrainDataConfig, num_windows: int = 1024, batch_size: int | None = None,
                            process_index: int = 0, process_count: int = 1) -> list[dict[str, np.ndarray]]:
    """Fixed held-out validation batches with all max output patches (F = predict_length // patch_size).

    Windows are split across components by weight (largest remainder) and shuffled together with a
    seed stream of their own: KernelSynth series beyond the training index range, and for real
    series the held-out last predict_length points as labels. Identical on every call.

    Returns:
      num_windows // batch_size dicts like make_pretrain_dataset's (target width predict_length),
      each holding this process's rows `[process_index * b, (process_index + 1) * b)`,
      b = batch_size // process_count.
    """
    batch_size = config.batch_size if batch_size is None else _as_int(batch_size, "batch_size")
    if _as_int(num_windows, "num_windows") < 1 or batch_size < 1 or num_windows % batch_size:
        raise ValueError(f"num_windows={num_windows} must be a positive multiple of batch_size={batch_size}")
    if _as_int(process_count, "process_count") < 1 or batch_size % process_count:
        raise ValueError(f"validation batch_size={batch_size} must be divisible by process_count={process_count}")
    if not 0 <= _as_int(process_index, "process_index") < process_count:
        raise ValueError(f"process_index must lie in 0..{process_count - 1}, got {process_index}")
    components = build_corpus(config)
    windows = []
    for component, count in zip(components, _allocate(num_windows, [c.weight for c in components])):
        windows.extend(_validation_windows(config, component, count))
    order = np.random.default_rng(derive_seed(config.seed, _TAG_VALIDATION)).permutation(num_windows)
    context = np.stack([windows[i][0] for i in order])
    labels = np.stack([windows[i][1] for i in order])
    rows = batch_size // process_count
    batches = []
    for first in range(0, num_windows, batch_size):
        lo = first + process_index * rows
        batches.append(to_model_batch(context[lo : lo + rows], labels[lo : lo + rows], config.predict_length))
    return batches
