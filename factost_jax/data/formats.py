"""Readers for the real on-disk dataset formats, each turned into an `STDataset`.

`load_dataset(name, data_dir)` is the one entry point: it canonicalises the name, looks up the dataset's
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
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import pickle
import zipfile
from typing import Callable, NamedTuple

import h5py
import numpy as np
import pandas as pd

from factost_jax.data.types import STDataset

PathLike = str | os.PathLike

_SENSOR_SPLIT = (0.6, 0.2, 0.2)
_LTSF_SPLIT = (0.7, 0.1, 0.2)
_NAN = float("nan")

# NYCBIKE1's README gives the last hour of the rebuilt series (its windows end with Sep 2014).
_NYCBIKE1_LAST_STEP = "2014-09-30 23:00"
_EARTH_RADIUS_KM = 6371.0088


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """The conventions of one dataset (BasicTS where BasicTS has one).

    Attributes:
      name: canonical name, e.g. "PEMS08", "HZMETRO:out", "M4:hourly".
      folder: sub-folder of the data directory, or None for SYNTHETIC (generated, no files).
      domain: short tag ("traffic", "metro", "air", "energy", ...).
      split_ratios: (train, val, test) fractions.
      norm: "global" or "per_node".
      null_val: the value metrics mask out (0.0 for count-like sensor sets, NaN otherwise).
      rescale: True when metrics are reported in original units.
      freq: pandas offset alias of one step.
      is_evaluation: True for evaluation sets and their twins (kept out of pretraining by default).
      files: the files the loader needs, relative to `folder`; "a|b" means either a or b.
      start: first timestamp when the files carry none but the source documents it.
      max_steps: keep only the first `max_steps` steps (ETT: its first 20 months).
    """

    name: str
    folder: str | None
    domain: str
    split_ratios: tuple[float, float, float]
    norm: str
    null_val: float
    rescale: bool
    freq: str
    is_evaluation: bool
    files: tuple[str, ...] = ()
    start: str | None = None
    max_steps: int | None = None


def _sensor(name, folder, domain, freq, files, *, evaluation, split=_SENSOR_SPLIT, null_val=0.0, start=None):
    return DatasetInfo(name=name, folder=folder, domain=domain, split_ratios=split, norm="global",
                       null_val=null_val, rescale=True, freq=freq, is_evaluation=evaluation,
                       files=tuple(files), start=start)


def _ltsf(name, folder, domain, freq, files, *, evaluation, split=_LTSF_SPLIT, max_steps=None):
    return DatasetInfo(name=name, folder=folder, domain=domain, split_ratios=split, norm="per_node",
                       null_val=_NAN, rescale=False, freq=freq, is_evaluation=evaluation,
                       files=tuple(files), max_steps=max_steps)


_PEMS_STARTS = {"PEMS03": "2018-09-01", "PEMS04": "2018-01-01", "PEMS07": "2017-05-01", "PEMS08": "2016-07-01"}

_INFOS: list[DatasetInfo] = [
    *(
        _sensor(stem, stem, "traffic", "5min",
                (f"{stem}.npz", f"{stem}.csv") + ((f"{stem}.txt",) if stem == "PEMS03" else ()),
                evaluation=True, start=start)
        for stem, start in _PEMS_STARTS.items()
    ),
    _sensor("METR-LA", "METR-LA", "traffic", "5min", ("metr-la.h5", "adj_mx.pkl"), evaluation=True,
            split=_LTSF_SPLIT, start="2012-03-01"),
    _sensor("PEMS-BAY", "PEMS-BAY", "traffic", "5min", ("pems-bay.h5", "adj_mx_bay.pkl"), evaluation=True,
            split=_LTSF_SPLIT, start="2017-01-01"),
    _sensor("LOS-LOOP", "LOS-LOOP", "traffic", "5min", ("los_speed.csv", "los_adj.csv"), evaluation=True,
            start="2012-03-01 00:00"),
    _sensor("HZMETRO", "HZMETRO", "metro", "5min", ("HZME_INFLOW.npz|HZME_INFLOW.h5", "HZME_adj_mx.pkl"),
            evaluation=True),
    _sensor("HZMETRO:out", "HZMETRO", "metro", "5min", ("HZME_OUTFLOW.npz|HZME_OUTFLOW.h5", "HZME_adj_mx.pkl"),
            evaluation=True),
    _sensor("AQI36", "AQI36", "air", "1h", ("pm25_ground.txt", "pm25_latlng.txt"), evaluation=True, null_val=_NAN),
    _sensor("NYCBIKE1", "NYCBIKE1", "bike", "1h", ("val.npz", "test.npz", "adj_mx.npz"), evaluation=False),
    _sensor("MONTEVIDEO_BUS", "MONTEVIDEO_BUS", "bus", "1h", ("montevideo_bus.json",), evaluation=False,
            start="2020-10-01 00:00"),
    _sensor("CHICKENPOX_HU", "CHICKENPOX_HU", "epidemiology", "7D", ("chickenpox.json",), evaluation=False,
            null_val=_NAN, start="2005-01-03"),
    _sensor("ENGLAND_COVID", "ENGLAND_COVID", "epidemiology", "1D", ("england_covid.json",), evaluation=False,
            null_val=_NAN),
    _sensor("PEDALME_LONDON", "PEDALME_LONDON", "delivery", "7D", ("pedalme_london.json",), evaluation=False,
            null_val=_NAN),
    _ltsf("ETTh1", "ETT", "energy", "1h", ("ETTh1.csv",), evaluation=False, split=_SENSOR_SPLIT,
          max_steps=20 * 30 * 24),
    _ltsf("ETTh2", "ETT", "energy", "1h", ("ETTh2.csv",), evaluation=True, split=_SENSOR_SPLIT,
          max_steps=20 * 30 * 24),
    _ltsf("ETTm1", "ETT", "energy", "15min", ("ETTm1.csv",), evaluation=False, split=_SENSOR_SPLIT,
          max_steps=20 * 30 * 24 * 4),
    _ltsf("ETTm2", "ETT", "energy", "15min", ("ETTm2.csv",), evaluation=True, split=_SENSOR_SPLIT,
          max_steps=20 * 30 * 24 * 4),
    _ltsf("WEATHER", "WEATHER", "weather", "10min", ("weather.csv",), evaluation=True),
    _ltsf("EXCHANGE_RATE", "EXCHANGE_RATE", "finance", "1D", ("exchange_rate.txt.gz",), evaluation=False),
    _ltsf("ILLNESS", "ILLNESS", "epidemiology", "7D", ("national_illness.csv",), evaluation=False),
    _ltsf("ELECTRICITY", "ELECTRICITY", "energy", "1h", ("electricity.csv",), evaluation=True),
    _ltsf("M4:hourly", "M4", "mixed", "1h", ("Hourly-train.csv",), evaluation=False),
    _ltsf("M4:weekly", "M4", "mixed", "7D", ("Weekly-train.csv",), evaluation=False),
    _sensor("SYNTHETIC", None, "synthetic", "5min", (), evaluation=False),
]

DATASET_INFO: dict[str, DatasetInfo] = {info.name: info for info in _INFOS}

EVALUATION_DATASETS: tuple[str, ...] = tuple(info.name for info in _INFOS if info.is_evaluation)

# Variant spellings of the datasets that have variants; "" is the default.
_VARIANTS: dict[str, dict[str, str]] = {
    "HZMETRO": {"": "HZMETRO", "in": "HZMETRO", "inflow": "HZMETRO", "out": "HZMETRO:out", "outflow": "HZMETRO:out"},
    "M4": {"": "M4:hourly", "hourly": "M4:hourly", "h": "M4:hourly", "weekly": "M4:weekly", "w": "M4:weekly"},
}
# Other common names of the same datasets.
_ALIASES = {"ECL": "ELECTRICITY", "ILI": "ILLNESS", "AQI-36": "AQI36", "EXCHANGE": "EXCHANGE_RATE"}


def _name_key(base: str) -> str:
    """Case and '-'/'_'/space separators do not matter ("pems_08" == "PEMS08"); no two datasets collide."""
    return "".join(ch for ch in base.upper() if ch not in "-_ ")


_BASE_NAMES: dict[str, str] = {_name_key(n.partition(":")[0]): n.partition(":")[0] for n in DATASET_INFO}
_BASE_NAMES.update({_name_key(alias): target for alias, target in _ALIASES.items()})


def canonical_name(name: str) -> str:
    """The canonical dataset name for a user spelling: case and separators ignored, optional ':variant'.

    "etth1" -> "ETTh1", "los_loop" -> "LOS-LOOP", "HZMETRO:OUT" -> "HZMETRO:out", "m4" -> "M4:hourly".
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    base, _, variant = name.partition(":")
    base_name = _BASE_NAMES.get(_name_key(base))
    if base_name is None:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASET_INFO)}")
    variant = variant.strip().lower()
    if base_name in _VARIANTS:
        table = _VARIANTS[base_name]
        if variant not in table:
            choices = ", ".join(sorted(v for v in table if v))
            raise ValueError(f"unknown variant {variant!r} of dataset {base_name}: expected one of {choices}")
        return table[variant]
    if variant:
        raise ValueError(f"dataset {base_name} has no variants, got {name!r}")
    return base_name


