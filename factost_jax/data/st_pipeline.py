"""Stage-2 data: spatio-temporal windows, few-shot subsets and continual memory replay (spec §3.4, §4.2).

A training example is one stride-1 window of the whole sensor network: inputs `[L, N]` (steps
`[t - L, t)`) and targets `[H, N]` (steps `[t, t + H)`) with the calendar of both. Only windows whose
inputs AND targets lie in the train split are ever drawn (`split_target_starts(..., "train", ...)`),
so nothing of validation or test leaks into training; validation and test are evaluated on their
full splits elsewhere (`factost_jax/eval/evaluate.py`).

Few-shot subset (spec §4.2; how the 10 % is chosen is not stated, so all three readings exist):
  "first"   the chronologically first k of the W train windows,
  "uniform" every (W / k)-th window (WPBench's every-10th-sample subset at 10 %),
  "random"  k windows drawn without replacement with the config seed,
with k = max(1, floor(few_shot_ratio * W)). `few_shot_ratio = 1` is full-shot.

Continual memory replay (CMR, spec §3.4; the exact rule is unknown, both numbers are config fields):
the selected windows, in time order, are split into a memory buffer M (the first
`memory_fraction`, default 20 %) and the current stream C (the rest). Every GLOBAL batch holds
exactly `round(replay_ratio * batch_size)` windows from M and the rest from C; M and C are each
shuffled and cycled independently (reshuffled every pass), so the small buffer is replayed far more
often than a plain shuffle would show it. `replay_ratio = 0` disables CMR: one shuffled stream over
all selected windows.

Scale: inputs and targets are z-scored with the dataset's train-only normaliser; a target counts
(`target_mask`) when it is observed and not the dataset's null value in ORIGINAL units.

Grain: `source -> shuffle(seed) -> repeat -> batch` per stream, streams zipped into global batches,
then each process keeps its rows `[p * b, (p + 1) * b)` of every global batch and gathers only
those windows. Every process therefore sees the same global batch sequence whatever the process
count, and the iterator's `get_state()` / `set_state()` resume at exactly the next batch.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from factost_jax.data.checks import as_float, as_int
from factost_jax.data.pretrain_config import derive_seed
from factost_jax.data.types import STDataset
from factost_jax.data.windows import split_target_starts, window_indices

SELECTIONS: tuple[str, ...] = ("first", "uniform", "random")
# Picked by validation on HZMETRO and LOS-LOOP: see docs/results.md, "Stage 2".
DEFAULT_SELECTION = "uniform"
SYNTHETIC = "SYNTHETIC"
# Same tolerance as factost_jax.metrics.NULL_ATOL (data/ may not import metrics; a test ties the two).
NULL_ATOL = 5e-5
# Length of the zipped global-batch streams: effectively infinite, but equal for both streams.
_STREAM_BATCHES = 2**40

_TAG_SELECT = "st_few_shot"
_TAG_MEMORY = "st_memory_shuffle"
_TAG_CURRENT = "st_current_shuffle"
_TAG_ALL = "st_shuffle"


@dataclasses.dataclass(frozen=True)
class STDataConfig:
    """Everything that decides which windows stage-2 training sees.

    Attributes:
      dataset: dataset name for `formats.load_dataset` ("HZMETRO", "los_loop", "synthetic", ...).
      data_dir: real-data directory (None: `formats.default_data_dir()`); unused for synthetic.
      input_len: L, context steps per window.
      horizon: H, forecast steps per window.
      channel: which channel of the dataset is forecast.
      few_shot_ratio: fraction of the train windows used, in (0, 1]; 1 is full-shot.
      few_shot_selection: "first", "uniform" or "random" (see the module docstring).
      memory_fraction: share of the selected windows (the chronologically first) forming the memory buffer.
      replay_ratio: share of every global batch drawn from the memory buffer; 0 disables CMR.
      batch_size: GLOBAL batch size over all processes.
      seed: the one seed the subset choice and the shuffles derive from.
      synthetic_nodes / synthetic_days: size of the synthetic network (dataset "synthetic" only).
      read_threads: in-process Grain threads building batches (0: synchronous).
      prefetch_batches: batches Grain builds ahead per process.
      id_column, timestamp_column, target, nodes, adjacency, freq, split_ratios, null_val, norm: how to
        read a user file (`dataset` ending in .csv / .parquet / .npz), see
        `user_files.FileSourceOptions`; None keeps its default. Registered datasets keep their own
        conventions, so setting any of these for one is an error.
    """

    dataset: str = "synthetic"
    data_dir: str | None = None
    input_len: int = 12
    horizon: int = 12
    channel: int = 0
    few_shot_ratio: float = 0.1
    few_shot_selection: str = DEFAULT_SELECTION
    memory_fraction: float = 0.2
    replay_ratio: float = 0.3
    batch_size: int = 32
    seed: int = 2025
    synthetic_nodes: int = 64
    synthetic_days: int = 28
    read_threads: int = 2
    prefetch_batches: int = 4
    id_column: str | None = None
    timestamp_column: str | None = None
    target: str | None = None
    nodes: str | None = None
    adjacency: str | None = None
    freq: str | None = None
    split_ratios: tuple[float, float, float] | None = None
    null_val: float | None = None
    norm: str | None = None

    def __post_init__(self):
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        self.validate()

    def validate(self, process_count: int = 1) -> STDataConfig:
        """Raises ValueError naming the first bad field; returns self."""
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ValueError(f"dataset must be a dataset name, got {self.dataset!r}")
        for name in ("input_len", "horizon", "batch_size", "synthetic_nodes", "synthetic_days"):
            if as_int(getattr(self, name), name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("channel", "seed", "read_threads", "prefetch_batches"):
            if as_int(getattr(self, name), name) < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if self.seed >= 2**32:
            raise ValueError(f"seed must be below 2**32, got {self.seed}")
        if not 0.0 < as_float(self.few_shot_ratio, "few_shot_ratio") <= 1.0:
            raise ValueError(f"few_shot_ratio must lie in (0, 1] (1 = full-shot), got {self.few_shot_ratio}")
        if self.few_shot_selection not in SELECTIONS:
            raise ValueError(f"few_shot_selection must be one of {SELECTIONS}, got {self.few_shot_selection!r}")
        if not 0.0 < as_float(self.memory_fraction, "memory_fraction") < 1.0:
            raise ValueError(f"memory_fraction must lie in (0, 1), got {self.memory_fraction}")
        if not 0.0 <= as_float(self.replay_ratio, "replay_ratio") < 1.0:
            raise ValueError(f"replay_ratio must lie in [0, 1) (0 disables memory replay), got {self.replay_ratio}")
        if self.replay_ratio > 0:
            memory_rows, _ = replay_split(self.batch_size, self.replay_ratio)
            if memory_rows == 0 or memory_rows == self.batch_size:
                raise ValueError(
                    f"replay_ratio={self.replay_ratio} x batch_size={self.batch_size} gives {memory_rows} memory rows "
                    f"per batch; choose values giving between 1 and batch_size - 1 (or replay_ratio=0 to disable replay)")
        self.file_options()  # a bad file option names itself; a registered dataset refuses them
        if as_int(process_count, "process_count") < 1:
            raise ValueError(f"process_count must be a positive integer, got {process_count}")
        if self.batch_size % process_count:
            raise ValueError(f"batch_size={self.batch_size} (global) must be divisible by the process count "
                             f"{process_count}")
        return self

    def file_options(self) -> Any:
        """The `user_files.FileSourceOptions` of a file dataset, None for a registered one."""
        from factost_jax.data import user_files

        values = {name: getattr(self, name) for name in user_files.OPTION_FIELDS}
        if not user_files.is_file_source(self.dataset):
            given = sorted(name for name, value in values.items() if value is not None)
            if given:
                raise ValueError(f"data.{given[0]} only applies to a file dataset (dataset=PATH ending in "
                                 f"{', '.join(user_files.FILE_SUFFIXES)}); {self.dataset} keeps its own conventions")
            return None
        return user_files.FileSourceOptions.from_mapping(values)

    @property
    def replay_enabled(self) -> bool:
        return self.replay_ratio > 0


# --------------------------------------------------------------------------- pure selection rules
def few_shot_count(num_windows: int, ratio: float) -> int:
    """k = max(1, floor(ratio * W)) windows of W (a tiny epsilon keeps 0.1 * 50 at 5, not 4)."""
    if num_windows < 1:
        raise ValueError(f"num_windows must be positive, got {num_windows}")
    return max(1, min(num_windows, int(math.floor(ratio * num_windows + 1e-9))))


def few_shot_indices(num_windows: int, ratio: float, selection: str, seed: int) -> np.ndarray:
    """`[k]` int64 ascending indices of the chosen windows among `num_windows` chronological ones."""
    if selection not in SELECTIONS:
        raise ValueError(f"few_shot_selection must be one of {SELECTIONS}, got {selection!r}")
    count = few_shot_count(num_windows, ratio)
    if selection == "first":
        return np.arange(count, dtype=np.int64)
    if selection == "uniform":
        # floor(i * W / k): evenly spread, exactly every 10th window when W is a multiple of 10 at 10 %.
        return (np.arange(count, dtype=np.int64) * num_windows) // count
    rng = np.random.default_rng(derive_seed(seed, _TAG_SELECT))
    return np.sort(rng.choice(num_windows, size=count, replace=False)).astype(np.int64)


def split_memory(starts: np.ndarray, memory_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(memory `[m]`, current `[k - m]`): the chronologically first `memory_fraction` of `starts [k]`.

    m = max(1, round(memory_fraction * k)); raises ValueError when nothing would be left for the
    current stream.
    """
    starts = np.sort(np.asarray(starts, dtype=np.int64))
    memory_size = max(1, int(round(memory_fraction * starts.size)))
    if memory_size >= starts.size:
        raise ValueError(
            f"the few-shot subset has only {starts.size} window(s), too few to split into a memory buffer of "
            f"{memory_size} and a current stream; raise few_shot_ratio or set replay_ratio=0")
    return starts[:memory_size], starts[memory_size:]


