"""The one in-memory type every dataset is turned into.

`STDataset` holds a whole multivariate series `values [T, N, C]` (T steps, N nodes/sensors/variables,
C channels) with its observed-mask, timing, calendar features, optional graph and the BasicTS split
and normalisation conventions that belong to it. Loaders in `formats.py` and `synthetic.py` build it;
windowing, pretraining pipelines, baselines and evaluation only read it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import pandas as pd

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """z-score statistics fitted on the train split only.

    `mean` and `std` broadcast against `[..., N, C]` (shape `[1, C]` for a global scaler, `[N, C]`
    for one scaler per node/variable).
    """

    mean: np.ndarray
    std: np.ndarray

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        return (x * self.std + self.mean).astype(np.float32)


def steps_per_day_for(freq: str) -> int:
    """Number of steps in one day for a pandas frequency alias (1 for daily or coarser)."""
    offset = pd.tseries.frequencies.to_offset(freq)
    try:
        step = pd.Timedelta(offset)
    except ValueError:  # calendar offsets (weekly, monthly, ...) are longer than a day
        return 1
    return max(1, int(round(pd.Timedelta("1D") / step)))


@dataclasses.dataclass(frozen=True, eq=False)
class STDataset:
    """A multivariate (spatio-)temporal dataset in memory.

    Attributes:
      name: canonical dataset name, e.g. "HZMETRO" or "HZMETRO:out".
      values: `[T, N, C]` float32; NaN where unobserved.
      mask: `[T, N, C]` bool, True where observed (always `~isnan(values)` at construction).
      freq: pandas offset alias of one step ("5min", "1h", "10min", "1D", "W", ...).
      timestamps: `[T]` datetime64[ns] of each step, or None when the source has no dates (then the
        calendar is derived from the step index starting on a Monday at midnight).
      adjacency: `[N, N]` float32 weighted adjacency, or None.
      node_ids: N node/sensor/variable names.
      channel_names: C channel names.
      split_ratios: (train, val, test) fractions of T; BasicTS takes `int(T * r)` for train and val
        and gives the rest to test.
      norm: "global" (one z-score per channel over all nodes, BasicTS traffic convention) or
        "per_node" (one per node and channel, the LTSF convention).
      null_val: the value BasicTS masks out of metrics: 0.0 for count-like sensor sets, NaN for LTSF.
      rescale: True when metrics are reported in original units, False on the normalised scale.
      domain: a short tag ("traffic", "metro", "air", "energy", "weather", "synthetic", ...).
    """

    name: str
    values: np.ndarray
    freq: str
    timestamps: np.ndarray | None = None
    adjacency: np.ndarray | None = None
    node_ids: tuple[str, ...] = ()
    channel_names: tuple[str, ...] = ("value",)
    split_ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)
    norm: Literal["global", "per_node"] = "global"
    null_val: float = 0.0
    rescale: bool = True
    domain: str = "other"
    mask: np.ndarray = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        values = np.asarray(self.values)
        if values.ndim != 3:
            raise ValueError(f"dataset {self.name}: values must be [T, N, C], got shape {values.shape}")
        if not np.issubdtype(values.dtype, np.number):
            raise ValueError(f"dataset {self.name}: values must be numeric, got dtype {values.dtype}")
        values = values.astype(np.float32, copy=False)
        t, n, c = values.shape
        if t < 2 or n < 1 or c < 1:
            raise ValueError(f"dataset {self.name}: values must have T>=2, N>=1, C>=1, got {values.shape}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "mask", ~np.isnan(values))
        if self.timestamps is not None:
            ts = np.asarray(self.timestamps).astype("datetime64[ns]")
            if ts.shape != (t,):
                raise ValueError(f"dataset {self.name}: timestamps must be [T={t}], got {ts.shape}")
            if t > 1 and not np.all(np.diff(ts) > np.timedelta64(0, "ns")):
                raise ValueError(f"dataset {self.name}: timestamps must be strictly increasing")
            object.__setattr__(self, "timestamps", ts)
        if self.adjacency is not None:
            adj = np.asarray(self.adjacency, dtype=np.float32)
            if adj.shape != (n, n):
                raise ValueError(f"dataset {self.name}: adjacency must be [N={n}, N={n}], got {adj.shape}")
            object.__setattr__(self, "adjacency", adj)
        node_ids = tuple(str(x) for x in self.node_ids) or tuple(str(i) for i in range(n))
        if len(node_ids) != n:
            raise ValueError(f"dataset {self.name}: {len(node_ids)} node_ids for N={n} nodes")
        object.__setattr__(self, "node_ids", node_ids)
        if len(self.channel_names) != c:
            raise ValueError(f"dataset {self.name}: {len(self.channel_names)} channel_names for C={c} channels")
        ratios = tuple(float(r) for r in self.split_ratios)
        if len(ratios) != 3 or min(ratios) < 0 or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
            raise ValueError(f"dataset {self.name}: split_ratios must be 3 non-negative fractions summing to 1, got {self.split_ratios}")
        object.__setattr__(self, "split_ratios", ratios)
        if self.norm not in ("global", "per_node"):
            raise ValueError(f"dataset {self.name}: norm must be 'global' or 'per_node', got {self.norm!r}")
        steps_per_day_for(self.freq)  # raises a clear pandas error on a bad alias

    # ----------------------------------------------------------------- sizes and timing
    @property
    def num_steps(self) -> int:
        return self.values.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.values.shape[1]

    @property
    def num_channels(self) -> int:
        return self.values.shape[2]

    @property
    def steps_per_day(self) -> int:
        return steps_per_day_for(self.freq)

    @property
    def time_of_day(self) -> np.ndarray:
        """`[T]` int32 slot of the day, 0..steps_per_day-1."""
        if self.timestamps is None:
            return (np.arange(self.num_steps) % self.steps_per_day).astype(np.int32)
        ts = pd.DatetimeIndex(self.timestamps)
        seconds = ts.hour * 3600 + ts.minute * 60 + ts.second
        slot = np.floor(seconds / (86400 / self.steps_per_day)).astype(np.int32)
        return np.asarray(slot) % self.steps_per_day

    @property
    def day_of_week(self) -> np.ndarray:
        """`[T]` int32 day of week, Monday = 0."""
        if self.timestamps is None:
            return ((np.arange(self.num_steps) // self.steps_per_day) % 7).astype(np.int32)
        return np.asarray(pd.DatetimeIndex(self.timestamps).day_of_week, dtype=np.int32)

    # ----------------------------------------------------------------- splits and normalisation
    def split_bounds(self) -> tuple[int, int]:
        """(train_end, val_end): train is [0, train_end), val [train_end, val_end), test [val_end, T)."""
        t = self.num_steps
        train_end = int(t * self.split_ratios[0])
        val_end = train_end + int(t * self.split_ratios[1])
        return train_end, val_end

    def split_range(self, split: str) -> tuple[int, int]:
        """[start, end) step range of one split."""
        train_end, val_end = self.split_bounds()
        ranges = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, self.num_steps)}
        if split not in ranges:
            raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
        return ranges[split]

    def normalizer(self) -> Normalizer:
        """z-score statistics from the train split only (observed values only)."""
        start, end = self.split_range("train")
        train = self.values[start:end]
        if self.norm == "global":
            flat = train.reshape(-1, self.num_channels)
            mean = np.nanmean(flat, axis=0, keepdims=True)
            std = np.nanstd(flat, axis=0, keepdims=True)
        else:
            mean = np.nanmean(train, axis=0)
            std = np.nanstd(train, axis=0)
        mean = np.nan_to_num(mean, nan=0.0).astype(np.float32)
        std = np.nan_to_num(std, nan=1.0).astype(np.float32)
        std = np.where(std < 1e-8, 1.0, std).astype(np.float32)
        return Normalizer(mean=mean, std=std)

    # ----------------------------------------------------------------- views
    def replace(self, **changes) -> "STDataset":
        """A copy with some fields changed (mask is recomputed from values)."""
        return dataclasses.replace(self, **changes)

    def select_channel(self, channel: int) -> "STDataset":
        """The dataset restricted to one channel `[T, N, 1]`."""
        if not 0 <= channel < self.num_channels:
            raise ValueError(f"dataset {self.name}: channel {channel} out of range 0..{self.num_channels - 1}")
        return self.replace(values=self.values[:, :, channel : channel + 1],
                            channel_names=(self.channel_names[channel],))

    def univariate_series(self) -> list[np.ndarray]:
        """Every (node, channel) column as a 1-D float32 array `[T]` (NaN where unobserved)."""
        flat = self.values.reshape(self.num_steps, -1)
        return [np.ascontiguousarray(flat[:, j]) for j in range(flat.shape[1])]
