"""AutoETS / AutoTheta baselines (statsforecast): season choice, fits on short series, the evaluation path."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from factost_jax.data.types import STDataset
from factost_jax.data.windows import WindowBatch, gather_calendar, window_indices
from factost_jax.eval import baselines, statistical
from factost_jax.eval.evaluate import evaluate


def make_dataset(values, freq="1h"):
    values = np.asarray(values, np.float32)
    return STDataset(name="toy", values=values[:, :, None] if values.ndim == 2 else values, freq=freq)


def make_batch(series, starts, input_len, horizon, dataset):
    context, _ = window_indices(np.asarray(starts), input_len, horizon)
    return WindowBatch(context=series[context], target_start=np.asarray(starts, np.int64), values_full=series,
                       **gather_calendar(dataset, np.asarray(starts), input_len, horizon))


def test_season_length_is_the_longest_natural_period_the_context_and_model_allow():
    hourly = make_dataset(np.zeros((10, 1)), "1h")  # day 24, week 168
    assert statistical.natural_periods(hourly) == (168, 24)
    assert statistical.season_length("autoets", hourly, 96) == 24  # ETTh2 96->96
    assert statistical.season_length("autotheta", hourly, 96) == 24
    assert statistical.season_length("autoets", hourly, 47) == 1  # two days do not fit
    assert statistical.season_length("autoets", hourly, 24) == 1  # AQI36 24->24
    assert statistical.season_length("autotheta", hourly, 336) == 168  # two weeks: the week
    assert statistical.season_length("autoets", hourly, 336) == 24  # ETS holds at most 24 seasonal states
    five_minute = make_dataset(np.zeros((10, 1)), "5min")
    assert statistical.season_length("autotheta", five_minute, 576) == 288
    assert statistical.season_length("autoets", five_minute, 576) == 1
    assert statistical.season_length("autotheta", five_minute, 12) == 1
    assert statistical.natural_periods(make_dataset(np.zeros((10, 1)), "1D")) == ()
    with pytest.raises(ValueError, match="unknown statistical model 'arima'"):
        statistical.season_length("arima", hourly, 96)


def test_models_fit_short_series_trend_and_season():
    steps = np.arange(96, dtype=np.float64)
    rng = np.random.default_rng(0)
    daily = 10 + 3 * np.sin(2 * np.pi * steps / 24) + 0.1 * rng.normal(size=(3, 96))  # [3, 96]
    future = 10 + 3 * np.sin(2 * np.pi * np.arange(96, 120) / 24)
    for name in statistical.STATISTICAL_MODELS:
        model = statistical.load_model(name, statistical.season_length(name, make_dataset(np.zeros((10, 1))), 96))
        forecast, fallbacks = statistical.forecast_series(model, daily, 24, statistical.MIN_OBSERVED[name])
        assert forecast.shape == (3, 24) and forecast.dtype == np.float32 and fallbacks == 0
        # The season is continued: far better than the last value (MAE about 1.9 here).
        assert np.abs(forecast - future).mean() < 0.3, name
    trend = np.arange(12, dtype=np.float64)[None, :] * 2.0 + 5.0  # 12 steps, as HZMETRO 12->12 gives
    for name in statistical.STATISTICAL_MODELS:
        forecast, _ = statistical.forecast_series(statistical.load_model(name, 1), trend, 4,
                                                  statistical.MIN_OBSERVED[name])
        np.testing.assert_allclose(forecast[0], [29, 31, 33, 35], atol=0.5, err_msg=name)


def test_short_and_missing_contexts_fall_back_and_are_counted():
    series = np.array([[np.nan] * 9 + [1.0, 2.0, 3.0],  # 3 observed: too few for either model
                       [np.nan] * 12,  # nothing observed
                       [4.0] * 12])  # constant: fitted, forecast flat
    for name in statistical.STATISTICAL_MODELS:
        forecast, fallbacks = statistical.forecast_series(statistical.load_model(name, 1), series, 2,
                                                          statistical.MIN_OBSERVED[name])
        assert fallbacks == 1
        np.testing.assert_array_equal(forecast[0], [3.0, 3.0])
        assert np.isnan(forecast[1]).all()
        np.testing.assert_allclose(forecast[2], [4.0, 4.0], atol=1e-6)
    with pytest.raises(ValueError, match="missing value after its first observation"):
        statistical.forecast_series(None, np.array([[1.0, np.nan, 2.0, 3.0, 4.0]]), 2, 4)


def test_predictor_reads_only_the_past_and_reports():
    rng = np.random.default_rng(1)
    steps = np.arange(200)
    values = (5 + np.sin(2 * np.pi * steps / 24)[:, None] + 0.1 * rng.normal(size=(200, 2))).astype(np.float32)
    values[150, 1] = np.nan  # a gap inside a context: filled from the previous step
    dataset = make_dataset(values)
    starts = np.array([160, 170])
    predict = baselines.make_baseline("autotheta", dataset)
    clean = predict(make_batch(values, starts, 48, 6, dataset))
    assert clean.shape == (2, 6, 2) and np.isfinite(clean).all()
    poisoned = values.copy()
    poisoned[160:] = 1e6  # the targets and everything after the first target start
    again = baselines.make_baseline("autotheta", dataset)
    early = again(make_batch(poisoned, starts[:1], 48, 6, dataset))
    np.testing.assert_array_equal(early, clean[:1])
    assert predict.report == {"model": "autotheta", "season_length": 24, "series": 4, "fallback_last_value": 0,
                              "no_observation": 0}


def test_evaluate_window_stride_scores_the_same_windows_for_every_forecaster():
    dataset = make_dataset(np.arange(300, dtype=np.float32).reshape(150, 2))  # test split: steps [120, 150)
    seen = []

    def spy(batch):
        seen.extend(batch.target_start.tolist())
        return np.zeros((batch.batch_size, batch.horizon, batch.num_nodes), np.float32)

    result = evaluate(dataset, spy, 12, 4, window_stride=5, batch_size=3, progress=False)
    assert seen == list(range(120, 147, 5))  # the first test step, then every 5th
    assert (result["num_windows"], result["window_stride"], result["split_windows"]) == (6, 5, 27)
    with pytest.raises(ValueError, match="window_stride must be a positive integer, got 0"):
        evaluate(dataset, spy, 12, 4, window_stride=0)


def test_baseline_names_groups_and_errors():
    assert baselines.baseline_names("naive") == ["last_value", "seasonal_naive_day", "seasonal_naive_week",
                                                 "historical_average"]
    assert baselines.baseline_names("statistical,last_value,autoets") == ["autoets", "autotheta", "last_value"]
    assert baselines.baseline_names("all") == list(baselines.BASELINES)
    with pytest.raises(ValueError, match="unknown baseline 'ets'"):
        baselines.baseline_names("naive,ets")
    with pytest.raises(ValueError, match="no baseline named in ' , '"):
        baselines.baseline_names(" , ")


def test_missing_statsforecast_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "statsforecast.models", None)  # what an absent package looks like
    with pytest.raises(ValueError, match=r"autoets needs the optional package statsforecast .*\[baselines\]"):
        baselines.make_baseline("autoets", make_dataset(np.zeros((10, 1))))


def test_cli_autoets_on_a_few_real_windows(repo_root, data_dir, tmp_path):
    output = tmp_path / "ets.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "launch/evaluate.py", "--dataset", "LOS-LOOP", "--model", "autoets", "--input_len", "12",
         "--horizon", "12", "--window_stride", "393", "--with_baselines", "--baselines", "last_value,autotheta",
         "--data_dir", str(data_dir), "--output", str(output)],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "LOS-LOOP | autoets | test | 12->12 | window stride 393: 1 of 393 windows"
    result = json.loads(output.read_text())
    assert [r["model"] for r in result["results"]] == ["autoets", "last_value", "autotheta"]
    assert {r["num_windows"] for r in result["results"]} == {1}
    assert result["fit_report"] == {"model": "autoets", "season_length": 1, "series": 207,
                                    "fallback_last_value": 0, "no_observation": 0}
    maes = {r["model"]: r["metrics"]["avg"]["MAE"] for r in result["results"]}
    # Fitted on 12 steps of speeds (mph), both stay near the last value's error on the same window.
    assert all(0.5 * maes["last_value"] < mae < 2.0 * maes["last_value"] for mae in maes.values()), maes