def replay_split(batch_size: int, replay_ratio: float) -> tuple[int, int]:
    """(rows from the memory buffer, rows from the current stream) of one global batch."""
    memory_rows = int(round(replay_ratio * batch_size))
    return memory_rows, batch_size - memory_rows


# --------------------------------------------------------------------------- dataset and windows
def load_st_dataset(config: STDataConfig) -> STDataset:
    """The configured dataset restricted to `config.channel` (`[T, N, 1]`).

    "synthetic" builds the synthetic sensor network with `synthetic_nodes` x `synthetic_days`
    (the `load_dataset("synthetic")` defaults are 64 x 28). Raises ValueError / FileNotFoundError
    for unknown names, missing files or a channel out of range.
    """
    from factost_jax.data import formats

    options = config.file_options()
    name = config.dataset if options is not None else formats.canonical_name(config.dataset)
    if options is not None:
        dataset = formats.load_dataset(name, file_options=options)
    elif name == SYNTHETIC:
        from factost_jax.data.synthetic_network import synthetic_network

        info = formats.DATASET_INFO[SYNTHETIC]
        dataset = synthetic_network(num_nodes=config.synthetic_nodes, num_days=config.synthetic_days).replace(
            split_ratios=info.split_ratios, norm=info.norm, null_val=info.null_val, rescale=info.rescale)
    else:
        dataset = formats.load_dataset(name, config.data_dir)
    if config.channel >= dataset.num_channels:
        raise ValueError(f"channel={config.channel} is out of range: dataset {dataset.name} has "
                         f"{dataset.num_channels} channel(s) {list(dataset.channel_names)}")
    return dataset.select_channel(config.channel)


