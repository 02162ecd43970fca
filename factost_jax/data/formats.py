"""Readers for the real on-disk dataset formats, each turned into an `STDataset`.

`load_dataset(name, data_dir)` is the one entry point (here, with the assembly of a reader's output): it canonicalises the name, looks up the dataset's
conventions in `DATASET_INFO` (BasicTS splits, normalisation, null value, frequency) and calls the reader
for its on-disk layout (see the data README for provenance):

| format | datasets |
|---|---|
| `.npz` key `data` `(T, N, C)` + edge csv `from,to,cost|distance` | PEMS03/04/07/08 (PEMS03 maps raw station IDs through `PEMS03.txt`) |
| pandas HDFStore fixed-format `.h5` + DCRNN `adj_mx*.pkl` | METR-LA, PEMS-BAY (and HZMETRO when its `.npz` is absent) |
| `.npz` `data [T, N]` + `timestamps` + pickled `[N, N]` array | HZMETRO (inflow, or outflow as `HZMETRO:out`) |
| csv with header of sensor ids + headerless adjacency csv | LOS-LOOP |
| csv `datetime,<station>...` + `sensor_id,latitude,longitude` | AQI36 (adjacency: Gaussian kernel of the haversine distances) |
| pre-windowed `val.npz`/`test.npz` | NYCBIKE1 (the contiguous 1296-step series is rebuilt) |
| PyTorch-Geometric-Temporal json | CHICKENPOX_HU, ENGLAND_COVID, MONTEVIDEO_BUS, PEDALME_LONDON |
| LTSF csv `date,<var>...` | ETTh1/ETTh2/ETTm1/ETTm2, WEATHER, ILLNESS, ELECTRICITY |
| headerless gzip csv | EXCHANGE_RATE |
| M4 competition csv (one row per series) | M4:hourly, M4:weekly |

Choices a caller must know:
- Variables of LTSF sets and M4 series are nodes: values are `[T, N, 1]`. PEMS04/08 keep all three channels
  (flow, occupancy, speed); channel 0 (flow) is the usual BasicTS target (`ds.select_channel(0)`).
- Files with a date column are put on their complete frequency grid: exactly repeated timestamps keep their first
  row and missing steps become NaN rows. This only changes WEATHER (one duplicated row at 2020-05-12 06:00 is
  dropped and 9 missing 10-minute steps on 2020-05-29 are added): it has T = 52704, not the file's 52696 rows.
- ETT keeps its first 20 months only (ETTh* 14400 rows, ETTm* 57600) so its 6:2:2 split is 12/4/4 months.
- M4 holds the train csv only (the official test horizon stays held out): series of different lengths become
  nodes, right-padded with NaN to the longest one.
- ENGLAND_COVID has one mobility graph per day; its adjacency is the mean daily weighted graph over the train
  days only, so no information from the validation/test period reaches the graph.
- CHICKENPOX_HU, ENGLAND_COVID, PEDALME_LONDON: NaN null value (their zeros and negatives are real values: chickenpox
  and pedalme are already standardised, covid zeros are days without cases), global norm, metrics in file units.
- `load_dataset` keeps up to 16 datasets in memory keyed by (name, folder, file sizes and mtimes); the arrays it
  returns are read-only, so one caller cannot change what the next one sees.

Where the pieces live: `data/registry.py` (DATASET_INFO, canonical names), `data/data_dir.py` (the data
directory, list_datasets), `data/file_readers.py` (file formats), `data/dataset_readers.py` (one reader
per dataset). Their public names are re-exported here.
"""

from __future__ import annotations

import functools
import os
import pathlib

import numpy as np
import pandas as pd

from factost_jax.data.data_dir import default_data_dir, find_folder, list_datasets, resolve_data_dir
from factost_jax.data.dataset_readers import READERS, Series
from factost_jax.data.file_readers import (read_dcrnn_adjacency, read_id_list, read_pandas_h5, read_pems_graph,
                                           read_pems_npz)
from factost_jax.data.registry import (DATASET_INFO, EVALUATION_DATASETS, DatasetInfo, PathLike, canonical_name)
from factost_jax.data.types import STDataset

__all__ = ["DATASET_INFO", "EVALUATION_DATASETS", "DatasetInfo", "canonical_name", "clear_cache", "default_data_dir",
           "list_datasets", "load_dataset", "read_dcrnn_adjacency", "read_id_list", "read_pandas_h5",
           "read_pems_graph", "read_pems_npz"]


