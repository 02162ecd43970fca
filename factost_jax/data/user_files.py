"""A user's own sensor network from a file or a DataFrame, turned into the same `STDataset` the
registered loaders return (so windows, few-shot subsets, replay, metrics and evaluation are unchanged).

Accepted sources (`load_file_dataset(path, options)`, or `dataset_from_frame(df, options)`):

| source | layout |
|---|---|
| long CSV / Parquet | one row per (sensor, timestamp): columns `unique_id, ds, y` (names: `id_column`, `timestamp_column`, `target`) |
| wide CSV / Parquet | one timestamp column (`timestamp_column`, else the first column), then one numeric column per sensor |
| `.npz` | `data [T, N]` or `[T, N, C]`, optional `timestamps [T]` (else `freq` is required) and `node_ids [N]` |

A table holding `id_column` or `target` is read as long, anything else as wide. Sensors keep the
order in which they first appear (the column order of a wide table): that order indexes the
adapter's node table and a headerless adjacency file.

Frequency: each sensor's step is the smallest spacing of its timestamps (or `pd.infer_freq` for
calendar steps such as months); every sensor must share that step and its phase; steps between a
sensor's stamps become NaN (missing). Timezone-aware stamps are converted to UTC.

Graph (optional): `nodes` = a CSV/Parquet `unique_id, latitude, longitude` giving the thresholded
Gaussian kernel of haversine distances (the AQI36 convention), or `adjacency` = a `[N, N]` `.npy`,
or a CSV square matrix (headerless: the data's sensor order; with a header of sensor ids: reordered).

Conventions (BasicTS defaults, each overridable): split 6:2:2 of the steps, one global z-score fitted
on the train split, no null value (only NaN is missing; traffic counts use `null_val=0.0`), metrics
in original units.

Every malformed input raises ONE ValueError naming the file (or "DataFrame"), the column and the
row or sensor at fault; a missing file raises FileNotFoundError.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from factost_jax.data import graph
from factost_jax.data.types import SPLITS, STDataset
from factost_jax.fields import field_names, reject_unknown_fields

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
FILE_SUFFIXES = TABLE_SUFFIXES + (".npz",)
DEFAULT_SPLIT = (0.6, 0.2, 0.2)
DOMAIN = "user"
_MAX_SHOWN = 5  # ids listed in one error message
# A grid more than this many times longer than the rows it holds is almost surely a wrong step.
_MAX_GRID_EXPANSION = 2


@dataclasses.dataclass(frozen=True)
class FileSourceOptions:
    """How to read a user file. None keeps the default named in the module docstring.

    Attributes:
      id_column / timestamp_column / target: column names of a long table (`timestamp_column` is also
        the timestamp column of a wide table when present).
      nodes: CSV/Parquet `id_column|unique_id, latitude, longitude` -> distance-kernel adjacency.
      adjacency: `[N, N]` `.npy` or CSV matrix (exclusive with `nodes`).
      freq: pandas alias of one step; required for an `.npz` without timestamps, else a check.
      split_ratios: (train, val, test) fractions of the steps (default 6:2:2).
      null_val: a value that marks "not observed" in metrics (default None: only NaN is missing).
      norm: "global" (one z-score, default) or "per_node".
    """

    id_column: str = "unique_id"
    timestamp_column: str = "ds"
    target: str = "y"
    nodes: str | None = None
    adjacency: str | None = None
    freq: str | None = None
    split_ratios: tuple[float, float, float] | None = None
    null_val: float | None = None
    norm: str | None = None

    def __post_init__(self):
        for name in ("id_column", "timestamp_column", "target"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty column name, got {value!r}")
        if self.nodes and self.adjacency:
            raise ValueError("give nodes (latitude/longitude, a distance-kernel graph) or adjacency, not both")
        if self.split_ratios is not None:
            try:
                ratios = tuple(float(r) for r in self.split_ratios)
            except (TypeError, ValueError):
                raise ValueError(f"split_ratios must be 3 fractions, got {self.split_ratios!r}") from None
            if len(ratios) != 3 or min(ratios) <= 0 or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
                raise ValueError(f"split_ratios must be 3 positive fractions summing to 1, got {self.split_ratios!r}")
            object.__setattr__(self, "split_ratios", ratios)
        if self.null_val is not None and (isinstance(self.null_val, bool) or not isinstance(self.null_val, (int, float))):
            raise ValueError(f"null_val must be a number or None, got {self.null_val!r}")
        if self.norm not in (None, "global", "per_node"):
            raise ValueError(f"norm must be 'global' or 'per_node', got {self.norm!r}")
        if self.freq is not None:
            try:
                pd.tseries.frequencies.to_offset(self.freq)
            except ValueError:
                raise ValueError(f"freq {self.freq!r} is not a pandas frequency alias (e.g. '5min', '1h', 'D')") from None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> FileSourceOptions:
        """Options from a mapping; None values keep the defaults, unknown keys are an error."""
        values = {k: v for k, v in dict(values or {}).items() if v is not None}
        reject_unknown_fields(values, field_names(cls), "file-dataset options")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


OPTION_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FileSourceOptions))


def is_file_source(name: Any) -> bool:
    """True when a dataset name is a path to a user file: a path object, or a name ending in a
    supported suffix (so a registered name never reaches the file readers by accident)."""
    if isinstance(name, os.PathLike):
        return True
    return isinstance(name, str) and name.strip().lower().endswith(FILE_SUFFIXES)


def parse_option_pairs(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Command-line `KEY=VALUE` strings -> an options mapping (split_ratios "0.7,0.1,0.2", null_val a number)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        key = key.strip()
        if not sep or key not in OPTION_FIELDS:
            raise ValueError(f"--data_option {pair!r}: expected KEY=VALUE with KEY one of {', '.join(OPTION_FIELDS)}")
        if key == "split_ratios":
            try:
                values[key] = tuple(float(x) for x in value.strip("()[] ").split(","))
            except ValueError:
                raise ValueError(f"--data_option {pair!r}: split_ratios must be 3 numbers, e.g. 0.7,0.1,0.2") from None
        elif key == "null_val":
            try:
                values[key] = float(value)
            except ValueError:
                raise ValueError(f"--data_option {pair!r}: null_val must be a number") from None
        else:
            values[key] = value
    return values


def recorded_file_options(metadata: Mapping[str, Any], dataset: Any) -> dict[str, Any]:
    """The file options a checkpoint's adaptation recorded, for evaluating it on the file `dataset`; else {}.

    A `launch/adapt.py` run records them in run_config.data and they apply to the same file (the same
    path, or the same file name when the run gave a relative path). A `Forecaster.fit` on a DataFrame
    records them as metadata["file_options"]; the frame has no path to compare, so they apply to any
    file (the adapted network's sensors are checked when it is forecast).
    """
    if not isinstance(metadata, Mapping) or not is_file_source(dataset):
        return {}
    data = (metadata.get("run_config") or {}).get("data")
    fitted = metadata.get("file_options")
    if isinstance(data, Mapping) and is_file_source(data.get("dataset")):
        recorded, given = pathlib.Path(str(data["dataset"])).expanduser(), pathlib.Path(dataset).expanduser()
        same = recorded.resolve() == given.resolve() if recorded.is_absolute() else recorded.name == given.name
        return _set_options(data) if same else {}
    return _set_options(fitted) if isinstance(fitted, Mapping) else {}


def _set_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The OPTION_FIELDS of `values` that are set (not None); split_ratios as a tuple."""
    return {key: (tuple(value) if key == "split_ratios" else value)
            for key in OPTION_FIELDS if (value := values.get(key)) is not None}


# --------------------------------------------------------------------------- reading
def _read_table(path: pathlib.Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            try:
                import pyarrow  # noqa: F401  (pandas' Parquet engine; a clear line when absent)
            except ImportError:
                raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty; expected a header line then one row per timestamp "
                         "(or per sensor and timestamp)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable {suffix[1:]} table ({' '.join(str(error).split())[:200]})") from None
    except Exception as error:  # noqa: BLE001 - pyarrow raises its own types for a damaged file
        raise ValueError(f"{path}: not a readable {suffix[1:]} table ({type(error).__name__}: "
                         f"{' '.join(str(error).split())[:200]})") from None


def _parse_timestamps(column: pd.Series, where: str) -> pd.DatetimeIndex:
    """A column -> naive DatetimeIndex (UTC for zone-aware input); names the first unparseable row."""
    if column.isna().any():
        row = int(np.flatnonzero(column.isna().to_numpy())[0])
        raise ValueError(f"{where}: column {column.name!r} has an empty timestamp at data row {row + 1}")
    try:
        with warnings.catch_warnings():  # pandas' "could not infer format" notice: dateutil parses each cell
            warnings.simplefilter("ignore", UserWarning)
            stamps = pd.to_datetime(column, utc=_is_zone_aware(column))
    except (ValueError, TypeError, OverflowError, pd.errors.OutOfBoundsDatetime):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            stamps = pd.to_datetime(column, errors="coerce", utc=True)
        bad = np.flatnonzero(stamps.isna().to_numpy())
        row = int(bad[0]) if bad.size else 0
        raise ValueError(f"{where}: column {column.name!r}, data row {row + 1}: {column.iloc[row]!r} is not a "
                         "date/time (or the column mixes time zones)") from None
    index = pd.DatetimeIndex(stamps)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return index.as_unit("ns")


def _is_zone_aware(column: pd.Series) -> bool:
    return isinstance(column.dtype, pd.DatetimeTZDtype)


def _numeric_column(column: pd.Series, where: str) -> np.ndarray:
    """A column -> float64 (empty cells NaN); names the first non-numeric cell."""
    values = pd.to_numeric(column, errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy() & column.notna().to_numpy())
    if bad.size:
        raise ValueError(f"{where}: column {column.name!r}, data row {int(bad[0]) + 1}: "
                         f"{column.iloc[int(bad[0])]!r} is not a number")
    return values.to_numpy(np.float64)


# --------------------------------------------------------------------------- the time grid
def _sensor_step(stamps: np.ndarray, sensor: str, where: str) -> pd.DateOffset | pd.Timedelta:
    """The step of one sensor's sorted unique stamps `[K]` datetime64[ns]: the smallest spacing when
    every stamp lies on its grid, else a calendar frequency `pd.infer_freq` finds (months, ...)."""
    if len(stamps) < 2:
        raise ValueError(f"{where}: sensor {sensor!r} has {len(stamps)} timestamp(s); at least 2 are needed "
                         "to infer the frequency")
    offsets = (stamps - stamps[0]).astype(np.int64)
    step_ns = int(np.diff(offsets).min())
    off_grid = np.flatnonzero(offsets % step_ns)
    if off_grid.size == 0:
        return pd.Timedelta(step_ns, unit="ns")
    inferred = pd.infer_freq(pd.DatetimeIndex(stamps)) if len(stamps) >= 3 else None
    if inferred is not None:
        return pd.tseries.frequencies.to_offset(inferred)
    at = int(off_grid[0])
    raise ValueError(f"{where}: sensor {sensor!r} has irregular timestamps: {pd.Timestamp(stamps[at])} is not on "
                     f"its {pd.Timedelta(step_ns, unit='ns')} grid from {pd.Timestamp(stamps[0])} "
                     "(expected a regular series; gaps are fine)")


def _freq_alias(step: pd.DateOffset | pd.Timedelta) -> str:
    return pd.tseries.frequencies.to_offset(step).freqstr


def _common_grid(per_sensor: list[tuple[str, np.ndarray]], freq: str | None, where: str
                 ) -> tuple[pd.DatetimeIndex, str]:
    """The one regular grid every sensor lies on -> (grid [T], pandas alias of its step).

    `per_sensor`: (sensor id, its sorted unique stamps [K] datetime64[ns]).
    """
    steps = [(sensor, _sensor_step(stamps, sensor, where)) for sensor, stamps in per_sensor]
    first_sensor, step = steps[0]
    for sensor, other in steps[1:]:
        if other != step:
            raise ValueError(f"{where}: sensors are on different grids: {first_sensor!r} every {_freq_alias(step)}, "
                             f"{sensor!r} every {_freq_alias(other)}")
    alias = _freq_alias(step)
    if freq is not None and pd.tseries.frequencies.to_offset(freq) != pd.tseries.frequencies.to_offset(alias):
        raise ValueError(f"{where}: freq={freq!r} was given but the timestamps step every {alias}")
    start = min(stamps[0] for _, stamps in per_sensor)
    end = max(stamps[-1] for _, stamps in per_sensor)
    grid = pd.date_range(start, end, freq=pd.tseries.frequencies.to_offset(alias)).as_unit("ns")
    total = sum(len(stamps) for _, stamps in per_sensor)
    if len(grid) > _MAX_GRID_EXPANSION * max(len(stamps) for _, stamps in per_sensor) and \
            len(grid) * len(per_sensor) > _MAX_GRID_EXPANSION * total:
        raise ValueError(f"{where}: over half of the {alias} steps from {grid[0]} to {grid[-1]} are missing "
                         f"({total} rows for {len(per_sensor)} sensors x {len(grid)} steps); is the frequency right?")
    for sensor, stamps in per_sensor:
        missing = np.flatnonzero(grid.get_indexer(pd.DatetimeIndex(stamps)) < 0)
        if missing.size:
            raise ValueError(f"{where}: sensors are on different grids: sensor {sensor!r} has "
                             f"{pd.Timestamp(stamps[int(missing[0])])}, which is not on the {alias} grid of "
                             f"{first_sensor!r} starting {grid[0]}")
    return grid, alias


# --------------------------------------------------------------------------- long and wide tables
def _long_panel(frame: pd.DataFrame, options: FileSourceOptions, where: str
                ) -> tuple[np.ndarray, pd.DatetimeIndex, str, tuple[str, ...]]:
    """Long table -> (values [T, N] float64 NaN-filled, grid [T], freq alias, node ids [N])."""
    wanted = (options.id_column, options.timestamp_column, options.target)
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; it has {list(frame.columns)[:10]} "
                         "(a long table needs id, timestamp and target columns; set id_column / timestamp_column / "
                         "target to name yours)")
    ids = frame[options.id_column]
    if ids.isna().any():
        row = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise ValueError(f"{where}: column {options.id_column!r} has an empty sensor id at data row {row + 1}")
    stamps = _parse_timestamps(frame[options.timestamp_column], where)
    values = _numeric_column(frame[options.target], where)
    codes, uniques = pd.factorize(ids.astype(str), sort=False)  # first-appearance order
    node_ids = tuple(str(u) for u in uniques)
    keys = pd.DataFrame({"code": codes, "ns": stamps.asi8})
    duplicated = keys.duplicated(keep=False).to_numpy()
    if duplicated.any():
        rows = np.flatnonzero(duplicated)
        first = rows[0]
        twin = rows[1:][(codes[rows[1:]] == codes[first]) & (stamps.asi8[rows[1:]] == stamps.asi8[first])][0]
        raise ValueError(f"{where}: duplicate rows for sensor {node_ids[codes[first]]!r} at {stamps[first]} "
                         f"(data rows {first + 1} and {twin + 1}); keep one row per sensor and timestamp")
    order = np.lexsort((stamps.asi8, codes))
    sorted_codes, sorted_ns = codes[order], stamps.asi8[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    per_sensor = [(node_ids[int(c[0])], ns.astype("datetime64[ns]"))
                  for c, ns in zip(np.split(sorted_codes, bounds), np.split(sorted_ns, bounds))]
    grid, alias = _common_grid(per_sensor, options.freq, where)
    panel = np.full((len(grid), len(node_ids)), np.nan)
    panel[grid.get_indexer(stamps), codes] = values
    return panel, grid, alias, node_ids


def _wide_panel(frame: pd.DataFrame, options: FileSourceOptions, where: str
                ) -> tuple[np.ndarray, pd.DatetimeIndex, str, tuple[str, ...]]:
    """Wide table -> (values [T, N] float64 NaN-filled, grid [T], freq alias, node ids [N])."""
    time_column = options.timestamp_column if options.timestamp_column in frame.columns else frame.columns[0]
    sensors = [c for c in frame.columns if c != time_column]
    if not sensors:
        raise ValueError(f"{where}: only the timestamp column {time_column!r}; expected a long table with columns "
                         f"{options.id_column}, {options.timestamp_column}, {options.target} or a wide table with a "
                         "timestamp column then one column per sensor")
    try:
        stamps = _parse_timestamps(frame[time_column], where)
    except ValueError as error:
        raise ValueError(f"{error} (read as a wide table, timestamp column {time_column!r}: a long table needs "
                         f"columns {options.id_column}, {options.timestamp_column}, {options.target})") from None
    node_ids = tuple(str(c).strip() for c in sensors)
    if len(set(node_ids)) != len(node_ids):
        raise ValueError(f"{where}: repeated sensor column {next(n for n in node_ids if node_ids.count(n) > 1)!r}")
    duplicated = np.flatnonzero(stamps.duplicated(keep=False))
    if duplicated.size:
        raise ValueError(f"{where}: duplicate timestamp {stamps[duplicated[0]]} (data rows {duplicated[0] + 1} and "
                         f"{duplicated[1] + 1}); keep one row per timestamp")
    values = np.stack([_numeric_column(frame[c], where) for c in sensors], axis=1)
    order = np.argsort(stamps.asi8, kind="stable")
    sorted_ns = stamps.asi8[order].astype("datetime64[ns]")
    grid, alias = _common_grid([(node_ids[0], sorted_ns)], options.freq, where)
    panel = np.full((len(grid), len(node_ids)), np.nan)
    panel[grid.get_indexer(stamps)] = values
    return panel, grid, alias, node_ids


def frame_panel(frame: pd.DataFrame, options: FileSourceOptions, where: str = "DataFrame"
                ) -> tuple[np.ndarray, pd.DatetimeIndex, str, tuple[str, ...]]:
    """A long or wide table -> (values [T, N] float64, grid [T], freq alias, node ids [N])."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{where}: expected a pandas DataFrame, got {type(frame).__name__}")
    if len(frame) == 0:
        raise ValueError(f"{where} has no rows (a header only); expected one row per timestamp "
                         "(or per sensor and timestamp)")
    if options.id_column in frame.columns or options.target in frame.columns:
        return _long_panel(frame, options, where)
    return _wide_panel(frame, options, where)


# --------------------------------------------------------------------------- npz
def _npz_panel(path: pathlib.Path, options: FileSourceOptions
               ) -> tuple[np.ndarray, pd.DatetimeIndex | None, str, tuple[str, ...]]:
    """`.npz` -> (values [T, N, C] float64, grid [T] or None, freq alias, node ids [N] or ())."""
    what = "key 'data' [T, N] or [T, N, C], optional 'timestamps' [T] and 'node_ids' [N]"
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable .npz ({' '.join(str(error).split())[:200]}); expected {what}") from None
    if "data" not in arrays:
        raise ValueError(f"{path}: no key 'data' (keys: {sorted(arrays)}); expected {what}")
    data = arrays["data"]
    if data.ndim not in (2, 3) or 0 in data.shape:
        raise ValueError(f"{path}: 'data' has shape {data.shape}; expected {what}")
    try:
        values = data.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: 'data' holds {data.dtype} values, not numbers") from None
    values = values[:, :, None] if values.ndim == 2 else values
    node_ids = tuple(str(x) for x in arrays["node_ids"]) if "node_ids" in arrays else ()
    if node_ids and len(node_ids) != values.shape[1]:
        raise ValueError(f"{path}: {len(node_ids)} node_ids for N={values.shape[1]} sensors")
    if "timestamps" not in arrays:
        if options.freq is None:
            raise ValueError(f"{path}: no 'timestamps'; set freq (e.g. '5min') so the calendar is known")
        return values, None, _freq_alias(pd.tseries.frequencies.to_offset(options.freq)), node_ids
    where = str(path)
    stamps = _parse_timestamps(pd.Series(arrays["timestamps"], name="timestamps"), where)
    if len(stamps) != values.shape[0]:
        raise ValueError(f"{path}: {len(stamps)} timestamps for T={values.shape[0]} steps of 'data'")
    duplicated = np.flatnonzero(stamps.duplicated(keep=False))
    if duplicated.size:
        raise ValueError(f"{path}: duplicate timestamp {stamps[duplicated[0]]} (steps {duplicated[0]} and "
                         f"{duplicated[1]})")
    order = np.argsort(stamps.asi8, kind="stable")
    grid, alias = _common_grid([("data", stamps.asi8[order].astype("datetime64[ns]"))], options.freq, where)
    filled = np.full((len(grid),) + values.shape[1:], np.nan)
    filled[grid.get_indexer(stamps)] = values
    return filled, grid, alias, node_ids


# --------------------------------------------------------------------------- assembly
def _check_observed(values: np.ndarray, dataset: STDataset, where: str) -> None:
    """Every sensor needs an observed value in every split (else its statistics and metrics are void)."""
    observed = dataset.mask.any(axis=2)  # [T, N]
    if not math.isnan(dataset.null_val):
        observed &= ~np.isclose(values, dataset.null_val).all(axis=2)
    for split in SPLITS:
        start, end = dataset.split_range(split)
        empty = np.flatnonzero(~observed[start:end].any(axis=0))
        if empty.size:
            names = [dataset.node_ids[i] for i in empty[:_MAX_SHOWN]]
            more = f" and {empty.size - _MAX_SHOWN} more" if empty.size > _MAX_SHOWN else ""
            when = ("" if dataset.timestamps is None else
                    f" ({pd.Timestamp(dataset.timestamps[start])} .. {pd.Timestamp(dataset.timestamps[end - 1])})")
            raise ValueError(f"{where}: sensor(s) {names}{more} have no observed value in the {split} split, steps "
                             f"[{start}, {end}){when}; drop them or give them data there")


def build_dataset(name: str, values: np.ndarray, timestamps: pd.DatetimeIndex | None, freq: str,
                  node_ids: tuple[str, ...], options: FileSourceOptions, where: str,
                  base_dir: pathlib.Path | None = None) -> STDataset:
    """(values [T, N] or [T, N, C], grid, ...) -> `STDataset` with the options' conventions and graph."""
    values = values[:, :, None] if values.ndim == 2 else values
    if values.shape[0] < 2:
        raise ValueError(f"{where}: {values.shape[0]} time step(s); at least input_len + horizon per split are needed")
    node_ids = node_ids or tuple(str(i) for i in range(values.shape[1]))
    adjacency = None
    if options.nodes:
        adjacency = graph.adjacency_from_nodes(_resolve(options.nodes, base_dir), node_ids, options.id_column)
    elif options.adjacency:
        adjacency = graph.read_adjacency(_resolve(options.adjacency, base_dir), node_ids)
    null_val = float("nan") if options.null_val is None else float(options.null_val)
    dataset = STDataset(
        name=name, values=values.astype(np.float32), freq=freq,
        timestamps=None if timestamps is None else timestamps.to_numpy(dtype="datetime64[ns]"),
        adjacency=adjacency, node_ids=node_ids,
        channel_names=tuple(f"value{c}" for c in range(values.shape[2])) if values.shape[2] > 1 else ("value",),
        split_ratios=options.split_ratios or DEFAULT_SPLIT, norm=options.norm or "global", null_val=null_val,
        rescale=True, domain=DOMAIN)
    _check_observed(values, dataset, where)
    return dataset


def _resolve(path: str, base_dir: pathlib.Path | None) -> pathlib.Path:
    """A side file's path: as given when it exists, else next to the data file."""
    given = pathlib.Path(path).expanduser()
    if given.exists() or given.is_absolute() or base_dir is None:
        return given
    beside = base_dir / given
    return beside if beside.exists() else given


def dataset_from_frame(frame: pd.DataFrame, options: FileSourceOptions | None = None, name: str = "DataFrame"
                       ) -> STDataset:
    """A long (or wide) pandas DataFrame -> `STDataset` `[T, N, 1]` (the Python-API path)."""
    options = options or FileSourceOptions()
    values, grid, alias, node_ids = frame_panel(frame, options, name)
    return build_dataset(name, values, grid, alias, node_ids, options, name)


def load_file_dataset(path: str | os.PathLike, options: FileSourceOptions | Mapping[str, Any] | None = None
                      ) -> STDataset:
    """A user file (long/wide CSV or Parquet, or `.npz`) -> `STDataset` named after the file."""
    if not isinstance(options, FileSourceOptions):
        options = FileSourceOptions.from_mapping(options)
    path = pathlib.Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected one of {FILE_SUFFIXES}")
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} not found")
    where = str(path)
    if suffix == ".npz":
        values, grid, alias, node_ids = _npz_panel(path, options)
    else:
        values, grid, alias, node_ids = frame_panel(_read_table(path), options, where)
    return build_dataset(path.name, values, grid, alias, node_ids, options, where, base_dir=path.parent)


__all__ = ["FileSourceOptions", "build_dataset", "dataset_from_frame", "frame_panel", "is_file_source",
           "load_file_dataset"]
