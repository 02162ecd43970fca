"""A user's own file as a dataset: HZMETRO written out as a long CSV equals the registered loader (values,
windows, evaluation numbers), every accepted layout reads as documented, and every bad input is one line."""

import pathlib

import numpy as np
import pandas as pd
import pytest

from factost_jax.data import graph, user_files
from factost_jax.data.formats import load_dataset
from factost_jax.data.st_pipeline import STDataConfig, load_st_dataset, make_st_train_dataset
from factost_jax.data.user_files import FileSourceOptions, load_file_dataset
from factost_jax.data.windows import split_target_starts
from factost_jax.eval import baselines
from factost_jax.eval.evaluate import evaluate


# ------------------------------------------------------------------------------------------------ HZMETRO equivalence
@pytest.fixture(scope="module")
def hzmetro_files(data_dir, tmp_path_factory):
    """(registered HZMETRO, its long CSV, its adjacency .npy): sensor-major rows in the registered node order."""
    registered = load_dataset("HZMETRO", data_dir)
    steps, nodes, _ = registered.values.shape
    folder = tmp_path_factory.mktemp("hz")
    frame = pd.DataFrame({"unique_id": np.tile(np.asarray(registered.node_ids), steps),
                          "ds": np.repeat(registered.timestamps, nodes),
                          "y": registered.values[:, :, 0].reshape(-1)})
    csv = folder / "hzmetro_long.csv"
    frame.to_csv(csv, index=False)
    np.save(folder / "adj.npy", registered.adjacency)
    return registered, csv, folder / "adj.npy"


def test_hzmetro_long_csv_equals_registered_loader(hzmetro_files):
    registered, csv, adjacency = hzmetro_files
    mine = load_dataset(str(csv), file_options={"adjacency": str(adjacency), "null_val": 0.0})
    assert mine.name == "hzmetro_long.csv" and mine.freq == registered.freq == "5min"
    np.testing.assert_array_equal(mine.values, registered.values)
    np.testing.assert_array_equal(mine.timestamps, registered.timestamps)
    np.testing.assert_array_equal(mine.adjacency, registered.adjacency)
    assert mine.node_ids == registered.node_ids
    assert (mine.split_ratios, mine.norm, mine.null_val, mine.rescale) == (
        registered.split_ratios, registered.norm, registered.null_val, registered.rescale)
    np.testing.assert_array_equal(mine.normalizer().mean, registered.normalizer().mean)
    np.testing.assert_array_equal(mine.normalizer().std, registered.normalizer().std)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(split_target_starts(mine, split, 12, 12),
                                      split_target_starts(registered, split, 12, 12))
    for name in ("seasonal_naive_day", "historical_average"):
        got = evaluate(mine, baselines.make_baseline(name, mine), 12, 12, progress=False)
        want = evaluate(registered, baselines.make_baseline(name, registered), 12, 12, progress=False)
        assert got["num_windows"] == want["num_windows"]
        for step, row in want["metrics"].items():
            for metric, value in row.items():
                assert got["metrics"][step][metric] == pytest.approx(value, rel=1e-6, abs=1e-6), (name, step, metric)


def test_hzmetro_long_csv_gives_the_same_training_windows(hzmetro_files, data_dir):
    registered, csv, adjacency = hzmetro_files
    common = dict(input_len=12, horizon=12, batch_size=8, read_threads=0, prefetch_batches=0)
    mine_config = STDataConfig(dataset=str(csv), adjacency=str(adjacency), null_val=0.0, **common)
    theirs_config = STDataConfig(dataset="HZMETRO", data_dir=str(data_dir), **common)
    mine, theirs = load_st_dataset(mine_config), load_st_dataset(theirs_config)
    mine_batches = iter(make_st_train_dataset(mine_config, mine, include_provenance=True))
    their_batches = iter(make_st_train_dataset(theirs_config, theirs, include_provenance=True))
    for _ in range(3):
        got, want = next(mine_batches), next(their_batches)
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_file_options_are_refused_for_a_registered_dataset():
    with pytest.raises(ValueError, match=r"data.nodes only applies to a file dataset"):
        STDataConfig(dataset="HZMETRO", nodes="nodes.csv")