def observed_mask(values: np.ndarray, null_val: float) -> np.ndarray:
    """`[...]` bool: not NaN and (for a numeric null value) not within NULL_ATOL of it (BasicTS)."""
    observed = ~np.isnan(values)
    if not math.isnan(null_val):
        observed &= ~np.isclose(values, null_val, atol=NULL_ATOL, rtol=0.0)
    return observed


@dataclasses.dataclass(frozen=True)
class TrainSubset:
    """Which train windows stage 2 uses (target starts, ascending).

    Attributes:
      all_starts: `[W]` every train window.
      selected: `[k]` the few-shot subset.
      memory: `[m]` the memory buffer M (empty when replay is disabled).
      current: `[k - m]` the current stream C (all of `selected` when replay is disabled).
    """

    all_starts: np.ndarray
    selected: np.ndarray
    memory: np.ndarray
    current: np.ndarray

    def summary(self) -> dict[str, int]:
        return {"train_windows": int(self.all_starts.size), "selected_windows": int(self.selected.size),
                "memory_windows": int(self.memory.size), "current_windows": int(self.current.size)}


def select_train_windows(dataset: STDataset, config: STDataConfig) -> TrainSubset:
    """Train windows -> few-shot subset -> (memory, current) split, all pure and deterministic."""
    all_starts = split_target_starts(dataset, "train", config.input_len, config.horizon)
    selected = all_starts[few_shot_indices(all_starts.size, config.few_shot_ratio, config.few_shot_selection,
                                           config.seed)]
    if config.replay_enabled:
        memory, current = split_memory(selected, config.memory_fraction)
    else:
        memory, current = selected[:0], selected
    return TrainSubset(all_starts, selected, memory, current)


