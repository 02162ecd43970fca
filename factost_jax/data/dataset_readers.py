"""One reader per bundled dataset's on-disk layout: folder + `DatasetInfo` -> `Series` (values
`[T, N, C]`, timestamps, adjacency, ids). `READERS` maps each canonical name to its reader; the
conventions (split, norm, calendar) are applied afterwards by `formats.load_dataset`.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from factost_jax.data.file_readers import (decode_ids, json_field, load_npz, numeric_array, numeric_matrix,
                                           read_csv_file, read_dcrnn_adjacency, read_id_list, read_json_file,
                                           read_pandas_h5, read_pems_graph, read_pems_npz, require_file,
                                           square_adjacency)
from factost_jax.data.graph import gaussian_kernel_adjacency, haversine_km
from factost_jax.data.registry import PEMS_STARTS, DatasetInfo

# NYCBIKE1's README gives the last hour of the rebuilt series (its windows end with Sep 2014).
_NYCBIKE1_LAST_STEP = "2014-09-30 23:00"


class Series(NamedTuple):
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


def _read_pems(folder: pathlib.Path, info: DatasetInfo, *, stem: str) -> Series:
    series_path, graph_path, id_path = (folder / f"{stem}.{ext}" for ext in ("npz", "csv", "txt"))
    if not series_path.is_file():
        raise _graph_only_error(series_path, (graph_path, id_path), "key 'data', shape (T, N, C)")
    values = read_pems_npz(series_path)
    # PEMS03's edge list uses raw station ids; the id file gives their node order.
    node_ids = read_id_list(id_path) if (stem == "PEMS03" or id_path.is_file()) else None
    adjacency = read_pems_graph(require_file(graph_path), values.shape[1], node_ids)
    return Series(values, None, adjacency, node_ids or (), _pems_channels(values.shape[2]), series_path)


def _read_dcrnn_traffic(folder: pathlib.Path, info: DatasetInfo, *, series_file: str, adj_file: str) -> Series:
    series_path, adj_path = folder / series_file, folder / adj_file
    locations = tuple(folder.glob("graph_sensor*")) + tuple(folder.glob("distances*"))
    if not series_path.is_file():
        raise _graph_only_error(series_path, (adj_path,) + locations,
                                "pandas HDFStore with df/axis0, df/axis1, df/block0_values")
    values, timestamps, columns = read_pandas_h5(series_path)
    sensor_ids, adjacency = read_dcrnn_adjacency(adj_path)
    adjacency = square_adjacency(adjacency, adj_path, values.shape[1])
    if columns is not None and sensor_ids is not None and columns != sensor_ids:
        if set(columns) != set(sensor_ids):
            raise ValueError(f"{adj_path}: its sensor ids differ from the columns of {series_path}")
        # Same sensors in another order: follow the series' column order.
        position = {s: i for i, s in enumerate(sensor_ids)}
        order = np.array([position[c] for c in columns])
        adjacency = adjacency[np.ix_(order, order)]
    node_ids = columns or sensor_ids or ()
    return Series(values[:, :, None], timestamps, adjacency, node_ids, ("speed",), series_path)


def _read_hzmetro(folder: pathlib.Path, info: DatasetInfo, *, flow: str) -> Series:
    npz_path, h5_path = folder / f"HZME_{flow}.npz", folder / f"HZME_{flow}.h5"
    if npz_path.is_file():
        arrays = load_npz(npz_path, ("data",))
        values, source = arrays["data"], npz_path
        timestamps = arrays["timestamps"].astype("datetime64[ns]") if "timestamps" in arrays else None
        columns = decode_ids(arrays["columns"]) if "columns" in arrays else None
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
    adjacency = square_adjacency(read_dcrnn_adjacency(adj_path)[1], adj_path, values.shape[1])
    if columns is not None and len(columns) != values.shape[1]:
        raise ValueError(f"{source}: {len(columns)} column ids for {values.shape[1]} stations")
    return Series(values[:, :, None].astype(np.float32), timestamps, adjacency, columns or (),
                   (flow.lower(),), source)


def _read_los_loop(folder: pathlib.Path, info: DatasetInfo) -> Series:
    speed_path, adj_path = folder / "los_speed.csv", folder / "los_adj.csv"
    what = "a header of sensor ids and one row of speeds per 5-minute step"
    frame = read_csv_file(speed_path, what)
    values = numeric_array(frame, speed_path, what)
    adjacency = numeric_array(read_csv_file(adj_path, "a headerless [N, N] matrix", header=None), adj_path,
                         "a headerless [N, N] matrix")
    adjacency = square_adjacency(adjacency, adj_path, values.shape[1])
    node_ids = tuple(str(c).strip() for c in frame.columns)
    return Series(values[:, :, None], None, adjacency, node_ids, ("speed",), speed_path)


def _read_aqi36(folder: pathlib.Path, info: DatasetInfo) -> Series:
    ground_path, location_path = folder / "pm25_ground.txt", folder / "pm25_latlng.txt"
    what = "a 'datetime' column then one PM2.5 column per station"
    frame = read_csv_file(ground_path, what)
    if frame.shape[1] < 2:
        raise ValueError(f"{ground_path}: {frame.shape[1]} column(s); expected {what}")
    timestamps = _parse_dates(frame.iloc[:, 0], ground_path)
    values = numeric_array(frame.iloc[:, 1:], ground_path, what)
    node_ids = tuple(str(c).strip() for c in frame.columns[1:])
    where = "columns sensor_id,latitude,longitude"
    locations = read_csv_file(location_path, where, dtype=str)
    if locations.shape[1] < 3:
        raise ValueError(f"{location_path}: {locations.shape[1]} column(s); expected {where}")
    coordinates = dict(zip(locations.iloc[:, 0].str.strip(),
                           numeric_array(locations.iloc[:, 1:3], location_path, where)))
    missing = [s for s in node_ids if s not in coordinates]
    if missing:
        raise ValueError(f"{location_path}: no location for station(s) {missing[:5]} of {ground_path.name}")
    lat_lon = np.array([coordinates[s] for s in node_ids])
    adjacency = gaussian_kernel_adjacency(haversine_km(lat_lon[:, 0], lat_lon[:, 1]))
    return Series(values[:, :, None], timestamps, adjacency, node_ids, ("pm25",), ground_path)


def _read_nycbike1(folder: pathlib.Path, info: DatasetInfo) -> Series:
    keys = ("x", "y", "x_offsets", "y_offsets")
    val_path, test_path, adj_path = folder / "val.npz", folder / "test.npz", folder / "adj_mx.npz"
    val, test = load_npz(val_path, keys), load_npz(test_path, keys)
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
    adjacency = square_adjacency(load_npz(adj_path, ("adj_mx",))["adj_mx"], adj_path, values.shape[1])
    timestamps = pd.date_range(end=_NYCBIKE1_LAST_STEP, periods=values.shape[0], freq=info.freq).values
    return Series(values, timestamps, adjacency, (), ("inflow", "outflow"), val_path)


def _read_montevideo_bus(folder: pathlib.Path, info: DatasetInfo) -> Series:
    path = folder / "montevideo_bus.json"
    what = "networkx node-link json: 'nodes' with 'y' series and 'links' with source/target/weight"
    document = read_json_file(path, what)
    nodes, links = json_field(document, "nodes", path, what), json_field(document, "links", path, what)
    try:
        keys = [node.get("id", node.get("bus_stop")) for node in nodes]
        series = numeric_matrix([node["y"] for node in nodes], path, what)  # [N, T]
        position = {k: i for i, k in enumerate(keys)}
        adjacency = np.zeros((len(nodes), len(nodes)), np.float32)
        for link in links:
            adjacency[position[link["source"]], position[link["target"]]] = float(link.get("weight", 1.0))
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: malformed node or link ({err}); expected {what}") from None
    node_ids = tuple(str(node.get("bus_stop", k)) for node, k in zip(nodes, keys))
    return Series(series.T[:, :, None], None, adjacency, node_ids, ("inflow",), path)


def _edge_adjacency(edges, weights, num_nodes: int, path: pathlib.Path) -> np.ndarray:
    """A[i, j] = w for every listed (i, j) edge (direction as stored)."""
    edges = numeric_matrix(edges, path, "an (E, 2) edge list")
    if edges.shape[1] != 2 or np.any(edges < 0) or np.any(edges >= num_nodes) or np.any(edges != np.round(edges)):
        raise ValueError(f"{path}: expected an (E, 2) edge list of node indices 0..{num_nodes - 1}")
    weights = np.ones(len(edges)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if weights.shape != (len(edges),):
        raise ValueError(f"{path}: {weights.shape[0]} edge weights for {len(edges)} edges")
    adjacency = np.zeros((num_nodes, num_nodes), np.float32)
    adjacency[edges[:, 0].astype(int), edges[:, 1].astype(int)] = weights
    return adjacency


def _read_chickenpox(folder: pathlib.Path, info: DatasetInfo) -> Series:
    path = folder / "chickenpox.json"
    what = "keys 'FX' (T, N), 'edges' (E, 2), 'node_ids' {name: index}"
    document = read_json_file(path, what)
    values = numeric_matrix(json_field(document, "FX", path, what), path, "'FX' (T, N)")
    node_index = json_field(document, "node_ids", path, what)
    if not isinstance(node_index, dict) or sorted(node_index.values()) != list(range(values.shape[1])):
        raise ValueError(f"{path}: 'node_ids' must map the {values.shape[1]} county names to 0..{values.shape[1] - 1}")
    node_ids = tuple(sorted(node_index, key=node_index.get))
    adjacency = _edge_adjacency(json_field(document, "edges", path, what), None, values.shape[1], path)
    return Series(values[:, :, None], None, adjacency, node_ids, ("cases_standardized",), path)


def _read_england_covid(folder: pathlib.Path, info: DatasetInfo) -> Series:
    path = folder / "england_covid.json"
    what = "keys 'y' (T, N) and 'edge_mapping' with per-day 'edge_index' and 'edge_weight'"
    document = read_json_file(path, what)
    values = numeric_matrix(json_field(document, "y", path, what), path, "'y' (T, N)")
    mapping = json_field(document, "edge_mapping", path, what)
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
    return Series(values[:, :, None], None, adjacency / train_days, (), ("cases",), path)


def _read_pedalme(folder: pathlib.Path, info: DatasetInfo) -> Series:
    path = folder / "pedalme_london.json"
    what = "keys 'X' (T, N), 'edges' (E, 2), 'weights' (E,)"
    document = read_json_file(path, what)
    values = numeric_matrix(json_field(document, "X", path, what), path, "'X' (T, N)")
    adjacency = _edge_adjacency(json_field(document, "edges", path, what),
                                json_field(document, "weights", path, what), values.shape[1], path)
    return Series(values[:, :, None], None, adjacency, (), ("deliveries",), path)


def _parse_dates(column: pd.Series, path: pathlib.Path) -> np.ndarray:
    try:
        return pd.to_datetime(column).values.astype("datetime64[ns]")
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"{path}: first column {column.name!r} is not a date/time column") from None


def _read_dated_csv(folder: pathlib.Path, info: DatasetInfo, *, filename: str) -> Series:
    """LTSF csv: a date column then one column per variable; variables become nodes."""
    path = folder / filename
    what = "a 'date' column then one numeric column per variable"
    frame = read_csv_file(path, what)
    if frame.shape[1] < 2:
        raise ValueError(f"{path}: {frame.shape[1]} column(s); expected {what}")
    timestamps = _parse_dates(frame.iloc[:, 0], path)
    values = numeric_array(frame.iloc[:, 1:], path, what)
    node_ids = tuple(str(c) for c in frame.columns[1:])
    return Series(values[:, :, None], timestamps, None, node_ids, ("value",), path)


def _read_exchange_rate(folder: pathlib.Path, info: DatasetInfo) -> Series:
    path = folder / "exchange_rate.txt.gz"
    what = "gzip csv without header, one column per currency"
    values = numeric_array(read_csv_file(path, what, header=None), path, what)
    return Series(values[:, :, None], None, None, (), ("value",), path)


def _read_m4(folder: pathlib.Path, info: DatasetInfo, *, filename: str) -> Series:
    """M4 train csv: row = series (id, values right-padded with NaN) -> `[T_max, num_series, 1]`."""
    path = folder / filename
    what = "one row per series: an id column then values right-padded with empty cells"
    frame = read_csv_file(path, what)
    if frame.shape[1] < 3:
        raise ValueError(f"{path}: {frame.shape[1]} column(s); expected {what}")
    series = numeric_array(frame.iloc[:, 1:], path, what)  # [N, L]
    observed = ~np.isnan(series)
    lengths = np.where(observed.any(axis=1), series.shape[1] - np.argmax(observed[:, ::-1], axis=1), 0)
    if np.any(lengths < 2):
        empty = frame.iloc[int(np.argmax(lengths < 2)), 0]
        raise ValueError(f"{path}: series {empty!r} has fewer than 2 values; expected {what}")
    values = series[:, : int(lengths.max())].T
    node_ids = tuple(str(s) for s in frame.iloc[:, 0])
    return Series(values[:, :, None], None, None, node_ids, ("value",), path)


READERS: dict[str, Callable[[pathlib.Path, DatasetInfo], Series]] = {
    **{stem: functools.partial(_read_pems, stem=stem) for stem in PEMS_STARTS},
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


