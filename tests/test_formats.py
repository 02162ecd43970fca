"""Real-data loaders: every bundled dataset, the user formats on small files, conventions and bad input."""

import json
import pathlib
import pickle

import h5py
import numpy as np
import pandas as pd
import pytest

from factost_jax.data import formats
from factost_jax.data.formats import (DATASET_INFO, EVALUATION_DATASETS, canonical_name, default_data_dir,
                                      list_datasets, load_dataset, read_dcrnn_adjacency, read_pandas_h5)

# name -> (values shape [T, N, C], has adjacency). Shapes from the data README, after the documented choices
# (ETT truncated to 20 months, WEATHER on its full 10-minute grid, M4 padded to the longest train series).
REAL_SHAPES = {
    "LOS-LOOP": ((2016, 207, 1), True),
    "HZMETRO": ((7488, 80, 1), True),
    "HZMETRO:out": ((7488, 80, 1), True),
    "AQI36": ((8759, 36, 1), True),
    "NYCBIKE1": ((1296, 128, 2), True),
    "MONTEVIDEO_BUS": ((744, 675, 1), True),
    "CHICKENPOX_HU": ((521, 20, 1), True),
    "ENGLAND_COVID": ((61, 129, 1), True),
    "PEDALME_LONDON": ((35, 15, 1), True),
    "ETTh1": ((14400, 7, 1), False),
    "ETTh2": ((14400, 7, 1), False),
    "ETTm1": ((57600, 7, 1), False),
    "ETTm2": ((57600, 7, 1), False),
    "WEATHER": ((52704, 21, 1), False),
    "EXCHANGE_RATE": ((7588, 8, 1), False),
    "ILLNESS": ((966, 7, 1), False),
    "M4:hourly": ((960, 414, 1), False),
    "M4:weekly": ((2597, 359, 1), False),
}


# ------------------------------------------------------------------------------------------------ real data


def test_list_datasets_finds_every_bundled_set(data_dir):
    present = list_datasets(data_dir)
    assert present == [n for n in DATASET_INFO if n in REAL_SHAPES]
    # Only graph files are bundled for these: they must not be offered as loadable.
    for graph_only in ("PEMS03", "PEMS04", "PEMS07", "PEMS08", "METR-LA", "PEMS-BAY"):
        assert graph_only not in present


@pytest.mark.parametrize("name", sorted(REAL_SHAPES))
def test_real_dataset_loads(data_dir, name):
    shape, has_graph = REAL_SHAPES[name]
    ds = load_dataset(name, data_dir)
    info = DATASET_INFO[name]
    assert ds.name == name and ds.domain == info.domain and ds.freq == info.freq
    assert ds.values.shape == shape and ds.values.dtype == np.float32
    np.testing.assert_array_equal(ds.mask, ~np.isnan(ds.values))
    assert np.isfinite(ds.values[ds.mask]).all()
    assert ds.mask.mean() > 0.35  # M4 weekly is the most padded (about 39 % observed)
    assert ds.split_ratios == info.split_ratios and ds.norm == info.norm and ds.rescale == info.rescale
    if ds.timestamps is not None:
        steps = np.diff(ds.timestamps)
        assert (steps == pd.Timedelta(ds.freq).to_timedelta64()).all()
    assert (ds.adjacency is not None) == has_graph
    if has_graph:
        assert ds.adjacency.shape == (shape[1], shape[1]) and ds.adjacency.dtype == np.float32
    train_end, val_end = ds.split_bounds()
    assert train_end == int(shape[0] * info.split_ratios[0])
    assert val_end - train_end == int(shape[0] * info.split_ratios[1])


@pytest.mark.parametrize("name, bounds", [
    ("ETTh1", (8640, 11520)),  # 12 / 4 / 4 months of 30 days
    ("ETTm2", (34560, 46080)),
    ("HZMETRO", (4492, 5989)),
    ("AQI36", (5255, 7006)),
    ("WEATHER", (36892, 42162)),  # 7:1:2
    ("EXCHANGE_RATE", (5311, 6069)),
])
def test_exact_split_sizes(data_dir, name, bounds):
    assert load_dataset(name, data_dir).split_bounds() == bounds


