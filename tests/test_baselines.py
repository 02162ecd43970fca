"""Evaluation windows, baselines on hand-made series, and the evaluator (including real HZMETRO)."""

import math

import numpy as np
import pytest

from factost_jax.data.types import STDataset
from factost_jax.data.windows import (WindowBatch, gather_calendar, gather_windows, split_target_starts,
                                      window_indices)
from factost_jax.eval import baselines
from factost_jax.eval.evaluate import evaluate, metric_scale_series


def make_dataset(values, freq="6h", **kwargs):
    values = np.asarray(values, np.float32)
    if values.ndim == 2:
        values = values[:, :, None]
    return STDataset(name="toy", values=values, freq=freq, **kwargs)


def make_batch(dataset, starts, input_len, horizon, values_full=None):
    series = dataset.values[:, :, 0] if values_full is None else values_full
    context, _ = window_indices(np.asarray(starts), input_len, horizon)
    return WindowBatch(context=series[context], target_start=np.asarray(starts, np.int64), values_full=series,
                       **gather_calendar(dataset, np.asarray(starts), input_len, horizon))


# --------------------------------------------------------------------------- windows
def test_window_counts_and_boundaries_per_split():
    dataset = make_dataset(np.zeros((100, 2)))  # 6:2:2 -> train [0, 60), val [60, 80), test [80, 100)
    train = split_target_starts(dataset, "train", 5, 3)
    val = split_target_starts(dataset, "val", 5, 3)
    test = split_target_starts(dataset, "test", 5, 3)
    assert (train[0], train[-1], train.size) == (5, 57, 53)  # input [0, 5) .. target [57, 60)
    assert (val[0], val[-1], val.size) == (60, 77, 18)  # first val input reaches back into train
    assert (test[0], test[-1], test.size) == (80, 97, 18)  # last target [97, 100)
    assert test.dtype == np.int64
    # A long input may reach into earlier splits but never before step 0.
    assert split_target_starts(dataset, "test", 85, 3)[0] == 85
    with pytest.raises(ValueError, match=r"toy: no val window fits input_len=70 \+ horizon=20"):
        split_target_starts(dataset, "val", 70, 20)
    assert split_target_starts(dataset, "val", 60, 20).tolist() == [60]
    with pytest.raises(ValueError, match="no train window fits input_len=58"):
        split_target_starts(dataset, "train", 58, 3)
    with pytest.raises(ValueError, match="no test window fits input_len=12 \\+ horizon=21"):
        split_target_starts(dataset, "test", 12, 21)
    with pytest.raises(ValueError, match="horizon must be a positive integer"):
        split_target_starts(dataset, "test", 12, 0)
    with pytest.raises(ValueError, match="unknown split"):
        split_target_starts(dataset, "dev", 12, 3)


def test_gather_windows_and_calendar():
    values = np.arange(40, dtype=np.float32).reshape(10, 2, 2)  # values[t, n, c] = 4t + 2n + c
    x, y = gather_windows(values, np.array([3, 5]), 3, 2)
    assert x.shape == (2, 3, 2, 2) and y.shape == (2, 2, 2, 2)
    np.testing.assert_array_equal(x[:, :, 0, 0], [[0, 4, 8], [8, 12, 16]])
    np.testing.assert_array_equal(y[:, :, 1, 1], [[15, 19], [23, 27]])
    with pytest.raises(ValueError, match="window starts"):
        gather_windows(values, np.array([2]), 3, 2)
    with pytest.raises(ValueError, match="window starts"):
        gather_windows(values, np.array([9]), 3, 2)

    dataset = make_dataset(np.zeros((40, 1)), freq="6h")  # no timestamps: Monday 00:00, 4 slots a day
    calendar = gather_calendar(dataset, np.array([5, 28]), 2, 3)
    np.testing.assert_array_equal(calendar["context_time_of_day"], [[3, 0], [2, 3]])
    np.testing.assert_array_equal(calendar["context_day_of_week"], [[0, 1], [6, 6]])
    np.testing.assert_array_equal(calendar["future_time_of_day"], [[1, 2, 3], [0, 1, 2]])
    np.testing.assert_array_equal(calendar["future_day_of_week"], [[1, 1, 1], [0, 0, 0]])
    assert all(a.dtype == np.int32 for a in calendar.values())


