"""Real series for stage-1 pretraining: the rejection rule, held-out tails and a ragged source.

`load_series_pool` reads every (node, channel) column of some datasets once (cached), keeps the
columns the spec's rejection rule accepts and holds out each one's last `predict_length` points as
validation labels; `SeriesPool.training_source()` is the random-access Grain source of the rest.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


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
def load_series_pool(datasets: tuple[tuple[str, bool], ...], data_dir: str | None, predict_length: int,
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