def test_real_timestamps_and_ids(data_dir):
    hz = load_dataset("HZMETRO", data_dir)
    assert str(hz.timestamps[0])[:16] == "2019-01-01T00:00" and str(hz.timestamps[-1])[:16] == "2019-01-26T23:55"
    assert hz.channel_names == ("inflow",) and load_dataset("hzmetro:out", data_dir).channel_names == ("outflow",)
    assert not np.array_equal(hz.values, load_dataset("HZMETRO:out", data_dir).values)
    aqi = load_dataset("AQI36", data_dir)
    assert str(aqi.timestamps[0])[:16] == "2014-05-01T01:00" and aqi.node_ids[0] == "001001"
    assert 0.12 < 1 - aqi.mask.mean() < 0.14  # the real gaps (about 12.9 % NaN) stay NaN
    np.testing.assert_array_equal(aqi.adjacency, aqi.adjacency.T)
    assert (np.diag(aqi.adjacency) == 0).all() and aqi.adjacency.max() <= 1.0 and (aqi.adjacency > 0).any()
    los = load_dataset("LOS-LOOP", data_dir)
    sensor_ids, metr_adj = read_dcrnn_adjacency(data_dir / "METR-LA" / "adj_mx.pkl")
    assert los.node_ids == sensor_ids and metr_adj.shape == (207, 207)
    assert str(los.timestamps[0])[:16] == "2012-03-01T00:00"
    bike = load_dataset("NYCBIKE1", data_dir)
    assert str(bike.timestamps[-1])[:16] == "2014-09-30T23:00" and bike.channel_names == ("inflow", "outflow")
    chickenpox = load_dataset("CHICKENPOX_HU", data_dir)
    assert chickenpox.node_ids[:2] == ("BACS", "BARANYA") and pd.Timestamp(chickenpox.timestamps[0]).day_of_week == 0
    assert load_dataset("ENGLAND_COVID", data_dir).timestamps is None


def test_nycbike1_rebuild_matches_every_window(data_dir):
    series = load_dataset("NYCBIKE1", data_dir).values
    test = np.load(data_dir / "NYCBIKE1" / "test.npz")
    offsets = test["x_offsets"].ravel()
    for k in (0, 100, 863):  # every lag of a window must sit at its offset from the window's last step
        t = 431 + k
        valid = t + offsets >= 0
        np.testing.assert_array_equal(series[t + offsets[valid]], test["x"][k][valid])
        np.testing.assert_array_equal(series[t + 1], test["y"][k, 0])


def test_weather_duplicate_dropped_and_gap_filled(data_dir):
    ds = load_dataset("WEATHER", data_dir)
    empty_rows = np.flatnonzero(~ds.mask.any(axis=(1, 2)))
    assert len(empty_rows) == 9
    assert str(ds.timestamps[empty_rows[0]])[:16] == "2020-05-29T09:40"
    assert str(ds.timestamps[empty_rows[-1]])[:16] == "2020-05-29T11:00"


def test_m4_series_are_right_padded(data_dir):
    ds = load_dataset("M4", data_dir)
    assert ds.name == "M4:hourly" and ds.node_ids[0] == "H1"
    lengths = ds.mask[:, :, 0].sum(axis=0)
    assert lengths.min() == 700 and lengths.max() == 960
    for j in (0, int(np.argmin(lengths))):  # observed prefix, then only NaN
        assert ds.mask[: lengths[j], j, 0].all() and not ds.mask[lengths[j]:, j, 0].any()
    train = pd.read_csv(data_dir / "M4" / "Hourly-train.csv")
    np.testing.assert_allclose(ds.values[:lengths[0], 0, 0], train.iloc[0, 1:].dropna().to_numpy(np.float32))