# ------------------------------------------------------------------------------------------------ data dir


def default_data_dir() -> pathlib.Path:
    """`$FACTOST_DATA_DIR`, else `../shared/data` from the working directory if it exists, else next to the repo."""
    env = os.environ.get("FACTOST_DATA_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    from_cwd = pathlib.Path.cwd() / ".." / "shared" / "data"
    if from_cwd.is_dir():
        return from_cwd.resolve()
    repo_root = pathlib.Path(__file__).resolve().parents[2]
    return (repo_root / ".." / "shared" / "data").resolve()


def _resolve_data_dir(data_dir: PathLike | None) -> pathlib.Path:
    root = default_data_dir() if data_dir is None else pathlib.Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} not found (pass data_dir or set FACTOST_DATA_DIR)")
    return root


def _find_folder(root: pathlib.Path, folder: str) -> pathlib.Path | None:
    """`root/folder`, also matching a folder whose name differs only in case or '-'/'_'."""
    exact = root / folder
    if exact.is_dir():
        return exact
    key = _name_key(folder)
    for child in sorted(root.iterdir()):
        if child.is_dir() and _name_key(child.name) == key:
            return child
    return None


def _files_present(folder: pathlib.Path, info: DatasetInfo) -> bool:
    return all(any((folder / alt).is_file() for alt in spec.split("|")) for spec in info.files)