# --------------------------------------------------------------------------- baselines
def test_last_value_carries_back_over_nan():
    series = np.array([[1, 10], [2, np.nan], [3, np.nan], [np.nan, np.nan], [5, 50], [6, 60]], np.float32)
    dataset = make_dataset(series)
    batch = make_batch(dataset, [4], input_len=3, horizon=2)  # input steps 1..3
    forecast = baselines.make_baseline("last_value", dataset)(batch)
    assert forecast.shape == (1, 2, 2) and forecast.dtype == np.float32
    # node 0: last observed input is step 2 (=3); node 1's input is all NaN: its step-0 value (=10)
    np.testing.assert_array_equal(forecast[0], [[3, 10], [3, 10]])


def test_context_mean_skips_nan_and_carries_back():
    series = np.array([[1, 10], [2, np.nan], [4, np.nan], [np.nan, np.nan], [5, 50], [6, 60]], np.float32)
    dataset = make_dataset(series)
    forecast = baselines.make_baseline("context_mean", dataset)(make_batch(dataset, [4], input_len=3, horizon=2))
    assert forecast.shape == (1, 2, 2) and forecast.dtype == np.float32
    # node 0: mean of the observed inputs 2 and 4; node 1's input is all NaN: its step-0 value (=10)
    np.testing.assert_array_equal(forecast[0], [[3, 10], [3, 10]])


def test_seasonal_naive_day_and_week_repeat_last_period():
    dataset = make_dataset(np.arange(80, dtype=np.float32)[:, None], freq="6h")  # 4 steps a day
    batch = make_batch(dataset, [10, 30], input_len=2, horizon=6)
    day = baselines.make_baseline("seasonal_naive_day", dataset)(batch)
    # h = 0..5 copies t-4, t-3, t-2, t-1, then the same day again (h >= P)
    np.testing.assert_array_equal(day[:, :, 0], [[6, 7, 8, 9, 6, 7], [26, 27, 28, 29, 26, 27]])
    week = baselines.make_baseline("seasonal_naive_week", dataset)(make_batch(dataset, [30, 31], 2, 6))
    np.testing.assert_array_equal(week[:, :, 0], [np.arange(2, 8), np.arange(3, 9)])  # t - 28 + h


def test_seasonal_naive_fills_missing_source_and_needs_history():
    series = np.arange(20, dtype=np.float32)[:, None]
    series[7] = np.nan
    dataset = make_dataset(series, freq="6h")
    day = baselines.make_baseline("seasonal_naive_day", dataset)(make_batch(dataset, [10], 2, 4))
    np.testing.assert_array_equal(day[0, :, 0], [6, 6, 8, 9])  # step 7 missing -> last observation (step 6)
    week = baselines.make_baseline("seasonal_naive_week", dataset)
    with pytest.raises(ValueError, match="seasonal_naive_week needs 28 steps of history.*toy.*step 10"):
        week(make_batch(dataset, [10], 2, 4))