def test_england_covid_graph_uses_train_days_only(data_dir):
    ds = load_dataset("ENGLAND_COVID", data_dir)
    with open(data_dir / "ENGLAND_COVID" / "england_covid.json") as handle:
        mapping = json.load(handle)["edge_mapping"]
    train_end = ds.split_bounds()[0]
    expected = np.zeros((129, 129))
    for day in range(train_end):
        edges = np.array(mapping["edge_index"][str(day)])
        expected[edges[:, 0], edges[:, 1]] += np.array(mapping["edge_weight"][str(day)])
    np.testing.assert_allclose(ds.adjacency, expected / train_end, rtol=1e-5)


def test_hzmetro_h5_fallback_matches_npz(data_dir, tmp_path):
    folder = tmp_path / "HZMETRO"
    folder.mkdir()
    for name in ("HZME_INFLOW.h5", "HZME_adj_mx.pkl"):
        (folder / name).symlink_to(data_dir / "HZMETRO" / name)
    from_h5 = load_dataset("HZMETRO", tmp_path)
    from_npz = load_dataset("HZMETRO", data_dir)
    np.testing.assert_array_equal(from_h5.values, from_npz.values)
    np.testing.assert_array_equal(from_h5.timestamps, from_npz.timestamps)
    np.testing.assert_array_equal(from_h5.adjacency, from_npz.adjacency)


def test_loaded_arrays_are_read_only_and_cached(data_dir):
    first = load_dataset("ILLNESS", data_dir)
    assert load_dataset("illness", data_dir) is first
    for array in (first.values, first.mask, first.timestamps):
        assert not array.flags.writeable
    with pytest.raises(ValueError):
        first.values[0, 0, 0] = 1.0


# ------------------------------------------------------------------------------------------------ no leakage


@pytest.mark.parametrize("name", ["HZMETRO", "AQI36", "ETTh1"])
def test_normalizer_uses_train_slice_only(data_dir, name):
    ds = load_dataset(name, data_dir)
    train_end = ds.split_bounds()[0]
    train = ds.values[:train_end].astype(np.float64)
    normalizer = ds.normalizer()
    if ds.norm == "global":
        mean, std = np.nanmean(train, axis=(0, 1))[None], np.nanstd(train, axis=(0, 1))[None]
    else:
        mean, std = np.nanmean(train, axis=0), np.nanstd(train, axis=0)
    np.testing.assert_allclose(normalizer.mean, mean, rtol=1e-4)
    np.testing.assert_allclose(normalizer.std, std, rtol=1e-4)
    garbage = ds.values.copy()
    rng = np.random.default_rng(0)
    garbage[train_end:] = rng.normal(1e6, 1e5, garbage[train_end:].shape)
    garbage[train_end::7] = np.nan
    poisoned = ds.replace(values=garbage).normalizer()
    np.testing.assert_array_equal(poisoned.mean, normalizer.mean)
    np.testing.assert_array_equal(poisoned.std, normalizer.std)


# ------------------------------------------------------------------------------------------------ user formats


def _write_pems(root: pathlib.Path, stem: str, data: np.ndarray, edges: list[tuple], ids=None, column="cost"):
    folder = root / stem
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"{stem}.npz", data=data)
    pd.DataFrame(edges, columns=["from", "to", column]).to_csv(folder / f"{stem}.csv", index=False)
    if ids is not None:
        (folder / f"{stem}.txt").write_text("".join(f"{i}\n" for i in ids))
    return folder


def test_pems08_npz_and_distance_csv(tmp_path):
    data = np.random.default_rng(0).uniform(0, 300, (30, 5, 3))
    data[3, 2, 0] = 0.0
    _write_pems(tmp_path, "PEMS08", data, [(0, 1, 10.5), (1, 2, 3.0), (4, 3, 1.0)])
    ds = load_dataset("pems_08", tmp_path)
    assert ds.name == "PEMS08" and ds.values.shape == (30, 5, 3) and ds.values.dtype == np.float32
    np.testing.assert_allclose(ds.values, data.astype(np.float32))
    assert ds.mask[3, 2, 0] and ds.null_val == 0.0  # zeros stay values; metrics mask them via null_val
    expected = np.zeros((5, 5), np.float32)
    for a, b in ((0, 1), (1, 2), (4, 3)):
        expected[a, b] = expected[b, a] = 1.0
    np.testing.assert_array_equal(ds.adjacency, expected)
    assert ds.channel_names == ("flow", "occupancy", "speed")
    assert str(ds.timestamps[0])[:16] == "2016-07-01T00:00" and str(ds.timestamps[1])[11:16] == "00:05"
    assert ds.split_bounds() == (18, 24) and ds.norm == "global" and ds.rescale
    assert "PEMS08" in list_datasets(tmp_path)


