"""Sensor graphs from side files: node coordinates -> distance-kernel adjacency, or an adjacency matrix.

Both return `[N, N]` float32 in the data's sensor order and raise one ValueError naming the file and
what does not match (ids, shape, a non-numeric cell).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

EARTH_RADIUS_KM = 6371.0088
KERNEL_THRESHOLD = 0.1
_MAX_SHOWN = 5


def haversine_km(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """`[N, N]` great-circle distances in km between points given in degrees `[N]`."""
    lat, lon = np.radians(lat_deg), np.radians(lon_deg)
    half_dlat = (lat[:, None] - lat[None, :]) / 2
    half_dlon = (lon[:, None] - lon[None, :]) / 2
    a = np.sin(half_dlat) ** 2 + np.cos(lat)[:, None] * np.cos(lat)[None, :] * np.sin(half_dlon) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def gaussian_kernel_adjacency(distances: np.ndarray, threshold: float = KERNEL_THRESHOLD) -> np.ndarray:
    """Thresholded Gaussian kernel `exp(-(d / std(d))^2)` of `[N, N]` distances, zero diagonal.

    The GRIN/DCRNN convention; the AQI36 reader (`dataset_readers.py`) and user node files share it.
    """
    off_diagonal = distances[~np.eye(len(distances), dtype=bool)]
    scale = float(np.std(off_diagonal)) if off_diagonal.size else 1.0
    weights = np.exp(-np.square(distances / max(scale, 1e-12)))
    weights[weights < threshold] = 0.0
    np.fill_diagonal(weights, 0.0)
    return weights.astype(np.float32)


def _read_side_table(path: pathlib.Path, what: str, **kwargs) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({what})")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty; expected {what}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: not a readable table ({' '.join(str(error).split())[:200]}); expected {what}") from None


def _id_mismatch(path: pathlib.Path, node_ids: tuple[str, ...], found: list[str]) -> str | None:
    """A one-line description of how `found` ids differ from the data's, or None when they match as sets."""
    missing = [n for n in node_ids if n not in set(found)]
    extra = [f for f in found if f not in set(node_ids)]
    if not missing and not extra:
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} data sensor(s) absent from it {missing[:_MAX_SHOWN]}")
    if extra:
        parts.append(f"{len(extra)} id(s) not in the data {extra[:_MAX_SHOWN]}")
    return f"{path}: its sensor ids do not match the data's: " + "; ".join(parts)


def adjacency_from_nodes(path: pathlib.Path, node_ids: tuple[str, ...], id_column: str = "unique_id") -> np.ndarray:
    """Node metadata (`id, latitude, longitude` per sensor) -> `[N, N]` kernel of haversine distances."""
    frame = _read_side_table(path, f"node metadata with columns {id_column}, latitude, longitude")
    # The data's id column name, else the documented `unique_id`.
    id_name = id_column if id_column in frame.columns else "unique_id"
    what = f"node metadata with columns {id_name}, latitude, longitude (one row per sensor)"
    columns = [id_name, "latitude", "longitude"]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; it has {list(frame.columns)[:10]}; expected {what}")
    ids = [str(x) for x in frame[id_name]]
    duplicated = pd.Index(ids).duplicated()
    if duplicated.any():
        raise ValueError(f"{path}: sensor {ids[int(np.flatnonzero(duplicated)[0])]!r} is listed twice")
    mismatch = _id_mismatch(path, node_ids, ids)
    if mismatch:
        raise ValueError(mismatch)
    coordinates = {}
    for column in ("latitude", "longitude"):
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = np.flatnonzero(numbers.isna().to_numpy())
        if bad.size:
            raise ValueError(f"{path}: column {column!r}, data row {int(bad[0]) + 1}: "
                             f"{frame[column].iloc[int(bad[0])]!r} is not a number")
        coordinates[column] = numbers.to_numpy(np.float64)
    if np.any(np.abs(coordinates["latitude"]) > 90) or np.any(np.abs(coordinates["longitude"]) > 180):
        raise ValueError(f"{path}: latitude must lie in [-90, 90] and longitude in [-180, 180] (degrees)")
    order = pd.Index(ids).get_indexer(list(node_ids))
    return gaussian_kernel_adjacency(haversine_km(coordinates["latitude"][order], coordinates["longitude"][order]))


def read_adjacency(path: pathlib.Path, node_ids: tuple[str, ...]) -> np.ndarray:
    """`[N, N]` adjacency from `.npy`, or a CSV square matrix: headerless in the data's sensor order,
    or with a header row of sensor ids (then rows and columns are taken in that order)."""
    n = len(node_ids)
    what = f"an [N={n}, N={n}] matrix (.npy, or CSV: headerless in the data's sensor order, or a header of sensor ids)"
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found ({what})")
        try:
            matrix = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise ValueError(f"{path}: not a readable .npy ({error}); expected {what}") from None
    else:
        frame = _read_side_table(path, what, header=None, dtype=str)
        first_row = pd.to_numeric(frame.iloc[0], errors="coerce")
        if first_row.isna().all():  # a header of sensor ids
            header = [str(x).strip() for x in frame.iloc[0]]
            mismatch = _id_mismatch(path, node_ids, header)
            if mismatch:
                raise ValueError(mismatch)
            body = frame.iloc[1:]
            order = pd.Index(header).get_indexer(list(node_ids))
        else:
            body, order = frame, None
        numbers = body.apply(pd.to_numeric, errors="coerce")
        bad = np.argwhere(numbers.isna().to_numpy())
        if bad.size:
            row, col = bad[0]
            raise ValueError(f"{path}: row {int(row) + 1}, column {int(col) + 1}: {body.iat[row, col]!r} is not a number")
        matrix = numbers.to_numpy(np.float64)
        if order is not None and matrix.shape == (n, n):
            matrix = matrix[np.ix_(order, order)]
    if matrix.shape != (n, n):
        raise ValueError(f"{path}: shape {matrix.shape} but the data has N={n} sensors; expected {what}")
    if not np.issubdtype(matrix.dtype, np.number) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"{path}: the adjacency must hold finite numbers")
    return matrix.astype(np.float32)
