"""What stage-1 pretraining windows are made of: `PretrainDataConfig` and the seed streams.

The data floor's pretraining modules build on this one: `series_pool.py` (real series),
`corpus.py` (which components, with which weights), `pretrain_windows.py` (the per-sample spec
transform and the per-batch context / output-length draws) and `pipeline.py` (Grain).
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib

import numpy as np

from factost_jax.data.checks import as_float, as_int

KERNELSYNTH = "kernelsynth"
SEASONAL = "seasonal"
REAL = "real"
SYNTHETIC_COMPONENTS = (KERNELSYNTH, SEASONAL)
# The synthetic sensor network is a stage-2 stand-in, never part of the "real" pool.
NOT_REAL = ("SYNTHETIC",)
MAX_WINDOW_ATTEMPTS = 8
MIN_STD = 1e-3
# Context lengths users give (steps): the standard protocols (12, 24, 96, 336, 512) and a day or a
# week at the common samplings (24/96/144/288 steps a day; 168/672/2016 a week).
USER_CONTEXT_LENGTHS = (8, 12, 24, 48, 96, 144, 168, 288, 336, 512, 672, 1024, 2016)

# Tags that separate the random streams derived from the one config seed.
TAG_SHUFFLE = "shuffle"
TAG_WINDOW = "window"
TAG_OUTPUT_PATCHES = "output_patches"
TAG_CONTEXT_WIDTH = "context_width"
TAG_VALIDATION = "validation"
TAG_KERNELSYNTH = "kernelsynth_series"
TAG_SEASONAL = "seasonal_series"


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
      context_buckets: context widths W (steps, each <= context_length) a batch is cut to, one drawn
        per global batch, so a batch costs what its contexts need (one program per (W, F) pair);
        () keeps every batch at context_length (the spec).
      context_bucket_weights: probabilities of `context_buckets` (normalised; () = uniform).
      user_context_share: with context buckets, the share of windows whose visible context is a
        length users give (`USER_CONTEXT_LENGTHS` that fit the batch's width) instead of uniform.
      batch_size: GLOBAL batch size over all processes.
      corpora: (name, weight) pairs; name is "kernelsynth", "seasonal", "real" or a dataset name.
      exclude: dataset names never used by "real" (default: formats.EVALUATION_DATASETS); naming one
        explicitly in `corpora` is an error unless `allow_overlap`.
      allow_overlap: allow explicitly named excluded datasets (their train split only).
      kernelsynth_series: number of distinct KernelSynth training series.
      kernelsynth_length: length of each KernelSynth series.
      kernelsynth_max_kernels: most GP kernels combined per KernelSynth series.
      seasonal_series: number of distinct seasonal synthetic training series (corpus "seasonal").
      seasonal_length: length of each seasonal synthetic series.
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
    context_buckets: tuple[int, ...] = ()
    context_bucket_weights: tuple[float, ...] = ()
    user_context_share: float = 0.0
    batch_size: int = 512
    corpora: tuple[tuple[str, float], ...] = ((KERNELSYNTH, 0.5), (REAL, 0.5))
    exclude: tuple[str, ...] = dataclasses.field(default_factory=_default_exclusions)
    allow_overlap: bool = False
    kernelsynth_series: int = 1_000_000
    kernelsynth_length: int = 1024
    kernelsynth_max_kernels: int = 5
    seasonal_series: int = 1_000_000
    seasonal_length: int = 4096
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
        for name in ("output_patch_buckets", "context_buckets"):
            try:
                values = tuple(as_int(b, name) for b in getattr(self, name))
            except TypeError:
                raise ValueError(f"{name} must be a sequence of ints, got {getattr(self, name)!r}") from None
            object.__setattr__(self, name, values)
        try:
            weights = tuple(as_float(w, "context_bucket_weights") for w in self.context_bucket_weights)
        except TypeError:
            raise ValueError("context_bucket_weights must be a sequence of numbers, got "
                             f"{self.context_bucket_weights!r}") from None
        object.__setattr__(self, "context_bucket_weights", weights)
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
                     "kernelsynth_length", "kernelsynth_max_kernels", "seasonal_length"):
            if as_int(getattr(self, name), name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("kernelsynth_series", "seasonal_series", "worker_count", "read_threads", "prefetch_batches", "seed"):
            if as_int(getattr(self, name), name) < 0:
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
        self._validate_context_buckets()
        if not math.isfinite(self.outlier_z) or self.outlier_z <= 0:
            raise ValueError(f"outlier_z must be a positive number, got {self.outlier_z}")
        if not 0.0 <= self.min_observed_frac <= 1.0:
            raise ValueError(f"min_observed_frac must lie in [0, 1], got {self.min_observed_frac}")
        self._validate_corpora()
        if as_int(process_count, "process_count") < 1:
            raise ValueError(f"process_count must be a positive integer, got {process_count}")
        if self.batch_size % process_count:
            raise ValueError(f"batch_size={self.batch_size} (global) must be divisible by the process count "
                             f"{process_count}")
        return self

    @property
    def context_widths(self) -> tuple[int, ...]:
        """The context widths batches take: the buckets, or (context_length,) without them."""
        return self.context_buckets or (self.context_length,)

    @property
    def context_width_probabilities(self) -> tuple[float, ...]:
        widths = self.context_widths
        weights = self.context_bucket_weights or (1.0,) * len(widths)
        return tuple(w / sum(weights) for w in weights)

    def _validate_context_buckets(self) -> None:
        buckets, weights = self.context_buckets, self.context_bucket_weights
        if len(set(buckets)) != len(buckets):
            raise ValueError(f"context_buckets must be distinct, got {buckets}")
        for width in buckets:
            if width % self.patch_size or not self.min_context < width <= self.context_length:
                raise ValueError(f"context_buckets: {width} must be a multiple of patch_size={self.patch_size} in "
                                 f"(min_context={self.min_context}, context_length={self.context_length}]")
        if weights and len(weights) != len(buckets):
            raise ValueError(f"context_bucket_weights {weights} must give one weight per context bucket {buckets}")
        if any(w <= 0 for w in weights):
            raise ValueError(f"context_bucket_weights must be positive, got {weights}")
        if not 0.0 <= as_float(self.user_context_share, "user_context_share") <= 1.0:
            raise ValueError(f"user_context_share must lie in [0, 1], got {self.user_context_share}")
        if self.user_context_share and not buckets:
            raise ValueError("user_context_share needs context_buckets (it shapes the per-batch context draw)")

    def _validate_corpora(self) -> None:
        if not self.corpora:
            raise ValueError("corpora must name at least one (name, weight) pair")
        for name, weight in self.corpora:
            if not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"corpora: weight of {name!r} must be a positive number, got {weight}")
        lowered = [name.lower() for name, _ in self.corpora]
        for synthetic in (KERNELSYNTH, SEASONAL):
            if synthetic not in lowered:
                continue
            if getattr(self, f"{synthetic}_series") < 1:
                raise ValueError(f"{synthetic}_series must be at least 1 when corpora includes {synthetic!r}")
            if getattr(self, f"{synthetic}_length") - 1 < self.min_series_last_index:
                raise ValueError(
                    f"{synthetic}_length={getattr(self, f'{synthetic}_length')} is too short: every series would be "
                    f"rejected (last index must reach min_context + predict_length + 2 = {self.min_series_last_index})")
        if any(name not in SYNTHETIC_COMPONENTS + (REAL,) for name in lowered) or self.exclude:
            from factost_jax.data.corpus import plan_corpus  # lazy: corpus.py imports this module

            plan_corpus(self)  # canonicalises names, rejects duplicates and evaluation-set overlap


def derive_seed(seed: int, *parts: str | int) -> int:
    """A uint32 seed for one named random stream of the config seed (stable across runs)."""
    words = [int(seed)] + [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0])