def test_pems03_maps_raw_station_ids(tmp_path):
    ids = [317842, 318711, 313344, 400001]
    data = np.arange(40 * 4, dtype=np.float64).reshape(40, 4, 1)
    _write_pems(tmp_path, "PEMS03", data, [(317842, 318711, 0.872), (400001, 313344, 1.3)], ids=ids,
                column="distance")
    ds = load_dataset("PEMS03", tmp_path)
    assert ds.node_ids == tuple(str(i) for i in ids) and ds.channel_names == ("flow",)
    expected = np.zeros((4, 4), np.float32)
    expected[0, 1] = expected[1, 0] = expected[3, 2] = expected[2, 3] = 1.0
    np.testing.assert_array_equal(ds.adjacency, expected)
    assert str(ds.timestamps[0])[:10] == "2018-09-01"


def _write_pandas_h5(path: pathlib.Path, values: np.ndarray, timestamps: pd.DatetimeIndex, ids: list[str],
                     unit: str = "ns"):
    """The key layout pandas' HDFStore fixed format writes for a float DataFrame (index = timestamps).

    pandas < 3 (the DCRNN files) stores ns with kind "datetime64"; pandas >= 3 names the unit in the kind.
    """
    with h5py.File(path, "w") as handle:
        group = handle.create_group("df")
        group.attrs.update({"pandas_type": b"frame", "nblocks": 1, "ndim": 2})
        columns = np.array(ids, dtype="S")
        group.create_dataset("axis0", data=columns)
        index = group.create_dataset("axis1", data=timestamps.as_unit(unit).asi8)
        kind = b"datetime64" if unit == "ns" else f"datetime64[{unit}]".encode()
        index.attrs.update({"kind": kind, "index_class": b"datetime"})
        group.create_dataset("block0_items", data=columns)
        group.create_dataset("block0_values", data=values).attrs["transposed"] = 1


@pytest.mark.parametrize("name, series_file, adj_file, start", [
    ("METR-LA", "metr-la.h5", "adj_mx.pkl", "2012-03-01"),
    ("PEMS-BAY", "pems-bay.h5", "adj_mx_bay.pkl", "2017-01-01"),
])
def test_dcrnn_h5_and_pickle(tmp_path, name, series_file, adj_file, start):
    ids = ["773869", "767541", "767542"]
    times = pd.date_range(start, periods=20, freq="5min")
    values = np.random.default_rng(1).uniform(0, 70, (20, 3))
    values[5, 1] = 0.0  # a failed sensor reads 0 in METR-LA
    folder = tmp_path / name
    folder.mkdir()
    _write_pandas_h5(folder / series_file, values, times, ids)
    adjacency = np.array([[1, 0.5, 0], [0.2, 1, 0], [0, 0.9, 1]], np.float32)  # asymmetric, as stored
    with open(folder / adj_file, "wb") as handle:
        pickle.dump([ids, {s: i for i, s in enumerate(ids)}, adjacency], handle, protocol=2)
    ds = load_dataset(name.lower(), tmp_path)
    assert ds.values.shape == (20, 3, 1) and ds.node_ids == tuple(ids)
    np.testing.assert_allclose(ds.values[:, :, 0], values.astype(np.float32))
    np.testing.assert_array_equal(ds.timestamps, times.values)
    np.testing.assert_array_equal(ds.adjacency, adjacency)
    assert ds.split_ratios == (0.7, 0.1, 0.2) and ds.null_val == 0.0 and ds.mask[5, 1, 0]


