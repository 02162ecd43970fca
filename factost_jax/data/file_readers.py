"""Readers of the on-disk file formats (PEMS `.npz` + edge csv, pandas HDF5, DCRNN adjacency pickles) and
the checked helpers every dataset reader uses: each bad file is one error naming the file and what
was expected.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import zipfile

import h5py
import numpy as np
import pandas as pd

from factost_jax.data.registry import PathLike


def require_file(path: PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return path


def load_npz(path: pathlib.Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays under `keys` of an `.npz` file (no pickled objects)."""
    require_file(path)
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


def read_csv_file(path: pathlib.Path, what: str, **kwargs) -> pd.DataFrame:
    """`pd.read_csv` with a one-line error naming the file and its expected layout."""
    require_file(path)
    try:
        frame = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: file is empty; expected {what}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot parse ({err}); expected {what}") from None
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"{path}: file has no data rows; expected {what}")
    return frame


def numeric_array(frame: pd.DataFrame | np.ndarray, path: pathlib.Path, what: str) -> np.ndarray:
    """The table as float64, or a ValueError naming the file when a cell is not a number."""
    try:
        return np.asarray(frame, dtype=np.float64)
    except (ValueError, TypeError):
        raise ValueError(f"{path}: non-numeric values; expected {what}") from None


def read_json_file(path: pathlib.Path, what: str) -> dict:
    require_file(path)
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


def json_field(document: dict, key: str, path: pathlib.Path, what: str):
    if key not in document:
        raise ValueError(f"{path}: missing key {key!r}; expected {what}")
    return document[key]


def numeric_matrix(rows, path: pathlib.Path, what: str) -> np.ndarray:
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


def decode_ids(array: np.ndarray) -> tuple[str, ...] | None:
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


def square_adjacency(adjacency: np.ndarray, path: pathlib.Path, num_nodes: int | None = None) -> np.ndarray:
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
    data = load_npz(path, ("data",))["data"]
    if data.ndim != 3 or not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"{path}: expected a numeric (T, N, C) array under key 'data', "
                         f"got shape {data.shape} dtype {data.dtype}")
    return data.astype(np.float32)


def read_id_list(path: PathLike) -> tuple[str, ...]:
    """One id per line (PEMS03.txt)."""
    path = require_file(path)
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
    edges = read_csv_file(path, what)
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
        endpoints = numeric_array(edges[["from", "to"]], path, what)
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
    path = require_file(path)
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
        columns = decode_ids(group["axis0"][()])
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
    path = require_file(path)
    try:
        with open(path, "rb") as handle:
            stored = pickle.load(handle, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise ValueError(f"{path}: not a readable pickle ({err}); expected [sensor_ids, sensor_id_to_ind, adj_mx]") \
            from None
    if isinstance(stored, (list, tuple)) and len(stored) == 3:
        sensor_ids = tuple(_as_str(s) for s in stored[0])
        adjacency = square_adjacency(stored[2], path)
        if len(sensor_ids) != adjacency.shape[0]:
            raise ValueError(f"{path}: {len(sensor_ids)} sensor ids for a {adjacency.shape} adjacency")
        return sensor_ids, adjacency
    if isinstance(stored, np.ndarray):
        return None, square_adjacency(stored, path)
    raise ValueError(f"{path}: expected [sensor_ids, sensor_id_to_ind, adj_mx] or an [N, N] array, "
                     f"got {type(stored).__name__}")