# ------------------------------------------------------------------------------------------------ layouts
def _long_frame(steps=40, sensors=("a", "b", "c"), freq="h", start="2024-01-01"):
    stamps = pd.date_range(start, periods=steps, freq=freq)
    rng = np.random.default_rng(0)
    return pd.DataFrame({"unique_id": np.repeat(sensors, steps), "ds": np.tile(stamps, len(sensors)),
                         "y": rng.normal(size=steps * len(sensors)).round(3)})


def test_long_parquet_wide_csv_and_npz_read_the_same_panel(tmp_path):
    frame = _long_frame()
    frame.to_parquet(tmp_path / "long.parquet")
    wide = frame.pivot(index="ds", columns="unique_id", values="y").reset_index().rename(columns={"ds": "time"})
    wide.to_csv(tmp_path / "wide.csv", index=False)
    panel = wide[["a", "b", "c"]].to_numpy()
    np.savez(tmp_path / "data.npz", data=panel, timestamps=wide["time"].to_numpy().astype("datetime64[ns]"))
    np.savez(tmp_path / "stack.npz", data=np.stack([panel, 2 * panel], axis=2))
    long_ds = load_file_dataset(tmp_path / "long.parquet")
    wide_ds = load_file_dataset(tmp_path / "wide.csv")
    npz_ds = load_file_dataset(tmp_path / "data.npz")
    stacked = load_file_dataset(tmp_path / "stack.npz", {"freq": "h"})
    for ds in (long_ds, wide_ds, npz_ds):
        np.testing.assert_allclose(ds.values[:, :, 0], panel, rtol=1e-6)
        assert ds.freq == "h" and ds.split_ratios == (0.6, 0.2, 0.2) and ds.norm == "global"
        assert np.isnan(ds.null_val) and ds.rescale and ds.timestamps is not None
    assert long_ds.node_ids == wide_ds.node_ids == ("a", "b", "c") and npz_ds.node_ids == ("0", "1", "2")
    assert stacked.values.shape == (40, 3, 2) and stacked.timestamps is None and stacked.freq == "h"


def test_long_table_order_gaps_renamed_columns_and_options(tmp_path):
    frame = _long_frame().rename(columns={"unique_id": "sensor", "ds": "time", "y": "flow"})
    frame = frame.drop(index=[5, 6]).sample(frac=1.0, random_state=0)  # gaps, rows in any order
    frame.to_csv(tmp_path / "my.csv", index=False)
    options = {"id_column": "sensor", "timestamp_column": "time", "target": "flow", "split_ratios": (0.7, 0.1, 0.2),
               "null_val": 0.0, "norm": "per_node"}
    ds = load_file_dataset(tmp_path / "my.csv", options)
    expected = frame.pivot(index="time", columns="sensor", values="flow")
    assert ds.values.shape == (40, 3, 1)
    assert set(ds.node_ids) == {"a", "b", "c"}
    assert np.isnan(ds.values[5:7, ds.node_ids.index("a"), 0]).all()
    np.testing.assert_allclose(ds.values[:, :, 0], expected[list(ds.node_ids)].to_numpy(), rtol=1e-6)
    assert (ds.split_ratios, ds.null_val, ds.norm) == ((0.7, 0.1, 0.2), 0.0, "per_node")


def test_nodes_file_gives_the_distance_kernel_and_adjacency_csv_is_reordered(tmp_path):
    _long_frame().to_csv(tmp_path / "my.csv", index=False)
    latitude, longitude = np.array([30.0, 30.1, 31.0]), np.array([120.0, 120.1, 121.0])
    pd.DataFrame({"unique_id": ["c", "a", "b"], "latitude": latitude[[2, 0, 1]],
                  "longitude": longitude[[2, 0, 1]]}).to_csv(tmp_path / "nodes.csv", index=False)
    ds = load_file_dataset(tmp_path / "my.csv", {"nodes": "nodes.csv"})  # found next to the data file
    expected = graph.gaussian_kernel_adjacency(graph.haversine_km(latitude, longitude))
    np.testing.assert_allclose(ds.adjacency, expected)
    assert ds.adjacency[0, 1] > 0 and ds.adjacency[0, 0] == 0
    matrix = np.arange(9, dtype=float).reshape(3, 3)
    pd.DataFrame(matrix[np.ix_([2, 0, 1], [2, 0, 1])], columns=["c", "a", "b"]).to_csv(tmp_path / "adj.csv", index=False)
    np.testing.assert_array_equal(load_file_dataset(tmp_path / "my.csv", {"adjacency": "adj.csv"}).adjacency, matrix)
    pd.DataFrame(matrix).to_csv(tmp_path / "plain.csv", index=False, header=False)
    np.testing.assert_array_equal(load_file_dataset(tmp_path / "my.csv", {"adjacency": "plain.csv"}).adjacency, matrix)