def test_dcrnn_adjacency_follows_series_column_order(tmp_path):
    ids = ["a1", "b2", "c3"]
    folder = tmp_path / "METR-LA"
    folder.mkdir()
    times = pd.date_range("2012-03-01", periods=10, freq="5min")
    _write_pandas_h5(folder / "metr-la.h5", np.ones((10, 3)), times, ids, unit="s")
    stored_ids = ids[::-1]
    stored = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]], np.float32)  # rows/cols in stored_ids order
    with open(folder / "adj_mx.pkl", "wb") as handle:
        pickle.dump([stored_ids, {s: i for i, s in enumerate(stored_ids)}, stored], handle, protocol=2)
    ds = load_dataset("METR-LA", tmp_path)
    np.testing.assert_array_equal(ds.adjacency, stored[::-1, ::-1])
    np.testing.assert_array_equal(ds.timestamps, times.as_unit("ns").values)


def test_read_pandas_h5_on_the_real_pandas_file(data_dir):
    values, timestamps, columns = read_pandas_h5(data_dir / "HZMETRO" / "HZME_INFLOW.h5")
    assert values.shape == (7488, 80) and values.dtype == np.float32
    assert str(timestamps[0])[:16] == "2019-01-01T00:00"
    assert columns is None  # pandas pickled this object index; positions are used


def test_electricity_ltsf_csv(tmp_path):
    folder = tmp_path / "ELECTRICITY"
    folder.mkdir()
    times = pd.date_range("2016-07-01 02:00", periods=20, freq="1h")
    frame = pd.DataFrame({"date": times.strftime("%Y-%m-%d %H:%M:%S"), "0": np.arange(20.0), "1": np.ones(20),
                          "OT": np.arange(20.0) * 2})
    frame.to_csv(folder / "electricity.csv", index=False)
    ds = load_dataset("ECL", tmp_path)
    assert ds.name == "ELECTRICITY" and ds.values.shape == (20, 3, 1) and ds.node_ids == ("0", "1", "OT")
    np.testing.assert_array_equal(ds.values[:, 2, 0], np.arange(20.0) * 2)
    np.testing.assert_array_equal(ds.timestamps, times.as_unit("ns").values)
    assert ds.split_bounds() == (14, 16) and ds.norm == "per_node" and not ds.rescale and ds.adjacency is None


def test_changed_file_is_reloaded_not_served_from_cache(tmp_path):
    _write_pems(tmp_path, "PEMS04", np.ones((10, 3, 1)), [(0, 1, 1.0)])
    assert load_dataset("PEMS04", tmp_path).values.shape == (10, 3, 1)
    _write_pems(tmp_path, "PEMS04", np.ones((12, 3, 1)), [(0, 1, 1.0)])
    assert load_dataset("PEMS04", tmp_path).values.shape == (12, 3, 1)


# ------------------------------------------------------------------------------------------------ names, table


@pytest.mark.parametrize("spelling, canonical", [
    ("etth1", "ETTh1"), ("ETTM2", "ETTm2"), ("pems_08", "PEMS08"), ("METRLA", "METR-LA"),
    ("los_loop", "LOS-LOOP"), ("metr_la", "METR-LA"),
    ("pems-bay", "PEMS-BAY"), ("Montevideo-Bus", "MONTEVIDEO_BUS"), ("hzmetro", "HZMETRO"),
    ("HZMETRO:OUT", "HZMETRO:out"), ("hzmetro:inflow", "HZMETRO"), ("m4", "M4:hourly"),
    ("M4:Weekly", "M4:weekly"), ("ecl", "ELECTRICITY"), ("synthetic", "SYNTHETIC"),
])
def test_canonical_name(spelling, canonical):
    assert canonical_name(spelling) == canonical