def list_datasets(data_dir: PathLike | None = None) -> list[str]:
    """Canonical names (in `DATASET_INFO` order) of the datasets whose files are all present in `data_dir`.

    SYNTHETIC needs no files and is never listed (it is always loadable); a missing data directory gives [].
    """
    root = default_data_dir() if data_dir is None else pathlib.Path(data_dir).expanduser()
    if not root.is_dir():
        return []
    names = []
    for info in _INFOS:
        if info.folder is None:
            continue
        folder = _find_folder(root, info.folder)
        if folder is not None and _files_present(folder, info):
            names.append(info.name)
    return names


# ------------------------------------------------------------------------------------------------ file helpers


def _require(path: PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return path


def _load_npz(path: pathlib.Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays under `keys` of an `.npz` file (no pickled objects)."""
    _require(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise ValueError(f"missing key(s) {missing}; it has {archive.files}")
            return {k: archive[k] for k in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path}: expected an .npz archive with key(s) {list(keys)} ({err})") from None


def _read_csv(path: pathlib.Path, what: str, **kwargs) -> pd.DataFrame:
    """`pd.read_csv` with a one-line error naming the file and its expected layout."""
    _require(path)
    try:
        frame = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: file is empty; expected {what}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot parse ({err}); expected {what}") from None
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"{path}: file has no data rows; expected {what}")
    return frame


def _numeric(frame: pd.DataFrame | np.ndarray, path: pathlib.Path, what: str) -> np.ndarray:
    """The table as float64, or a ValueError naming the file when a cell is not a number."""
    try:
        return np.asarray(frame, dtype=np.float64)
    except (ValueError, TypeError):
        raise ValueError(f"{path}: non-numeric values; expected {what}") from None


def _read_json(path: pathlib.Path, what: str) -> dict:
    _require(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        if not text.strip():
            raise ValueError("file is empty")
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid json ({err}); expected {what}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a json object with {what}")
    return document


def _json_field(document: dict, key: str, path: pathlib.Path, what: str):
    if key not in document:
        raise ValueError(f"{path}: missing key {key!r}; expected {what}")
    return document[key]


def _matrix(rows, path: pathlib.Path, what: str) -> np.ndarray:
    """A json list of equal-length numeric rows as a 2-D float64 array."""
    try:
        array = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError):
        raise ValueError(f"{path}: expected {what} (equal-length numeric rows)") from None
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{path}: expected {what}, got shape {array.shape}")
    return array


def _as_str(item) -> str:
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def _decode_ids(array: np.ndarray) -> tuple[str, ...] | None:
    """Column ids of an h5/npz index array; None when they are stored in a form we do not read."""
    array = np.asarray(array)
    if array.ndim != 1:
        return None
    if array.dtype.kind in "SU":
        return tuple(_as_str(x) for x in array)
    if array.dtype.kind in "iu":
        return tuple(str(int(x)) for x in array)
    if array.dtype.kind == "O" and all(isinstance(x, (str, bytes)) for x in array):
        return tuple(_as_str(x) for x in array)
    # pandas pickles object-dtype indexes (a PyTables ObjectAtom); positions are used instead.
    return None


def _square(adjacency: np.ndarray, path: pathlib.Path, num_nodes: int | None = None) -> np.ndarray:
    adjacency = np.asarray(adjacency)
    if adjacency.ndim != 2 or adjacency.shape[0] != adjacency.shape[1] or not np.issubdtype(adjacency.dtype, np.number):
        raise ValueError(f"{path}: expected a numeric [N, N] adjacency, got shape {adjacency.shape} "
                         f"dtype {adjacency.dtype}")
    if num_nodes is not None and adjacency.shape[0] != num_nodes:
        raise ValueError(f"{path}: adjacency is {adjacency.shape} but the series has N={num_nodes} nodes")
    return adjacency.astype(np.float32)


# ------------------------------------------------------------------------------------------------ public readers


def read_pems_npz(path: PathLike) -> np.ndarray:
    """PEMS0X series: `.npz` key `data` `(T, N, C)` -> `[T, N, C]` float32."""
    path = pathlib.Path(path)
    data = _load_npz(path, ("data",))["data"]
    if data.ndim != 3 or not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"{path}: expected a numeric (T, N, C) array under key 'data', "
                         f"got shape {data.shape} dtype {data.dtype}")
    return data.astype(np.float32)


def read_id_list(path: PathLike) -> tuple[str, ...]:
    """One id per line (PEMS03.txt)."""
    path = _require(path)
    with open(path, encoding="utf-8") as handle:
        ids = tuple(line.strip() for line in handle if line.strip())
    if not ids:
        raise ValueError(f"{path}: file is empty; expected one station id per line")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: repeated station ids; expected one distinct id per line")
    return ids


def read_pems_graph(path: PathLike, num_nodes: int, node_ids: tuple[str, ...] | None = None) -> np.ndarray:
    """Edge csv `from,to,cost|distance` -> binary symmetric `[N, N]` float32 (no self loops added).

    With `node_ids` the endpoints are raw station ids mapped to their position in `node_ids` (PEMS03);
    otherwise they are already node indices 0..N-1.
    """
    path = pathlib.Path(path)
    what = "a header 'from,to,cost' (or 'from,to,distance') and one edge per row"
    edges = _read_csv(path, what)
    if not {"from", "to"} <= set(edges.columns):
        raise ValueError(f"{path}: columns {list(edges.columns)}; expected {what}")
    if node_ids is not None:
        if len(node_ids) != num_nodes:
            raise ValueError(f"{path}: {len(node_ids)} station ids for a series of N={num_nodes} nodes")
        position = {node_id: i for i, node_id in enumerate(node_ids)}
        try:
            sources = np.array([position[_integral_str(v)] for v in edges["from"]])
            targets = np.array([position[_integral_str(v)] for v in edges["to"]])
        except KeyError as err:
            raise ValueError(f"{path}: station id {err.args[0]} is not in the station id list") from None
    else:
        endpoints = _numeric(edges[["from", "to"]], path, what)
        if np.any(endpoints != np.round(endpoints)):
            raise ValueError(f"{path}: non-integer node indices; expected {what}")
        sources, targets = endpoints.astype(np.int64).T
        bad = (endpoints < 0) | (endpoints >= num_nodes)
        if bad.any():
            raise ValueError(f"{path}: node index {int(endpoints[bad][0])} out of range for N={num_nodes} nodes")
    adjacency = np.zeros((num_nodes, num_nodes), np.float32)
    adjacency[sources, targets] = 1.0
    adjacency[targets, sources] = 1.0
    return adjacency


def _integral_str(value) -> str:
    """'317842' for 317842, 317842.0 or '317842' (pandas may read id columns as float)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def read_pandas_h5(path: PathLike, key: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]:
    """A pandas HDFStore fixed-format frame read with h5py (no PyTables needed).

    Layout: `<key>/axis0` column ids, `<key>/axis1` index (int64 ns for a DatetimeIndex), `<key>/block0_values`
    the values stored as `[T, N]` (pandas writes the block transposed).

    Returns:
      values `[T, N]` float32, timestamps `[T]` datetime64[ns] (None when the index is not a datetime index),
      column ids (None when pandas pickled them).
    """
    path = _require(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({err})") from None
    with handle:
        groups = [k for k in handle.keys() if isinstance(handle[k], h5py.Group)]
        if key is None:
            key = "df" if "df" in groups else (groups[0] if len(groups) == 1 else None)
        if key is None or key not in groups:
            raise ValueError(f"{path}: expected a pandas fixed-format frame under key 'df', found groups {groups}")
        group = handle[key]
        missing = [k for k in ("axis0", "axis1", "block0_values") if k not in group]
        if missing:
            raise ValueError(f"{path}: frame {key!r} lacks {missing}; expected axis0, axis1, block0_values")
        num_blocks = int(group.attrs.get("nblocks", 1))
        if num_blocks != 1:
            raise ValueError(f"{path}: frame {key!r} has {num_blocks} value blocks (mixed column dtypes); "
                             "expected a single numeric block")
        raw = group["block0_values"][()]
        index = group["axis1"][()]
        # pandas < 3 writes kind "datetime64" (ns); pandas >= 3 names the unit, "datetime64[us]".
        index_kind = _as_str(group["axis1"].attrs.get("kind", b"datetime64"))
        columns = _decode_ids(group["axis0"][()])
    if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.number):
        raise ValueError(f"{path}: expected numeric 2-D block0_values [T, N], got shape {raw.shape} dtype {raw.dtype}")
    num_steps = len(index)
    if raw.shape[0] == num_steps:
        values = raw
    elif raw.shape[1] == num_steps:
        values = raw.T
    else:
        raise ValueError(f"{path}: block0_values {raw.shape} does not match the {num_steps}-step index axis1")
    if columns is not None and len(columns) != values.shape[1]:
        raise ValueError(f"{path}: {len(columns)} column ids in axis0 for {values.shape[1]} columns of values")
    timestamps = None
    if index_kind.startswith("datetime64") and np.issubdtype(np.asarray(index).dtype, np.integer):
        unit = index_kind[len("datetime64"):].strip("[]") or "ns"
        try:
            timestamps = np.asarray(index, dtype=np.int64).view(f"datetime64[{unit}]").astype("datetime64[ns]")
        except TypeError:
            raise ValueError(f"{path}: index axis1 has unknown datetime kind {index_kind!r}") from None
    return values.astype(np.float32), timestamps, columns


def read_dcrnn_adjacency(path: PathLike) -> tuple[tuple[str, ...] | None, np.ndarray]:
    """DCRNN `adj_mx*.pkl` (python-2 pickle `[sensor_ids, sensor_id_to_ind, adj_mx]`) or a pickled `[N, N]` array.

    Returns (sensor ids or None, `[N, N]` float32 adjacency as stored).
    """
    path = _require(path)
    try:
        with open(path, "rb") as handle:
            stored = pickle.load(handle, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise ValueError(f"{path}: not a readable pickle ({err}); expected [sensor_ids, sensor_id_to_ind, adj_mx]") \
            from None
    if isinstance(stored, (list, tuple)) and len(stored) == 3:
        sensor_ids = tuple(_as_str(s) for s in stored[0])
        adjacency = _square(stored[2], path)
        if len(sensor_ids) != adjacency.shape[0]:
            raise ValueError(f"{path}: {len(sensor_ids)} sensor ids for a {adjacency.shape} adjacency")
        return sensor_ids, adjacency
    if isinstance(stored, np.ndarray):
        return None, _square(stored, path)
    raise ValueError(f"{path}: expected [sensor_ids, sensor_id_to_ind, adj_mx] or an [N, N] array, "
                     f"got {type(stored).__name__}")


# ------------------------------------------------------------------------------------------------ per-dataset readers


class _Series(NamedTuple):
    """What a reader extracts from the files, before the dataset conventions are applied."""

    values: np.ndarray  # [T, N, C]
    timestamps: np.ndarray | None  # [T] datetime64[ns]
    adjacency: np.ndarray | None  # [N, N]
    node_ids: tuple[str, ...]
    channel_names: tuple[str, ...]
    source: pathlib.Path  # the main file, named in error messages


def _graph_only_error(series_path: pathlib.Path, graph_files: tuple[pathlib.Path, ...], layout: str):
    present = [p.name for p in graph_files if p.is_file()]
    if present:
        return FileNotFoundError(
            f"{series_path} not found: only the graph files ({', '.join(present)}) are present in "
            f"{series_path.parent}; put the series file there ({layout})")
    return FileNotFoundError(f"{series_path} not found")


def _pems_channels(num_channels: int) -> tuple[str, ...]:
    if num_channels == 3:
        return ("flow", "occupancy", "speed")
    if num_channels == 1:
        return ("flow",)
    return tuple(f"channel_{c}" for c in range(num_channels))


def _read_pems(folder: pathlib.Path, info: DatasetInfo, *, stem: str) -> _Series:
    series_path, graph_path, id_path = (folder / f"{stem}.{ext}" for ext in ("npz", "csv", "txt"))
    if not series_path.is_file():
        raise _graph_only_error(series_path, (graph_path, id_path), "key 'data', shape (T, N, C)")
    values = read_pems_npz(series_path)
    # PEMS03's edge list uses raw station ids; the id file gives their node order.
    node_ids = read_id_list(id_path) if (stem == "PEMS03" or id_path.is_file()) else None
    adjacency = read_pems_graph(_require(graph_path), values.shape[1], node_ids)
    return _Series(values, None, adjacency, node_ids or (), _pems_channels(values.shape[2]), series_path)


def _read_dcrnn_traffic(folder: pathlib.Path, info: DatasetInfo, *, series_file: str, adj_file: str) -> _Series:
    series_path, adj_path = folder / series_file, folder / adj_file
    locations = tuple(folder.glob("graph_sensor*")) + tuple(folder.glob("distances*"))
    if not series_path.is_file():
        raise _graph_only_error(series_path, (adj_path,) + locations,
                                "pandas HDFStore with df/axis0, df/axis1, df/block0_values")
    values, timestamps, columns = read_pandas_h5(series_path)
    sensor_ids, adjacency = read_dcrnn_adjacency(adj_path)
    adjacency = _square(adjacency, adj_path, values.shape[1])
    if columns is not None and sensor_ids is not None and columns != sensor_ids:
        if set(columns) != set(sensor_ids):
            raise ValueError(f"{adj_path}: its sensor ids differ from the columns of {series_path}")
        # Same sensors in another order: follow the series' column order.
        position = {s: i for i, s in enumerate(sensor_ids)}
        order = np.array([position[c] for c in columns])
        adjacency = adjacency[np.ix_(order, order)]
    node_ids = columns or sensor_ids or ()
    return _Series(values[:, :, None], timestamps, adjacency, node_ids, ("speed",), series_path)


def _read_hzmetro(folder: pathlib.Path, info: DatasetInfo, *, flow: str) -> _Series:
    npz_path, h5_path = folder / f"HZME_{flow}.npz", folder / f"HZME_{flow}.h5"
    if npz_path.is_file():
        arrays = _load_npz(npz_path, ("data",))
        values, source = arrays["data"], npz_path
        timestamps = arrays["timestamps"].astype("datetime64[ns]") if "timestamps" in arrays else None
        columns = _decode_ids(arrays["columns"]) if "columns" in arrays else None
        if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
            raise ValueError(f"{npz_path}: expected a numeric [T, N] array under key 'data', "
                             f"got shape {values.shape} dtype {values.dtype}")
        if timestamps is not None and timestamps.shape != (values.shape[0],):
            raise ValueError(f"{npz_path}: 'timestamps' has shape {timestamps.shape}, expected ({values.shape[0]},)")
    elif h5_path.is_file():
        values, timestamps, columns = read_pandas_h5(h5_path)
        source = h5_path
    else:
        raise FileNotFoundError(f"{npz_path} not found (nor {h5_path.name})")
    adj_path = folder / "HZME_adj_mx.pkl"
    adjacency = _square(read_dcrnn_adjacency(adj_path)[1], adj_path, values.shape[1])
    if columns is not None and len(columns) != values.shape[1]:
        raise ValueError(f"{source}: {len(columns)} column ids for {values.shape[1]} stations")
    return _Series(values[:, :, None].astype(np.float32), timestamps, adjacency, columns or (),
                   (flow.lower(),), source)


def _read_los_loop(folder: pathlib.Path, info: DatasetInfo) -> _Series:
    speed_path, adj_path = folder / "los_speed.csv", folder / "los_adj.csv"
    what = "a header of sensor ids and one row of speeds per 5-minute step"
    frame = _read_csv(speed_path, what)
    values = _numeric(frame, speed_path, what)
    adjacency = _numeric(_read_csv(adj_path, "a headerless [N, N] matrix", header=None), adj_path,
                         "a headerless [N, N] matrix")
    adjacency = _square(adjacency, adj_path, values.shape[1])
    node_ids = tuple(str(c).strip() for c in frame.columns)
    return _Series(values[:, :, None], None, adjacency, node_ids, ("speed",), speed_path)


def _haversine_km(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """`[N, N]` great-circle distances in km between points given in degrees `[N]`."""
    lat, lon = np.radians(lat_deg), np.radians(lon_deg)
    half_dlat = (lat[:, None] - lat[None, :]) / 2
    half_dlon = (lon[:, None] - lon[None, :]) / 2
    a = np.sin(half_dlat) ** 2 + np.cos(lat)[:, None] * np.cos(lat)[None, :] * np.sin(half_dlon) ** 2
    return 2 * _EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _gaussian_kernel_adjacency(distances: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Thresholded Gaussian kernel `exp(-(d / std(d))^2)` of `[N, N]` distances, zero diagonal (as in GRIN/DCRNN)."""
    off_diagonal = distances[~np.eye(len(distances), dtype=bool)]
    scale = float(np.std(off_diagonal)) if off_diagonal.size else 1.0
    weights = np.exp(-np.square(distances / max(scale, 1e-12)))
    weights[weights < threshold] = 0.0
    np.fill_diagonal(weights, 0.0)
    return weights.astype(np.float32)


def _read_aqi36(folder: pathlib.Path, info: DatasetInfo) -> _Series:
    ground_path, location_path = folder / "pm25_ground.txt", folder / "pm25_latlng.txt"
    what = "a 'datetime' column then one PM2.5 column per station"
    frame = _read_csv(ground_path, what)
    if frame.shape[1] < 2:
        raise ValueError(f"{ground_path}: {frame.shape[1]} column(s); expected {what}")
    timestamps = _parse_dates(frame.iloc[:, 0], ground_path)
    values = _numeric(frame.iloc[:, 1:], ground_path, what)
    node_ids = tuple(str(c).strip() for c in frame.columns[1:])
    where = "columns sensor_id,latitude,longitude"
    locations = _read_csv(location_path, where, dtype=str)
    if locations.shape[1] < 3:
        raise ValueError(f"{location_path}: {locations.shape[1]} column(s); expected {where}")
    coordinates = dict(zip(locations.iloc[:, 0].str.strip(),
                           _numeric(locations.iloc[:, 1:3], location_path, where)))
    missing = [s for s in node_ids if s not in coordinates]
    if missing:
        raise ValueError(f"{location_path}: no location for station(s) {missing[:5]} of {ground_path.name}")
    lat_lon = np.array([coordinates[s] for s in node_ids])
    adjacency = _gaussian_kernel_adjacency(_haversine_km(lat_lon[:, 0], lat_lon[:, 1]))
    return _Series(values[:, :, None], timestamps, adjacency, node_ids, ("pm25",), ground_path)


def _read_nycbike1(folder: pathlib.Path, info: DatasetInfo) -> _Series:
    keys = ("x", "y", "x_offsets", "y_offsets")
    val_path, test_path, adj_path = folder / "val.npz", folder / "test.npz", folder / "adj_mx.npz"
    val, test = _load_npz(val_path, keys), _load_npz(test_path, keys)
    for path, split in ((val_path, val), (test_path, test)):
        if split["x"].ndim != 4 or split["y"].ndim != 4 or len(split["x"]) == 0 or len(split["y"]) == 0:
            raise ValueError(f"{path}: expected windows x (S, L, N, C) and y (S, 1, N, C), "
                             f"got {split['x'].shape} and {split['y'].shape}")
        # The rebuild takes each window's last input step (offset 0) and the last target (offset +1).
        if int(np.ravel(split["x_offsets"])[-1]) != 0 or np.ravel(split["y_offsets"]).tolist()[:1] != [1]:
            raise ValueError(f"{path}: expected x_offsets ending at 0 and y_offsets starting at 1")
    if not np.array_equal(val["y"][-1, 0], test["x"][0, -1], equal_nan=True):
        raise ValueError(f"{test_path}: its first window does not continue {val_path.name}; "
                         "expected consecutive hourly windows")
    values = np.concatenate([val["x"][:, -1], test["x"][:, -1], test["y"][-1:, 0]], axis=0)
    adjacency = _square(_load_npz(adj_path, ("adj_mx",))["adj_mx"], adj_path, values.shape[1])
    timestamps = pd.date_range(end=_NYCBIKE1_LAST_STEP, periods=values.shape[0], freq=info.freq).values
    return _Series(values, timestamps, adjacency, (), ("inflow", "outflow"), val_path)


def _read_montevideo_bus(folder: pathlib.Path, info: DatasetInfo) -> _Series:
    path = folder / "montevideo_bus.json"
    what = "networkx node-link json: 'nodes' with 'y' series and 'links' with source/target/weight"
    document = _read_json(path, what)
    nodes, links = _json_field(document, "nodes", path, what), _json_field(document, "links", path, what)
    try:
        keys = [node.get("id", node.get("bus_stop")) for node in nodes]
        series = _matrix([node["y"] for node in nodes], path, what)  # [N, T]
        position = {k: i for i, k in enumerate(keys)}
        adjacency = np.zeros((len(nodes), len(nodes)), np.float32)
        for link in links:
            adjacency[position[link["source"]], position[link["target"]]] = float(link.get("weight", 1.0))
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: malformed node or link ({err}); expected {what}") from None
    node_ids = tuple(str(node.get("bus_stop", k)) for node, k in zip(nodes, keys))
    return _Series(series.T[:, :, None], None, adjacency, node_ids, ("inflow",), path)


def _edge_adjacency(edges, weights, num_nodes: int, path: pathlib.Path) -> np.ndarray:
    """A[i, j] = w for every listed (i, j) edge (direction as stored)."""
    edges = _matrix(edges, path, "an (E, 2) edge list")
    if edges.shape[1] != 2 or np.any(edges < 0) or np.any(edges >= num_nodes) or np.any(edges != np.round(edges)):
        raise ValueError(f"{path}: expected an (E, 2) edge list of node indices 0..{num_nodes - 1}")
    weights = np.ones(len(edges)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if weights.shape != (len(edges),):
        raise ValueError(f"{path}: {weights.shape[0]} edge weights for {len(edges)} edges")
    adjacency = np.zeros((num_nodes, num_nodes), np.float32)
    adjacency[edges[:, 0].astype(int), edges[:, 1].astype(int)] = weights
    return adjacency


def _read_chickenpox(folder: pathlib.Path, info: DatasetInfo) -> _Series:
    path = folder / "chickenpox.json"
    what = "keys 'FX' (T, N), 'edges' (E, 2), 'node_ids' {name: index}"
    document = _read_json(path, what)
    values = _matrix(_json_field(document, "FX", path, what), path, "'FX' (T, N)")
    node_index = _json_field(document, "node_ids", path, what)
    if not isinstance(node_index, dict) or sorted(node_index.values()) != list(range(values.shape[1])):
        raise ValueError(f"{path}: 'node_ids' must map the {values.shape[1]} county names to 0..{values.shape[1] - 1}")
    node_ids = tuple(sorted(node_index, key=node_index.get))
    adjacency = _edge_adjacency(_json_field(document, "edges", path, what), None, values.shape[1], path)
    return _Series(values[:, :, None], None, adjacency, node_ids, ("cases_standardized",), path)


def _read_england_covid(folder: pathlib.Path, info: DatasetInfo) -> _Series:
    path = folder / "england_covid.json"
    what = "keys 'y' (T, N) and 'edge_mapping' with per-day 'edge_index' and 'edge_weight'"
    document = _read_json(path, what)
    values = _matrix(_json_field(document, "y", path, what), path, "'y' (T, N)")
    mapping = _json_field(document, "edge_mapping", path, what)
    num_steps, num_nodes = values.shape
    # One graph per day; averaging only the train days keeps later days out of the graph.
    train_days = max(1, int(num_steps * info.split_ratios[0]))
    adjacency = np.zeros((num_nodes, num_nodes), np.float64)
    try:
        for day in range(train_days):
            adjacency += _edge_adjacency(mapping["edge_index"][str(day)], mapping["edge_weight"][str(day)],
                                         num_nodes, path)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: no graph for day {err}; expected {what}") from None
    return _Series(values[:, :, None], None, adjacency / train_days, (), ("cases",), path)


def _read_pedalme(folder: pathlib.Path, info: DatasetInfo) -> _Series:
    path = folder / "pedalme_london.json"
    what = "keys 'X' (T, N), 'edges' (E, 2), 'weights' (E,)"
    document = _read_json(path, what)
    values = _matrix(_json_field(document, "X", path, what), path, "'X' (T, N)")
    adjacency = _edge_adjacency(_json_field(document, "edges", path, what),
                                _json_field(document, "weights", path, what), values.shape[1], path)
    return _Series(values[:, :, None], None, adjacency, (), ("deliveries",), path)


def _parse_dates(column: pd.Series, path: pathlib.Path) -> np.ndarray:
    try:
        return pd.to_datetime(column).values.astype("datetime64[ns]")
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"{path}: first column {column.name!r} is not a date/time column") from None


def _read_dated_csv(folder: pathlib.Path, info: DatasetInfo, *, filename: str) -> _Series:
    """LTSF csv: a date column then one column per variable; variables become nodes."""
    path = folder / filename
    what = "a 'date' column then one numeric column per variable"
    frame = _read_csv(path, what)
    if frame.shape[1] < 2:
        raise ValueError(f"{path}: {frame.shape[1]} column(s); expected {what}")
    timestamps = _parse_dates(frame.iloc[:, 0], path)
    values = _numeric(frame.iloc[:, 1:], path, what)
    node_ids = tuple(str(c) for c in frame.columns[1:])
    return _Series(values[:, :, None], timestamps, None, node_ids, ("value",), path)


def _read_exchange_rate(folder: pathlib.Path, info: DatasetInfo) -> _Series:
    path = folder / "exchange_rate.txt.gz"
    what = "gzip csv without header, one column per currency"
    values = _numeric(_read_csv(path, what, header=None), path, what)
    return _Series(values[:, :, None], None, None, (), ("value",), path)


def _read_m4(folder: pathlib.Path, info: DatasetInfo, *, filename: str) -> _Series:
    """M4 train csv: row = series (id, values right-padded with NaN) -> `[T_max, num_series, 1]`."""
    path = folder / filename
    what = "one row per series: an id column then values right-padded with empty cells"
    frame = _read_csv(path, what)
    if frame.shape[1] < 3:
        raise ValueError(f"{path}: {frame.shape[1]} column(s); expected {what}")
    series = _numeric(frame.iloc[:, 1:], path, what)  # [N, L]
    observed = ~np.isnan(series)
    lengths = np.where(observed.any(axis=1), series.shape[1] - np.argmax(observed[:, ::-1], axis=1), 0)
    if np.any(lengths < 2):
        empty = frame.iloc[int(np.argmax(lengths < 2)), 0]
        raise ValueError(f"{path}: series {empty!r} has fewer than 2 values; expected {what}")
    values = series[:, : int(lengths.max())].T
    node_ids = tuple(str(s) for s in frame.iloc[:, 0])
    return _Series(values[:, :, None], None, None, node_ids, ("value",), path)


_READERS: dict[str, Callable[[pathlib.Path, DatasetInfo], _Series]] = {
    **{stem: functools.partial(_read_pems, stem=stem) for stem in _PEMS_STARTS},
    "METR-LA": functools.partial(_read_dcrnn_traffic, series_file="metr-la.h5", adj_file="adj_mx.pkl"),
    "PEMS-BAY": functools.partial(_read_dcrnn_traffic, series_file="pems-bay.h5", adj_file="adj_mx_bay.pkl"),
    "LOS-LOOP": _read_los_loop,
    "HZMETRO": functools.partial(_read_hzmetro, flow="INFLOW"),
    "HZMETRO:out": functools.partial(_read_hzmetro, flow="OUTFLOW"),
    "AQI36": _read_aqi36,
    "NYCBIKE1": _read_nycbike1,
    "MONTEVIDEO_BUS": _read_montevideo_bus,
    "CHICKENPOX_HU": _read_chickenpox,
    "ENGLAND_COVID": _read_england_covid,
    "PEDALME_LONDON": _read_pedalme,
    **{n: functools.partial(_read_dated_csv, filename=f"{n}.csv") for n in ("ETTh1", "ETTh2", "ETTm1", "ETTm2")},
    "WEATHER": functools.partial(_read_dated_csv, filename="weather.csv"),
    "ILLNESS": functools.partial(_read_dated_csv, filename="national_illness.csv"),
    "ELECTRICITY": functools.partial(_read_dated_csv, filename="electricity.csv"),
    "EXCHANGE_RATE": _read_exchange_rate,
    "M4:hourly": functools.partial(_read_m4, filename="Hourly-train.csv"),
    "M4:weekly": functools.partial(_read_m4, filename="Weekly-train.csv"),
}


# ------------------------------------------------------------------------------------------------ assembly


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


def _assemble(info: DatasetInfo, series: _Series) -> STDataset:
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
        from factost_jax.data.synthetic import synthetic_network

        dataset = synthetic_network().replace(
            name=info.name, split_ratios=info.split_ratios, norm=info.norm, null_val=info.null_val,
            rescale=info.rescale, domain=info.domain)
    else:
        dataset = _assemble(info, _READERS[name](pathlib.Path(folder), info))
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
    root = _resolve_data_dir(data_dir)
    folder = _find_folder(root, info.folder)
    if folder is None:
        raise FileNotFoundError(f"{root / info.folder} not found: dataset {name} expects its files "
                                f"({', '.join(info.files)}) there")
    return _load_cached(name, str(folder.resolve()), _folder_signature(folder))


__all__ = [
    "DATASET_INFO", "DatasetInfo", "EVALUATION_DATASETS", "canonical_name", "clear_cache", "default_data_dir",
    "list_datasets", "load_dataset", "read_dcrnn_adjacency", "read_id_list", "read_pandas_h5", "read_pems_graph",
    "read_pems_npz",
]