# ------------------------------------------------------------------------------------------------ bad input
def _write(tmp_path, text, name="bad.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _one_line_error(path, options=None, match=""):
    with pytest.raises(ValueError) as info:
        load_file_dataset(path, options)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert match in message, message
    return message


LONG_HEADER = "unique_id,ds,y\n"


def _rows(stamps, sensors=("a", "b"), value="1"):
    return "".join(f"{s},{t},{value}\n" for s in sensors for t in stamps)


HOURS = [f"2024-01-01 {h:02d}:00" for h in range(24)]


@pytest.mark.parametrize("case, text, options, expected", [
    ("missing columns", "unique_id,ds,value\na,2024-01-01,1\n", None, "missing column(s) ['y']"),
    ("renamed id column", "sensor,ds,y\na,2024-01-01,1\n", None, "missing column(s) ['unique_id']"),
    ("non-numeric value", LONG_HEADER + _rows(HOURS[:3]) + "a,2024-01-01 03:00,abc\n", None,
     "column 'y', data row 7: 'abc' is not a number"),
    ("duplicate rows", LONG_HEADER + _rows(HOURS[:4]) + "b,2024-01-01 02:00,5\n", None,
     "duplicate rows for sensor 'b' at 2024-01-01 02:00:00 (data rows 7 and 9)"),
    ("irregular timestamps", LONG_HEADER + _rows(["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 01:30",
                                                  "2024-01-01 03:10"]), None, "sensor 'a' has irregular timestamps"),
    ("unparseable timestamp", LONG_HEADER + _rows(HOURS[:3]) + "a,not a date,1\n", None,
     "column 'ds', data row 7: 'not a date' is not a date/time"),
    ("different grids", LONG_HEADER + _rows(HOURS[:6], ("a",)) +
     _rows([f"2024-01-01 {h:02d}:30" for h in range(6)], ("b",)), None, "sensors are on different grids"),
    ("different steps", LONG_HEADER + _rows(HOURS[:6], ("a",)) + _rows(HOURS[:12:2], ("b",)), None,
     "sensors are on different grids: 'a' every h, 'b' every 2h"),
    ("a sensor with no data in a split", LONG_HEADER + _rows(HOURS, ("a",)) + _rows(HOURS[:10], ("b",)), None,
     "sensor(s) ['b'] have no observed value in the val split"),
    ("header only", LONG_HEADER, None, "has no rows"),
    ("wide table with a non-time column", "station,a,b\nx,1,2\ny,3,4\n", None, "'x' is not a date/time"),
    ("freq that contradicts the stamps", LONG_HEADER + _rows(HOURS), {"freq": "5min"},
     "freq='5min' was given but the timestamps step every h"),
])
def test_bad_table_gets_one_line(tmp_path, case, text, options, expected):
    path = _write(tmp_path, text)
    message = _one_line_error(path, options, expected)
    assert str(path) in message


def test_empty_file_unsupported_suffix_and_missing_file(tmp_path):
    _one_line_error(_write(tmp_path, ""), None, "is empty")
    _one_line_error(_write(tmp_path, "x", "data.xlsx"), None, "unsupported file type '.xlsx'")
    with pytest.raises(FileNotFoundError, match="absent.csv not found"):
        load_file_dataset(tmp_path / "absent.csv")
    _one_line_error(_write(tmp_path, "not parquet", "broken.parquet"), None, "not a readable parquet table")


def test_too_short_for_the_windows_names_the_file_and_split(tmp_path):
    path = _write(tmp_path, LONG_HEADER + _rows(HOURS))
    with pytest.raises(ValueError, match=r"dataset bad.csv: no val window fits input_len=4 \+ horizon=6"):
        split_target_starts(load_file_dataset(path), "val", 4, 6)


def test_bad_npz(tmp_path):
    np.savez(tmp_path / "nokey.npz", values=np.ones((5, 2)))
    _one_line_error(tmp_path / "nokey.npz", None, "no key 'data' (keys: ['values'])")
    np.savez(tmp_path / "nofreq.npz", data=np.ones((5, 2)))
    _one_line_error(tmp_path / "nofreq.npz", None, "no 'timestamps'; set freq")
    np.savez(tmp_path / "shape.npz", data=np.ones(5))
    _one_line_error(tmp_path / "shape.npz", {"freq": "h"}, "'data' has shape (5,)")


@pytest.mark.parametrize("nodes_text, expected", [
    ("unique_id,latitude,longitude\na,30,120\nz,30.1,120.1\n",
     "its sensor ids do not match the data's: 1 data sensor(s) absent from it ['b']; 1 id(s) not in the data ['z']"),
    ("unique_id,lat,lon\na,30,120\nb,30.1,120.1\n", "missing column(s) ['latitude', 'longitude']"),
    ("unique_id,latitude,longitude\na,north,120\nb,30.1,120.1\n", "column 'latitude', data row 1: 'north' is not a number"),
])
def test_bad_node_metadata(tmp_path, nodes_text, expected):
    data = _write(tmp_path, LONG_HEADER + _rows(HOURS))
    nodes = _write(tmp_path, nodes_text, "nodes.csv")
    message = _one_line_error(data, {"nodes": str(nodes)}, expected)
    assert str(nodes) in message


def test_bad_adjacency_and_options(tmp_path):
    data = _write(tmp_path, LONG_HEADER + _rows(HOURS))
    np.save(tmp_path / "adj.npy", np.ones((3, 3)))
    _one_line_error(data, {"adjacency": str(tmp_path / "adj.npy")}, "shape (3, 3) but the data has N=2 sensors")
    with pytest.raises(ValueError, match="split_ratios must be 3 positive fractions summing to 1"):
        FileSourceOptions(split_ratios=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"file-dataset options: unknown field\(s\) \['colour'\]"):
        FileSourceOptions.from_mapping({"colour": "red"})


def test_is_file_source():
    assert user_files.is_file_source("my.csv") and user_files.is_file_source(pathlib.Path("x"))
    assert user_files.is_file_source("/data/net.PARQUET") and user_files.is_file_source("a.npz")
    assert not user_files.is_file_source("HZMETRO") and not user_files.is_file_source("")


def test_recorded_file_options_of_an_adapt_run_and_of_a_fit(tmp_path):
    """launch/evaluate.py --checkpoint reuses the options the adaptation used: a launch/adapt.py run's
    (run_config.data) on the same file only; a Forecaster.fit's (metadata["file_options"], no path to
    compare) on any file, so its saved model scores like its fit report without --data_option."""
    run = {"run_config": {"data": {"dataset": str(tmp_path / "my.csv"), "null_val": 0.0,
                                   "split_ratios": [0.7, 0.1, 0.2], "norm": None}}}
    assert user_files.recorded_file_options(run, str(tmp_path / "my.csv")) == {"null_val": 0.0,
                                                                                "split_ratios": (0.7, 0.1, 0.2)}
    assert user_files.recorded_file_options(run, str(tmp_path / "other.csv")) == {}
    fit = {"run_config": {"data": {"dataset": "DataFrame", "null_val": None}},
           "file_options": FileSourceOptions(null_val=0.0, target="flow").to_dict()}
    assert user_files.recorded_file_options(fit, str(tmp_path / "any.csv")) == {
        "id_column": "unique_id", "timestamp_column": "ds", "target": "flow", "null_val": 0.0}
    assert user_files.recorded_file_options(fit, "HZMETRO") == {}  # a registered dataset has its own conventions