def test_dataset_table_conventions():
    for name, info in DATASET_INFO.items():
        assert canonical_name(name) == name and info.name == name
        assert sum(info.split_ratios) == pytest.approx(1.0)
    assert set(EVALUATION_DATASETS) == {
        "ETTh2", "ETTm2", "WEATHER", "HZMETRO", "HZMETRO:out", "LOS-LOOP", "AQI36", "PEMS03", "PEMS04", "PEMS07",
        "PEMS08", "METR-LA", "PEMS-BAY", "ELECTRICITY"}
    for name in ("PEMS03", "PEMS08", "HZMETRO", "LOS-LOOP", "NYCBIKE1", "MONTEVIDEO_BUS"):
        info = DATASET_INFO[name]
        assert info.split_ratios == (0.6, 0.2, 0.2) and info.null_val == 0.0 and info.norm == "global"
    for name in ("METR-LA", "PEMS-BAY"):
        assert DATASET_INFO[name].split_ratios == (0.7, 0.1, 0.2) and DATASET_INFO[name].null_val == 0.0
    for name in ("WEATHER", "ELECTRICITY", "EXCHANGE_RATE", "ILLNESS", "M4:hourly"):
        info = DATASET_INFO[name]
        assert info.split_ratios == (0.7, 0.1, 0.2) and np.isnan(info.null_val) and info.norm == "per_node"
        assert not info.rescale
    assert DATASET_INFO["ETTh2"].split_ratios == (0.6, 0.2, 0.2) and DATASET_INFO["ETTh2"].max_steps == 14400
    assert np.isnan(DATASET_INFO["AQI36"].null_val) and DATASET_INFO["AQI36"].rescale


def test_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTOST_DATA_DIR", str(tmp_path / "elsewhere"))
    assert default_data_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("FACTOST_DATA_DIR")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert default_data_dir() == (tmp_path / "shared" / "data").resolve()
    monkeypatch.chdir(tmp_path / "shared" / "data")  # no ../shared/data from here: fall back to the repo's sibling
    repo_root = pathlib.Path(formats.__file__).resolve().parents[2]
    assert default_data_dir() == (repo_root.parent / "shared" / "data").resolve()


def test_synthetic_needs_no_data_dir(tmp_path, monkeypatch):
    pytest.importorskip("factost_jax.data.synthetic")
    monkeypatch.setenv("FACTOST_DATA_DIR", str(tmp_path / "absent"))
    ds = load_dataset("SYNTHETIC")
    assert ds.name == "SYNTHETIC" and ds.num_nodes == 64 and ds.domain == "synthetic"
    assert "SYNTHETIC" not in list_datasets(tmp_path)


# ------------------------------------------------------------------------------------------------ bad input


def test_unknown_names():
    with pytest.raises(ValueError, match=r"unknown dataset 'PEMS09': expected one of .*PEMS08"):
        load_dataset("PEMS09")
    with pytest.raises(ValueError, match="unknown variant 'sideways' of dataset HZMETRO"):
        canonical_name("HZMETRO:sideways")
    with pytest.raises(ValueError, match="dataset ETTh1 has no variants"):
        canonical_name("ETTh1:hourly")