def test_historical_average_uses_train_slots_only():
    weeks = 4
    steps = weeks * 7 * 2  # 12h steps: 14 slots a week, split 1/2 train
    node0 = np.arange(steps, dtype=np.float32)
    node1 = np.full(steps, 5.0, np.float32)
    node1[::14] = np.nan  # slot 0 of node 1 never observed in train
    node1[1] = 9.0
    dataset = make_dataset(np.stack([node0, node1], 1), freq="12h", split_ratios=(0.5, 0.25, 0.25))
    train_end = dataset.split_range("train")[1]
    assert train_end == 28  # two weeks
    predict = baselines.make_baseline("historical_average", dataset)
    batch = make_batch(dataset, [40, 50], input_len=2, horizon=4)
    forecast = predict(batch)
    # node 0: slot s has train values s and s + 14 -> mean s + 7; target step j is slot j % 14
    expected_node0 = (np.array([[40, 41, 42, 43], [50, 51, 52, 53]]) % 14) + 7
    np.testing.assert_allclose(forecast[:, :, 0], expected_node0)
    # node 1: slot 0 unseen -> node train mean; slot 1 mean of (9, 5); other slots 5
    node1_mean = np.nanmean(node1[:train_end])
    np.testing.assert_allclose(forecast[1, :, 1], [5.0, 5.0, 5.0, 5.0])
    np.testing.assert_allclose(forecast[0, :, 1], [5.0, 5.0, node1_mean, 7.0])  # slots 12, 13, 0, 1
    # Only train values matter: garbage after the train split changes nothing.
    garbage = dataset.values[:, :, 0].copy()
    garbage[train_end:] = 1e6
    np.testing.assert_allclose(baselines.make_baseline("historical_average", dataset)(
        make_batch(dataset, [40, 50], 2, 4, values_full=garbage)), forecast)


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_baselines_never_read_the_future(name):
    rng = np.random.default_rng(0)
    series = rng.normal(size=(200, 3)).astype(np.float32)
    series[rng.random(series.shape) < 0.2] = np.nan
    dataset = make_dataset(series, freq="6h")
    starts = np.array([150, 160, 170])
    clean = baselines.make_baseline(name, dataset)(make_batch(dataset, starts, 8, 10))
    assert clean.shape == (3, 10, 3) and np.all(np.isfinite(clean))
    for i, start in enumerate(starts):
        poisoned = series.copy()
        poisoned[start:] = 1e6
        again = baselines.make_baseline(name, dataset)(make_batch(dataset, starts[i:i + 1], 8, 10, poisoned))
        np.testing.assert_array_equal(again[0], clean[i])


def test_make_baseline_unknown_name():
    with pytest.raises(ValueError, match="unknown baseline 'arima': expected one of"):
        baselines.make_baseline("arima", make_dataset(np.zeros((10, 1))))


# --------------------------------------------------------------------------- evaluator
def test_evaluate_perfect_daily_series_and_layout():
    day = np.array([0.0, 4.0, 8.0, 2.0], np.float32)
    series = np.tile(day, 30)[:, None].repeat(3, axis=1)  # 30 days, 4 steps a day, 3 nodes
    dataset = make_dataset(series, freq="6h")
    result = evaluate(dataset, baselines.make_baseline("seasonal_naive_day", dataset), 4, 12,
                      batch_size=5, progress=False)
    assert result["num_windows"] == 24 - 12 + 1  # test = last 24 steps
    assert list(result["metrics"]) == ["avg", "step_3", "step_6", "step_12"]
    assert result["metrics"]["avg"] == {"MAE": 0.0, "RMSE": 0.0, "MAPE": 0.0}
    last = evaluate(dataset, baselines.make_baseline("last_value", dataset), 4, 12, progress=False)
    assert last["metrics"]["avg"]["MAE"] > 1.0


def test_evaluate_uses_metric_scale_and_original_unit_null_mask():
    rng = np.random.default_rng(1)
    series = rng.uniform(1, 9, size=(120, 2)).astype(np.float32)
    series[100:110, 0] = 0.0  # null in original units
    dataset = make_dataset(series, freq="1h", rescale=False, null_val=0.0)
    normalizer = dataset.normalizer()
    z_scored = (series - normalizer.mean[:, 0]) / normalizer.std[:, 0]
    seen = []

    def predict(batch):
        seen.append(batch)
        return np.zeros((batch.batch_size, batch.horizon, batch.num_nodes), np.float32)

    result = evaluate(dataset, predict, 6, 3, batch_size=7, progress=False)
    np.testing.assert_allclose(seen[0].values_full, z_scored, rtol=1e-6)
    np.testing.assert_allclose(seen[0].context[0], z_scored[90:96], rtol=1e-6)
    assert not seen[0].values_full.flags.writeable
    starts = np.arange(96, 118)
    targets = np.stack([z_scored[s:s + 3] for s in starts])
    observed = np.stack([series[s:s + 3] for s in starts]) != 0.0
    assert result["metrics"]["avg"]["MAE"] == pytest.approx(np.abs(targets[observed]).mean(), rel=1e-6)