def _regularize(values: np.ndarray, timestamps: np.ndarray, freq: str, path: pathlib.Path
                ) -> tuple[np.ndarray, np.ndarray]:
    """Rows on the complete `freq` grid: repeated timestamps keep their first row, missing steps become NaN.

    values `[T, ...]`, timestamps `[T]` -> values `[T', ...]` float32, timestamps `[T']` datetime64[ns].
    """
    timestamps = np.asarray(timestamps, dtype="datetime64[ns]")
    if np.isnat(timestamps).any():
        raise ValueError(f"{path}: empty or invalid timestamps")
    steps = np.diff(timestamps)
    if np.any(steps < np.timedelta64(0, "ns")):
        raise ValueError(f"{path}: timestamps are not in increasing order")
    keep = np.concatenate([[True], steps > np.timedelta64(0, "ns")])
    values, timestamps = np.asarray(values, dtype=np.float32)[keep], timestamps[keep]
    step_ns = pd.Timedelta(pd.tseries.frequencies.to_offset(freq)).value
    offsets = (timestamps - timestamps[0]).astype(np.int64)
    if np.any(offsets % step_ns):
        raise ValueError(f"{path}: timestamps are not on a regular {freq} grid")
    position = offsets // step_ns
    num_steps = int(position[-1]) + 1
    if num_steps == len(timestamps):
        return values, timestamps
    if num_steps > 2 * len(timestamps):
        raise ValueError(f"{path}: over half of the {freq} steps between the first and last timestamp are "
                         f"missing ({len(timestamps)} of {num_steps}); expected a {freq} series")
    filled = np.full((num_steps,) + values.shape[1:], np.nan, np.float32)
    filled[position] = values
    grid = timestamps[0] + np.arange(num_steps, dtype=np.int64) * np.timedelta64(step_ns, "ns")
    return filled, grid


def _assemble(info: DatasetInfo, series: Series) -> STDataset:
    """Apply the dataset's conventions (calendar, truncation, split, norm, null) to what its reader found."""
    values, timestamps = series.values, series.timestamps
    if values.ndim != 3 or values.shape[0] < 2 or 0 in values.shape:
        raise ValueError(f"{series.source}: expected at least 2 steps of a [T, N, C] series, got shape {values.shape}")
    if timestamps is not None:
        values, timestamps = _regularize(values, timestamps, info.freq, series.source)
    elif info.start is not None:
        timestamps = pd.date_range(info.start, periods=values.shape[0], freq=info.freq).values
    if info.max_steps is not None:
        values = values[: info.max_steps]
        timestamps = None if timestamps is None else timestamps[: info.max_steps]
    return STDataset(
        name=info.name, values=values, freq=info.freq, timestamps=timestamps, adjacency=series.adjacency,
        node_ids=series.node_ids, channel_names=series.channel_names, split_ratios=info.split_ratios,
        norm=info.norm, null_val=info.null_val, rescale=info.rescale, domain=info.domain)


def _freeze(dataset: STDataset) -> STDataset:
    """Make the shared (cached) arrays read-only so no caller can change what the next one loads."""
    for array in (dataset.values, dataset.mask, dataset.timestamps, dataset.adjacency):
        if array is not None:
            array.flags.writeable = False
    return dataset


def _folder_signature(folder: pathlib.Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of every file in the folder: a changed file means a fresh load, not a stale cache."""
    entries = []
    for entry in os.scandir(folder):
        if entry.is_file():
            stat = entry.stat()
            entries.append((entry.name, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, folder: str | None, signature: tuple) -> STDataset:
    del signature  # part of the cache key only
    info = DATASET_INFO[name]
    if folder is None:
        from factost_jax.data.synthetic_network import synthetic_network

        dataset = synthetic_network().replace(
            name=info.name, split_ratios=info.split_ratios, norm=info.norm, null_val=info.null_val,
            rescale=info.rescale, domain=info.domain)
    else:
        dataset = _assemble(info, READERS[name](pathlib.Path(folder), info))
    return _freeze(dataset)


def clear_cache() -> None:
    """Forget the datasets `load_dataset` keeps in memory."""
    _load_cached.cache_clear()


def load_dataset(name: str, data_dir: PathLike | None = None, file_options=None) -> STDataset:
    """Load one dataset by name from `data_dir` (default `default_data_dir()`) with its conventions applied.

    A `name` ending in .csv / .parquet / .npz is a user's own file, read by `data/user_files.py` with
    `file_options` (a `FileSourceOptions` or mapping; `data_dir` is not used for it).

    Returns an `STDataset` whose arrays are read-only (copy before changing them).
    Raises ValueError for an unknown name or a malformed file, FileNotFoundError for a missing folder/file.
    """
    from factost_jax.data import user_files

    if user_files.is_file_source(name):
        return user_files.load_file_dataset(name, file_options)
    name = canonical_name(name)
    info = DATASET_INFO[name]
    if info.folder is None:
        return _load_cached(name, None, ())
    root = resolve_data_dir(data_dir)
    folder = find_folder(root, info.folder)
    if folder is None:
        raise FileNotFoundError(f"{root / info.folder} not found: dataset {name} expects its files "
                                f"({', '.join(info.files)}) there")
    return _load_cached(name, str(folder.resolve()), _folder_signature(folder))


__all__ = [
    "DATASET_INFO", "DatasetInfo", "EVALUATION_DATASETS", "canonical_name", "clear_cache", "default_data_dir",
    "list_datasets", "load_dataset", "read_dcrnn_adjacency", "read_id_list", "read_pandas_h5", "read_pems_graph",
    "read_pems_npz",
]