def test_missing_files(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("ETTh1", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"ETT not found"):
        load_dataset("ETTh1", tmp_path)
    folder = _write_pems(tmp_path, "PEMS08", np.ones((10, 3, 1)), [(0, 1, 1.0)])
    (folder / "PEMS08.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"PEMS08/PEMS08\.csv not found"):
        load_dataset("PEMS08", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"PEMS08\.npz not found: only the graph files \(PEMS08\.csv\)"):
        load_dataset("PEMS08", data_dir)
    with pytest.raises(FileNotFoundError, match=r"metr-la\.h5 not found: only the graph files \(adj_mx\.pkl"):
        load_dataset("METR-LA", data_dir)


def test_wrong_npz_content(tmp_path):
    folder = _write_pems(tmp_path, "PEMS08", np.ones((10, 3)), [(0, 1, 1.0)])
    with pytest.raises(ValueError, match=r"PEMS08\.npz: expected a numeric \(T, N, C\) array .* shape \(10, 3\)"):
        load_dataset("PEMS08", tmp_path)
    np.savez(folder / "PEMS08.npz", flow=np.ones((10, 3, 1)))
    with pytest.raises(ValueError, match=r"PEMS08\.npz: expected an \.npz archive with key\(s\) \['data'\]"):
        load_dataset("PEMS08", tmp_path)
    (folder / "PEMS08.npz").write_text("not an archive")
    with pytest.raises(ValueError, match=r"PEMS08\.npz: expected an \.npz archive"):
        load_dataset("PEMS08", tmp_path)


def test_bad_graphs(tmp_path):
    _write_pems(tmp_path, "PEMS04", np.ones((10, 3, 1)), [(0, 7, 1.0)])
    with pytest.raises(ValueError, match=r"PEMS04\.csv: node index 7 out of range for N=3 nodes"):
        load_dataset("PEMS04", tmp_path)
    _write_pems(tmp_path, "PEMS03", np.ones((10, 2, 1)), [(11, 99, 1.0)], ids=[11, 12], column="distance")
    with pytest.raises(ValueError, match=r"PEMS03\.csv: station id 99 is not in the station id list"):
        load_dataset("PEMS03", tmp_path)
    _write_pems(tmp_path, "PEMS07", np.ones((10, 2, 1)), [(0, 1, 1.0)])
    (tmp_path / "PEMS07" / "PEMS07.csv").write_text("")
    with pytest.raises(ValueError, match=r"PEMS07\.csv: file is empty; expected a header 'from,to,cost'"):
        load_dataset("PEMS07", tmp_path)


def test_bad_csv(tmp_path):
    folder = tmp_path / "ETT"
    folder.mkdir()
    (folder / "ETTh1.csv").write_text("")
    with pytest.raises(ValueError, match=r"ETTh1\.csv: file is empty; expected a 'date' column"):
        load_dataset("ETTh1", tmp_path)
    (folder / "ETTh1.csv").write_text("date,HUFL,OT\n")
    with pytest.raises(ValueError, match=r"ETTh1\.csv: file has no data rows"):
        load_dataset("ETTh1", tmp_path)
    (folder / "ETTh1.csv").write_text("date,HUFL,OT\n2016-07-01 00:00:00,1.0,x\n2016-07-01 01:00:00,2.0,3.0\n")
    with pytest.raises(ValueError, match=r"ETTh1\.csv: non-numeric values"):
        load_dataset("ETTh1", tmp_path)
    (folder / "ETTh1.csv").write_text("date,HUFL,OT\n2016-07-01 01:00:00,1.0,2\n2016-07-01 00:00:00,2.0,3.0\n")
    with pytest.raises(ValueError, match=r"ETTh1\.csv: timestamps are not in increasing order"):
        load_dataset("ETTh1", tmp_path)


def test_bad_h5_and_pickle(tmp_path):
    folder = tmp_path / "METR-LA"
    folder.mkdir()
    with h5py.File(folder / "metr-la.h5", "w") as handle:
        group = handle.create_group("df")
        group.create_dataset("axis0", data=np.array([b"a"]))
        group.create_dataset("axis1", data=np.arange(5, dtype=np.int64))
        group.create_dataset("block0_values", data=np.ones(5))
    with open(folder / "adj_mx.pkl", "wb") as handle:
        pickle.dump([["a"], {"a": 0}, np.ones((1, 1), np.float32)], handle, protocol=2)
    with pytest.raises(ValueError, match=r"metr-la\.h5: expected numeric 2-D block0_values \[T, N\]"):
        load_dataset("METR-LA", tmp_path)
    _write_pandas_h5(folder / "metr-la.h5", np.ones((5, 2)), pd.date_range("2012-03-01", periods=5, freq="5min"),
                     ["a", "b"])
    with pytest.raises(ValueError, match=r"adj_mx\.pkl: adjacency is \(1, 1\) but the series has N=2 nodes"):
        load_dataset("METR-LA", tmp_path)
    (folder / "adj_mx.pkl").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"adj_mx\.pkl: not a readable pickle"):
        load_dataset("METR-LA", tmp_path)
    (folder / "metr-la.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match=r"metr-la\.h5: not a readable HDF5 file"):
        load_dataset("METR-LA", tmp_path)