class WindowGatherer:
    """Host batch of stage-2 windows from target starts (numpy only, picklable for Grain workers).

    `__call__(starts [b]) -> {"values": [b, L, N] float32 z-scored (NaN missing),
    "target": [b, H, N] float32 z-scored (0 where it does not count), "target_mask": [b, H, N] bool,
    "context_time_of_day" / "context_day_of_week": [b, L] int32, "future_time_of_day" /
    "future_day_of_week": [b, H] int32}` plus "target_start" `[b]` int64 with `include_provenance`.
    """

    def __init__(self, dataset: STDataset, input_len: int, horizon: int, include_provenance: bool = False):
        if dataset.num_channels != 1:
            raise ValueError(f"dataset {dataset.name}: WindowGatherer needs one channel, got {dataset.num_channels} "
                             "(use dataset.select_channel)")
        original = dataset.values[:, :, 0]
        normalizer = dataset.normalizer()
        mean, std = normalizer.mean[..., 0], normalizer.std[..., 0]
        self.scaled = ((original - mean) / std).astype(np.float32)  # [T, N], NaN stays NaN
        self.counts = observed_mask(original, float(dataset.null_val))  # [T, N], decided in original units
        self.time_of_day = dataset.time_of_day
        self.day_of_week = dataset.day_of_week
        self.input_len, self.horizon = int(input_len), int(horizon)
        self.include_provenance = include_provenance

    def __call__(self, starts: np.ndarray) -> dict[str, np.ndarray]:
        starts = np.asarray(starts, dtype=np.int64)
        context, future = window_indices(starts, self.input_len, self.horizon)
        if starts.size and (context.min() < 0 or future.max() >= self.scaled.shape[0]):
            raise ValueError(f"window starts out of range [{self.input_len}, {self.scaled.shape[0] - self.horizon}]")
        target_mask = self.counts[future]
        batch = {
            "values": self.scaled[context],
            "target": np.where(target_mask, self.scaled[future], 0.0).astype(np.float32),
            "target_mask": target_mask,
            "context_time_of_day": self.time_of_day[context].astype(np.int32),
            "context_day_of_week": self.day_of_week[context].astype(np.int32),
            "future_time_of_day": self.time_of_day[future].astype(np.int32),
            "future_day_of_week": self.day_of_week[future].astype(np.int32),
        }
        if self.include_provenance:
            batch["target_start"] = starts
        return batch


# --------------------------------------------------------------------------- grain pipeline
class _ConcatRows:
    """Zipped (memory rows, current rows) -> one global batch of target starts."""

    def __call__(self, parts: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(part, np.int64) for part in parts])


class _ProcessRows:
    """Global batch of starts -> this process's contiguous rows."""

    def __init__(self, process_index: int, process_count: int):
        self.process_index, self.process_count = process_index, process_count

    def __call__(self, starts: np.ndarray) -> np.ndarray:
        rows = starts.shape[0] // self.process_count
        return np.asarray(starts[self.process_index * rows:(self.process_index + 1) * rows], np.int64)


def _start_stream(starts: np.ndarray, seed: int, tag: str, rows: int):
    import grain

    return (grain.MapDataset.source(np.asarray(starts, np.int64))
            .shuffle(seed=derive_seed(seed, tag))
            .repeat()
            .batch(rows, drop_remainder=True)[:_STREAM_BATCHES])


def global_start_batches(subset: TrainSubset, config: STDataConfig):
    """grain.MapDataset whose element i is global batch i's `[batch_size]` int64 target starts."""
    import grain

    if not config.replay_enabled:
        return _start_stream(subset.current, config.seed, _TAG_ALL, config.batch_size)
    memory_rows, current_rows = replay_split(config.batch_size, config.replay_ratio)
    memory = _start_stream(subset.memory, config.seed, _TAG_MEMORY, memory_rows)
    current = _start_stream(subset.current, config.seed, _TAG_CURRENT, current_rows)
    return grain.experimental.ZipMapDataset([memory, current]).map(_ConcatRows())


def make_st_train_dataset(config: STDataConfig, dataset: STDataset, process_index: int = 0, process_count: int = 1,
                          *, include_provenance: bool = False):
    """The infinite stage-2 training stream of this process.

    Args:
      config: the data config (its dataset/channel fields are not re-read: `dataset` is used as given).
      dataset: one-channel `STDataset` (see `load_st_dataset`).
      process_index / process_count: this process's rows of every global batch.
      include_provenance: add "target_start" `[b]` int64 to every batch.
    Returns:
      grain.IterDataset of `WindowGatherer` dicts with b = batch_size // process_count rows; its
      iterator's get_state()/set_state() resume at exactly the next batch.
    """
    import grain

    config.validate(process_count)
    if not 0 <= as_int(process_index, "process_index") < process_count:
        raise ValueError(f"process_index must lie in 0..{process_count - 1}, got {process_index}")
    subset = select_train_windows(dataset, config)
    gather = WindowGatherer(dataset, config.input_len, config.horizon, include_provenance)
    batches = (global_start_batches(subset, config)
               .map(_ProcessRows(process_index, process_count))
               .map(gather))
    return batches.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                                     prefetch_buffer_size=config.prefetch_batches))