def test_evaluate_quantile_forecasts_and_bad_outputs():
    series = np.tile(np.array([1.0, 2.0, 3.0, 4.0], np.float32), 25)[:, None]
    dataset = make_dataset(series, freq="6h")
    levels = np.array([0.1, 0.5, 0.9], np.float32)

    def predict(batch):
        point = np.full((batch.batch_size, batch.horizon, batch.num_nodes), 2.5, np.float32)
        return point, point[..., None] + np.array([-1.0, 0.0, 1.0], np.float32), levels

    metrics = evaluate(dataset, predict, 4, 4, progress=False)["metrics"]
    assert metrics["avg"]["MAE"] == pytest.approx(1.0)
    assert metrics["avg"]["coverage_80"] == pytest.approx(0.5)  # [1.5, 3.5] holds 2 and 3 of 1..4
    assert "QL" in metrics["step_3"]

    with pytest.raises(ValueError, match=r"forecast must be \[B, H, N\]"):
        evaluate(dataset, lambda b: np.zeros((b.batch_size, 2, 1)), 4, 4, progress=False)
    with pytest.raises(ValueError, match="forecast quantiles"):
        evaluate(dataset, lambda b: (np.zeros((b.batch_size, 4, 1)), np.zeros((b.batch_size, 4, 1, 2)), levels),
                 4, 4, progress=False)
    with pytest.raises(ValueError, match="channel must be in 0..0"):
        evaluate(dataset, predict, 4, 4, channel=1, progress=False)
    with pytest.raises(ValueError, match="no test window fits input_len=4 \\+ horizon=50"):
        evaluate(dataset, predict, 4, 50, progress=False)


def test_real_hzmetro_seasonal_naive_matches_plain_numpy(data_dir):
    from factost_jax.data.formats import load_dataset

    dataset = load_dataset("HZMETRO", data_dir)
    result = evaluate(dataset, baselines.make_baseline("seasonal_naive_day", dataset), 12, 12,
                      batch_size=500, progress=False)

    # Independent computation straight from the file: 6:2:2 split, test windows whose targets lie in
    # the test split, y[t+h] = x[t+h-288], zeros masked (null_val 0), original units.
    raw = np.load(data_dir / "HZMETRO" / "HZME_INFLOW.npz")["data"].astype(np.float64)
    total = raw.shape[0]
    test_start = int(total * 0.6) + int(total * 0.2)
    starts = np.arange(test_start, total - 12 + 1)
    per_step = {}
    for h in range(12):
        target = raw[starts + h]
        forecast = raw[starts + h - 288]
        keep = target != 0
        error = (forecast - target)[keep]
        per_step[h + 1] = (np.abs(error).sum(), (error ** 2).sum(), (np.abs(error) / np.abs(target[keep])).sum(),
                           keep.sum())
    assert result["num_windows"] == starts.size
    for row, hs in (("avg", range(1, 13)), ("step_3", [3]), ("step_6", [6]), ("step_12", [12])):
        abs_sum, sq_sum, ape_sum, count = (sum(per_step[h][i] for h in hs) for i in range(4))
        assert result["metrics"][row]["MAE"] == pytest.approx(abs_sum / count, rel=1e-9)
        assert result["metrics"][row]["RMSE"] == pytest.approx(math.sqrt(sq_sum / count), rel=1e-9)
        assert result["metrics"][row]["MAPE"] == pytest.approx(ape_sum / count, rel=1e-9)
    assert 14.0 < result["metrics"]["avg"]["MAE"] < 17.0  # the brief's sanity value is about 15.4


def test_metric_scale_series_rescaled_is_original():
    series = np.arange(20, dtype=np.float32).reshape(10, 2)
    values, observed = metric_scale_series(make_dataset(series, null_val=0.0))
    np.testing.assert_array_equal(values, series)
    assert not observed[0, 0] and observed[1:].all()
