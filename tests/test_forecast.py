"""Forecaster API (stage 1 and 2), checkpoint loading, and `launch/evaluate.py --checkpoint` end to end."""

import functools
import json
import os
import subprocess
import sys
import types
import warnings

import jax
import numpy as np
import pandas as pd
import pytest

from factost_jax import Forecaster, QuantileForecast
from factost_jax import checkpoint as ckpt_io
from factost_jax.checkpoint import save_inference_checkpoint
from factost_jax.data.formats import EVALUATION_DATASETS
from factost_jax.data.windows import WindowBatch
from factost_jax.eval.evaluate import checkpoint_predictor, pretraining_corpus, pretraining_overlap, run_evaluation
from factost_jax.model.config import model_config
from factost_jax.model.encoder import abstract_params, jitted_apply, unbox

CONFIG = model_config("debug")  # max context 128, one-pass horizon 64
# Most calls share one program: contexts in the 128 bucket, <= 8 rows, 4 output patches.
HORIZON = 64
PRETRAIN_METADATA = {"run_config": {"data": {"corpora": [["kernelsynth", 0.25], ["real", 0.75]],
                                             "exclude": list(EVALUATION_DATASETS)}}}


@functools.lru_cache(maxsize=None)
def stage1_params():
    """Random debug-size weights, drawn on the host from the abstract tree (no init program to compile)."""
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda leaf: (0.2 * rng.standard_normal(leaf.shape)).astype(np.float32),
                        unbox(abstract_params(CONFIG)))


@pytest.fixture(scope="module")
def forecaster():
    return Forecaster(stage1_params(), CONFIG)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training-loop-like workdir holding one stage-1 checkpoint at step 7 with a pretraining run config."""
    root = tmp_path_factory.mktemp("run")
    save_inference_checkpoint(root / "checkpoints" / "7", CONFIG, stage1_params(),
                              {"step": 7, "stage": "pretrain", **PRETRAIN_METADATA})
    return root


def seasonal(length, period=24, phase=0.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return 10 + 3 * np.sin(2 * np.pi * t / period + phase) + 0.3 * rng.standard_normal(length)


# ----------------------------------------------------------------------------- loading


def test_load_workdir_checkpoints_dir_step_dir_and_shipped_name(workdir, forecaster, monkeypatch):
    step_dir = workdir / "checkpoints" / "7"
    loaded = [Forecaster.load(p) for p in (workdir, workdir / "checkpoints", step_dir, str(step_dir))]
    assert all(f.path == step_dir and f.stage == 1 and f.config == CONFIG for f in loaded)
    assert loaded[0].metadata["step"] == 7
    series = [seasonal(60)]
    expected = forecaster.forecast(series, 16).quantiles
    np.testing.assert_allclose(loaded[0].forecast(series, 16).quantiles, expected, rtol=1e-5, atol=1e-5)

    bf16 = Forecaster(stage1_params(), model_config("debug", compute_dtype="bfloat16"))
    assert bf16.config == CONFIG  # CPU inference runs in float32 whatever the training used

    monkeypatch.setattr(ckpt_io, "shipped_roots", lambda: [workdir.parent / "nowhere", workdir.parent])
    assert Forecaster.load(workdir.name).path == step_dir  # a bare name resolves in the shipped roots
    with pytest.raises(FileNotFoundError, match="'factost-nope' is neither an existing path nor a shipped"):
        Forecaster.load("factost-nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Forecaster.load(str(workdir / "missing"))


@pytest.mark.parametrize("damage", ["truncate_params", "empty_metadata"])
def test_load_falls_back_past_an_unreadable_latest_checkpoint(tmp_path, damage):
    for step in (2, 4):
        save_inference_checkpoint(tmp_path / "checkpoints" / str(step), CONFIG, stage1_params(), {"step": step})
    latest = tmp_path / "checkpoints" / "4"
    if damage == "truncate_params":
        data_files = [p for p in (latest / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
        assert data_files
        for path in data_files:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        (latest / "metadata" / "metadata").write_text("")
    with pytest.warns(UserWarning, match=f"skipped an unreadable checkpoint: cannot read checkpoint .*{latest}"):
        loaded = Forecaster.load(tmp_path)
    assert loaded.path == tmp_path / "checkpoints" / "2" and loaded.metadata["step"] == 2
    with pytest.raises(ValueError, match=f"cannot read checkpoint .*{latest}"):  # named explicitly: no fallback
        Forecaster.load(latest)


def test_stage2_workdir_loads_its_best_validation_step(tmp_path):
    """An adaptation workdir loads best/<step> (what metrics.json scores), not the latest checkpoint
    early stopping ran past; its checkpoints/ dir still gives the latest."""
    params = stage1_params()
    save_inference_checkpoint(tmp_path / "checkpoints" / "4", CONFIG, params, {"step": 4})
    (tmp_path / "best" / "9.orbax-checkpoint-tmp-1").mkdir(parents=True)  # a cut-off save is no step
    assert Forecaster.load(tmp_path).path == tmp_path / "checkpoints" / "4"
    best = jax.tree.map(lambda leaf: leaf + 1.0, params)
    save_inference_checkpoint(tmp_path / "best" / "2", CONFIG, best, {"step": 2, "val_MAE": 1.0})
    loaded = Forecaster.load(tmp_path)
    assert loaded.path == tmp_path / "best" / "2" and loaded.metadata["step"] == 2
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded.params), best)
    assert Forecaster.load(tmp_path / "checkpoints").path == tmp_path / "checkpoints" / "4"
    assert Forecaster.load(tmp_path / "best").path == tmp_path / "best" / "2"


# ----------------------------------------------------------------------------- stage 1 forecasts


def test_ragged_and_nan_inputs_match_single_series(forecaster):
    long_series = seasonal(200, seed=1)  # longer than the 128-step context: only the tail counts
    short = seasonal(40, seed=2)
    gappy = seasonal(90, seed=3)
    gappy[[3, 10, 11, 50, 89]] = np.nan
    out = forecaster.forecast([long_series, short, gappy], horizon=HORIZON)
    assert isinstance(out, QuantileForecast)
    assert out.median.shape == (3, HORIZON) and out.quantiles.shape == (3, HORIZON, 3)
    assert out.median.dtype == np.float32 and out.quantiles.dtype == np.float32
    np.testing.assert_array_equal(out.quantile_levels, [0.1, 0.5, 0.9])
    assert np.isfinite(out.quantiles).all()
    for row, series in enumerate([long_series, short, gappy]):
        alone = forecaster.forecast([series], horizon=HORIZON)
        np.testing.assert_allclose(out.quantiles[row], alone.quantiles[0], rtol=1e-4, atol=1e-4)
    # The same rows as a NaN-left-padded [B, T] array (with an inf counted as missing).
    matrix = np.full((2, 90), np.nan)
    matrix[0, 50:] = short
    matrix[1] = gappy
    matrix[1, 3] = np.inf
    np.testing.assert_allclose(forecaster.forecast(matrix, horizon=HORIZON).quantiles, out.quantiles[1:],
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.median, out.quantiles[..., 1])


def test_rollout_beyond_the_one_pass_horizon(forecaster):
    series = [seasonal(100, seed=4), seasonal(70, period=12, seed=5)]
    short = forecaster.forecast(series, horizon=CONFIG.max_horizon)
    long = forecaster.forecast(series, horizon=256, quantiles=(0.1, 0.2, 0.5, 0.8, 0.9))  # 4 passes
    assert long.median.shape == (2, 256) and long.quantiles.shape == (2, 256, 5)
    assert np.isfinite(long.quantiles).all()
    # The first pass is kept as is: rollout only appends.
    np.testing.assert_allclose(long.median[:, :CONFIG.max_horizon], short.median, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(long.quantiles, axis=-1) >= 0)


def test_quantiles_never_cross_and_median_is_trained_half(forecaster):
    rng = np.random.default_rng(6)
    series = [rng.standard_normal(n) * s for n, s in ((70, 1.0), (128, 5.0), (100, 0.1))]
    levels = np.asarray(CONFIG.quantile_levels)
    out = forecaster.forecast(series, horizon=HORIZON, quantiles=levels)
    assert np.all(np.diff(out.quantiles, axis=-1) >= 0)
    np.testing.assert_array_equal(out.median, out.quantiles[..., 5])
    # Unsorted, duplicated requests come back sorted and unique.
    again = forecaster.forecast(series, horizon=HORIZON, quantiles=[0.9, 0.1, 0.5, 0.9])
    np.testing.assert_array_equal(again.quantile_levels, [0.1, 0.5, 0.9])
    np.testing.assert_allclose(again.quantiles, out.quantiles[..., [1, 5, 9]], rtol=1e-6)


def test_untrained_levels_are_interpolated_with_a_warning(forecaster):
    series = [seasonal(100, seed=7)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # trained levels: no warning at all
        trained = forecaster.forecast(series, horizon=HORIZON, quantiles=CONFIG.quantile_levels)
    with pytest.warns(UserWarning, match=r"quantile levels \[0.25, 0.995\] were not trained"):
        out = forecaster.forecast(series, horizon=HORIZON, quantiles=(0.25, 0.5, 0.995))
    q = trained.quantiles[0]
    np.testing.assert_allclose(out.quantiles[0, :, 0], (q[:, 2] + q[:, 3]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.quantiles[0, :, 2], q[:, -1], rtol=1e-6)  # beyond 0.99: flat


def test_extreme_magnitudes_and_constant_series_are_finite(forecaster):
    base = seasonal(96, seed=8) - 10
    out = forecaster.forecast([np.full(48, 7.0), np.full(48, 1e9), np.full(48, 1e-9), 1e9 * base, 1e-9 * base,
                               1e9 + base, base], horizon=HORIZON)
    assert np.isfinite(out.quantiles).all() and np.isfinite(out.median).all()
    for row, level in enumerate((7.0, 1e9, 1e-9)):
        np.testing.assert_allclose(out.quantiles[row], level, rtol=1e-4)
    # Scale equivariance holds at 1e9 and 1e-9: standardising in float64 keeps the detail.
    np.testing.assert_allclose(out.quantiles[3] / 1e9, out.quantiles[6], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out.quantiles[4] / 1e-9, out.quantiles[6], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out.median[5], 1e9, rtol=1e-6)


def test_large_batches_and_progress(forecaster, capsys):
    series = np.stack([seasonal(100, seed=s) for s in range(20)])
    batched = forecaster.forecast(series, horizon=HORIZON, batch_size=8)  # 3 chunks, bar on by default
    assert "forecast" in capsys.readouterr().err
    whole = forecaster.forecast(series, horizon=HORIZON, batch_size=32)
    assert capsys.readouterr().err == ""
    np.testing.assert_allclose(batched.quantiles, whole.quantiles, rtol=1e-5, atol=1e-5)
    forecaster.forecast(series, horizon=HORIZON, batch_size=8, progress=False)
    assert capsys.readouterr().err == ""


def test_compile_warms_every_program(forecaster):
    forecaster.compile(max_context=32, max_horizon=16, batch_size=8)
    forward = jitted_apply(CONFIG)
    before = forward._cache_size()
    for length in (5, 16, 17, 32):
        for horizon in (1, 9, 16):
            forecaster.forecast(np.stack([seasonal(length, seed=s) for s in range(8)]), horizon, batch_size=8)
    assert forward._cache_size() == before
    # Past the one-pass horizon the rollout's path rows are planned too.
    shapes = forecaster.program_shapes(max_context=32, max_horizon=80, batch_size=8)
    assert (8, 128, 1) in shapes and (8, 32, 4) in shapes and all(rows == 8 for rows, _, _ in shapes)
    assert max(patches for _, _, patches in shapes) == CONFIG.max_output_patches


@pytest.mark.parametrize("inputs, kwargs, message", [
    ([], {}, "inputs is empty: got 0 series"),
    (np.zeros((0, 5)), {}, "inputs is empty"),
    ([np.arange(5.0), np.array([])], {}, r"inputs\[1\] is an empty series"),
    ([np.arange(5.0), np.full(4, np.nan), np.arange(3.0), np.full(2, np.nan)], {},
     r"no observed \(finite\) value at indices \[1, 3\]"),
    (np.arange(10.0), {}, "got a 1-D array of shape"),
    (np.zeros((2, 3, 4)), {}, r"got an array of shape \(2, 3, 4\)"),
    ([np.zeros((2, 3))], {}, r"inputs\[0\] must be a 1-D series"),
    ([["a", "b"]], {}, r"inputs\[0\] is not numeric"),
    ("abc", {}, "inputs must be a \\[B, T\\] array or a list"),
    (pd.DataFrame({"y": [1.0]}), {}, "use forecast_df"),
    ([np.arange(5.0)], {"horizon": 0}, "horizon must be a positive int, got 0"),
    ([np.arange(5.0)], {"horizon": -3}, "horizon must be a positive int"),
    ([np.arange(5.0)], {"horizon": 2.5}, "horizon must be an int, got float"),
    ([np.arange(5.0)], {"horizon": True}, "horizon must be an int, got bool"),
    ([np.arange(5.0)], {"quantiles": (0.0, 0.5)}, r"strictly inside \(0, 1\); got \[0.0\]"),
    ([np.arange(5.0)], {"quantiles": (0.5, 1.2)}, r"strictly inside \(0, 1\); got \[1.2\]"),
    ([np.arange(5.0)], {"quantiles": ()}, "non-empty 1-D sequence"),
    ([np.arange(5.0)], {"quantiles": 0.5}, "must be a sequence of levels"),
    ([np.arange(5.0)], {"batch_size": 0}, "batch_size must be a positive int"),
])
def test_bad_inputs_raise_clear_errors(forecaster, inputs, kwargs, message):
    kwargs = {"horizon": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        forecaster.forecast(inputs, **kwargs)


def test_forecast_network_needs_a_stage2_checkpoint(forecaster):
    with pytest.raises(ValueError, match="this checkpoint is stage 1; forecast_network needs a stage-2"):
        forecaster.forecast_network(np.zeros((32, 3)), pd.date_range("2024", periods=32, freq="h"), 4)


# ----------------------------------------------------------------------------- pandas


def long_frame(series_by_id):
    return pd.concat([pd.DataFrame({"unique_id": key, "ds": stamps, "y": values})
                      for key, (stamps, values) in series_by_id.items()], ignore_index=True)


def test_forecast_df_round_trip_with_frequency_inference(forecaster):
    hourly = seasonal(72, seed=9)
    five_min = seasonal(100, period=12, seed=10)
    daily = seasonal(30, period=7, seed=11)
    gappy = seasonal(50, seed=12)
    gappy_stamps = pd.date_range("2024-03-01", periods=50, freq="15min")
    frame = long_frame({
        "hourly": (pd.date_range("2024-01-01", periods=72, freq="h"), hourly),
        "five_min": (pd.date_range("2024-01-05 00:05", periods=100, freq="5min"), five_min),
        "daily": (pd.date_range("2023-06-01", periods=30, freq="D").astype(str), daily),  # strings parse too
        "gappy": (gappy_stamps.delete([10, 11, 30]), np.delete(gappy, [10, 11, 30])),  # on the 15-min grid
    })
    out = forecaster.forecast_df(frame, horizon=HORIZON, quantiles=(0.1, 0.5, 0.9))
    assert list(out.columns) == ["unique_id", "ds", "median", "0.1", "0.5", "0.9"]
    assert list(out["unique_id"].unique()) == ["hourly", "five_min", "daily", "gappy"]
    assert (out.groupby("unique_id", sort=False).size() == HORIZON).all()
    expected_starts = {"hourly": ("2024-01-04 00:00", "h"), "five_min": ("2024-01-05 08:25", "5min"),
                       "daily": ("2023-07-01", "D"), "gappy": ("2024-03-01 12:30", "15min")}
    for key, (start, freq) in expected_starts.items():
        stamps = list(out.loc[out["unique_id"] == key, "ds"])
        assert stamps == list(pd.date_range(start, periods=HORIZON, freq=freq)), key
    gappy_with_nan = gappy.copy()
    gappy_with_nan[[10, 11, 30]] = np.nan
    arrays = forecaster.forecast([hourly, five_min, daily, gappy_with_nan], horizon=HORIZON)
    np.testing.assert_allclose(out["median"].to_numpy().reshape(4, HORIZON), arrays.median, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["0.9"].to_numpy().reshape(4, HORIZON), arrays.quantiles[..., 2],
                               rtol=1e-4, atol=1e-4)
    assert pd.api.types.is_datetime64_dtype(out["ds"])  # parsed from the mixed (object) column
    # Custom column names and a monthly series (a calendar frequency).
    monthly = pd.DataFrame({"store": 3, "date": pd.date_range("2000-01-01", periods=100, freq="MS"),
                            "sales": seasonal(100, period=12, seed=13)})
    result = forecaster.forecast_df(monthly, id_column="store", timestamp_column="date", target="sales",
                                    horizon=HORIZON, quantiles=(0.5,))
    assert list(result.columns) == ["store", "date", "median", "0.5"]
    assert result["store"].dtype == monthly["store"].dtype and result["date"].dtype == monthly["date"].dtype
    assert list(result["date"]) == list(pd.date_range("2008-05-01", periods=HORIZON, freq="MS"))


@pytest.mark.parametrize("frame, kwargs, message", [
    (pd.DataFrame({"unique_id": ["a"] * 3, "ds": pd.date_range("2024", periods=3, freq="h")}), {},
     r"df is missing columns \['y'\]"),
    (pd.DataFrame({"unique_id": [], "ds": [], "y": []}), {}, "df has no rows"),
    (pd.DataFrame({"unique_id": ["a"] * 3, "ds": ["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 01:00"],
                   "y": [1.0, 2.0, 3.0]}), {}, "series 'a': duplicate timestamp 2024-01-01 01:00:00"),
    (pd.DataFrame({"unique_id": ["a", "a", "b", "b", "b"],
                   "ds": ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-02", "2024-01-04"],
                   "y": [1.0, 2.0, 3.0, 4.0, 5.0]}), {}, "series 'b': timestamps are not increasing"),
    (pd.DataFrame({"unique_id": ["a", "a", "c", "c"], "ds": ["2024-01-01", "2024-01-02"] * 2,
                   "y": [1.0, 2.0, np.nan, np.nan]}), {}, r"no observed \(finite\) value at ids \['c'\]"),
    (pd.DataFrame({"unique_id": ["a"], "ds": ["2024-01-01"], "y": [1.0]}), {}, "series 'a' has 1 timestamp"),
    (pd.DataFrame({"unique_id": ["a"] * 2, "ds": ["2024-01-01", "not a date"], "y": [1.0, 2.0]}), {},
     "series 'a': timestamps are not datetimes"),
    (pd.DataFrame({"unique_id": ["a"] * 2, "ds": ["2024-01-01", "2024-01-02"], "y": ["x", "y"]}), {},
     "series 'a': column 'y' is not numeric"),
    (pd.DataFrame({"unique_id": ["a"] * 2, "ds": ["2024-01-01", "2024-01-02"], "y": [1.0, 2.0]}),
     {"horizon": 0}, "horizon must be a positive int"),
    (pd.DataFrame({"unique_id": ["a"] * 2, "ds": ["2024-01-01", "2024-01-02"], "y": [1.0, 2.0]}),
     {"quantiles": (0.5, 1.0)}, r"strictly inside \(0, 1\)"),
    ([1, 2, 3], {}, "df must be a pandas DataFrame"),
])
def test_forecast_df_bad_inputs(forecaster, frame, kwargs, message):
    with pytest.raises(ValueError, match=message):
        forecaster.forecast_df(frame, **{"horizon": 2, **kwargs})


# ----------------------------------------------------------------------------- stage 2


def test_stage2_checkpoint_forecast_network(tmp_path, forecaster):
    from factost_jax.model.adapter import AdapterConfig, init_adapter_params

    adapter_config = AdapterConfig(num_nodes=3)
    # All-zero adapter weights give the fresh adapter's identity (zero CPR output and STMF projection,
    # closed prompt gates) without compiling the init program.
    shapes = unbox(jax.eval_shape(lambda key: init_adapter_params(CONFIG, adapter_config, key), jax.random.key(1)))
    params = {**stage1_params(), "adapter": jax.tree.map(lambda leaf: np.zeros(leaf.shape, np.float32), shapes["adapter"])}
    # Metadata as the adapt loop writes it: the adapter's config inside the run config.
    save_inference_checkpoint(tmp_path / "adapted", CONFIG, params,
                              {"stage": "adapt", "run_config": {"model": "factost", "adapter": adapter_config.to_dict()}})
    adapted = Forecaster.load(tmp_path / "adapted")
    assert adapted.stage == 2 and adapted.adapter_config == adapter_config
    values = np.stack([seasonal(48, seed=s) * (s + 1) for s in range(3)], axis=1)  # [T, N]
    values[5, 1] = np.nan
    stamps = pd.date_range("2024-01-01", periods=48, freq="h")
    out = adapted.forecast_network(values, stamps, horizon=12)
    assert out.median.shape == (12, 3) and out.quantiles.shape == (12, 3, 3)
    assert np.all(np.diff(out.quantiles, axis=-1) >= 0)
    # Fresh adapter weights on grafted stage-1 weights forecast like stage 1, node by node.
    stage1 = forecaster.forecast(list(values.T), horizon=12)
    np.testing.assert_allclose(out.median, stage1.median.T, rtol=2e-3, atol=2e-3)
    # Evaluation feeds windows with the data layer's calendar (hour slot, Monday = 0): with trained
    # (here random) adapter weights the calendar matters, and it must equal the one from timestamps.
    rng = np.random.default_rng(2)
    trained = Forecaster({**stage1_params(), "adapter": jax.tree.map(
        lambda leaf: (0.3 * rng.standard_normal(leaf.shape)).astype(np.float32), shapes["adapter"])},
        CONFIG, adapter_config=adapter_config)
    from_stamps = trained.forecast_network(values, stamps, horizon=12)

    def window(future_day):
        return WindowBatch(context=values[None].astype(np.float32), target_start=np.array([48]),
                           values_full=values.astype(np.float32), context_time_of_day=(np.arange(48) % 24)[None],
                           context_day_of_week=(np.arange(48) // 24)[None],
                           future_time_of_day=(np.arange(48, 60) % 24)[None],
                           future_day_of_week=np.full((1, 12), future_day))

    predict = checkpoint_predictor(trained, types.SimpleNamespace(steps_per_day=24))
    median, quantiles, levels = predict(window(2))  # 2024-01-03 is a Wednesday
    assert quantiles.shape == (1, 12, 3, CONFIG.num_quantiles) and np.array_equal(levels, CONFIG.quantile_levels)
    np.testing.assert_allclose(median[0], from_stamps.median, rtol=1e-5, atol=1e-5)
    assert not np.allclose(predict(window(5))[0], median, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="values have 4 nodes but the stage-2 checkpoint was adapted to 3 nodes"):
        adapted.forecast_network(np.zeros((48, 4)), stamps, horizon=12)
    with pytest.raises(ValueError, match="timestamps has 47 entries but values has T = 48"):
        adapted.forecast_network(values, stamps[:47], horizon=12)
    with pytest.raises(ValueError, match="timestamps: duplicate timestamp"):
        adapted.forecast_network(values, stamps.insert(1, stamps[0])[:48], horizon=12)
    with pytest.raises(ValueError, match="values must be \\[T, N\\]"):
        adapted.forecast_network(values[None], stamps, horizon=12)
    with pytest.raises(ValueError, match="exceeds the adapted model's one-pass maximum 64"):
        adapted.forecast_network(values, stamps, horizon=65)
    with pytest.raises(ValueError, match="this checkpoint is stage 2 \\(adapted to 3 nodes\\); forecast needs"):
        adapted.forecast(values.T, horizon=4)
    save_inference_checkpoint(tmp_path / "bare", CONFIG, params, {"stage": "adapt"})
    with pytest.raises(ValueError, match="holds adapter weights but its metadata has neither 'adapter_config'"):
        Forecaster.load(tmp_path / "bare")
    metadata_file = tmp_path / "bare" / "metadata" / "metadata"  # an STID expert's metadata names its kind
    metadata_file.write_text(json.dumps({**json.loads(metadata_file.read_text()), "model_config": {"kind": "stid"}}))
    with pytest.raises(ValueError, match="holds a 'stid' model, not FactoST"):
        Forecaster.load(tmp_path / "bare")


def test_stage2_forecast_uses_the_recorded_input_scale(forecaster):
    """A stage-2 checkpoint feeds its adapter the train z-score it recorded (data/input_scale.py), as
    validation did: observed nodes barely notice the scale (RevIN), but a node whose whole context
    is missing is forecast around the train mean, mean + std * (the forecast of an empty z-context)."""
    from factost_jax.model.adapter import AdapterConfig, init_adapter_params

    adapter_config = AdapterConfig(num_nodes=3)
    shapes = unbox(jax.eval_shape(lambda key: init_adapter_params(CONFIG, adapter_config, key), jax.random.key(1)))
    params = {**stage1_params(), "adapter": jax.tree.map(lambda leaf: np.zeros(leaf.shape, np.float32), shapes["adapter"])}
    values = np.stack([seasonal(48, seed=s) * (s + 1) for s in range(3)], axis=1)  # [T, N]
    values[:, 2] = np.nan
    stamps = pd.date_range("2024-01-01", periods=48, freq="h")

    def adapted(mean, std):
        return Forecaster(params, CONFIG, adapter_config=adapter_config,
                          metadata={"input_scale": {"mean": [mean], "std": [std]}})

    identity, scaled = (adapted(0.0, 1.0).forecast_network(values, stamps, horizon=12),
                        adapted(100.0, 10.0).forecast_network(values, stamps, horizon=12))
    np.testing.assert_allclose(scaled.median[:, :2], identity.median[:, :2], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(scaled.median[:, 2], 100.0 + 10.0 * identity.median[:, 2], rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- zero-shot evaluation


def test_stage1_evaluation_falls_back_for_an_unobserved_window(forecaster):
    """A node with no observation in its input window is forecast from its last observed steps and
    the gap after them, in a call of its own; the other nodes are untouched by it."""
    values = np.stack([seasonal(96, seed=s) for s in range(3)], axis=1).astype(np.float32)  # [T, N]
    values[60:90, 1] = np.nan  # node 1: a 30-step gap covering the whole 12-step input window
    values[:, 2] = np.nan  # node 2: never observed
    start, input_len = 90, 12
    batch = WindowBatch(context=values[None, start - input_len:start], target_start=np.array([start]),
                        values_full=values, context_time_of_day=np.zeros((1, input_len), int),
                        context_day_of_week=np.zeros((1, input_len), int),
                        future_time_of_day=np.zeros((1, 6), int), future_day_of_week=np.zeros((1, 6), int))
    median, quantiles, _ = checkpoint_predictor(forecaster, types.SimpleNamespace(steps_per_day=24))(batch)
    assert median.shape == (1, 6, 3) and quantiles.shape == (1, 6, 3, CONFIG.num_quantiles)
    assert np.isfinite(quantiles).all()
    expected = forecaster.forecast([values[78:90, 0], values[48:90, 1], values[78:90, 2]], horizon=6,
                                   quantiles=CONFIG.quantile_levels, allow_unobserved=True)
    np.testing.assert_allclose(median[0], expected.median.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(quantiles[0], expected.quantiles.transpose(1, 0, 2), rtol=1e-5, atol=1e-5)




def test_pretraining_overlap_from_metadata():
    assert pretraining_overlap(PRETRAIN_METADATA, "ETTh2") == []  # excluded evaluation set
    assert pretraining_overlap(PRETRAIN_METADATA, "etth1") == ["ETTh1", "ETTm1"]  # in "real", with its twin
    assert pretraining_overlap({}, "ETTh1") == []  # corpus not recorded: nothing to refuse
    assert pretraining_overlap({"corpus": ["kernelsynth"]}, "ETTh1") == []
    partial = {"run_config": {"data": {"corpora": [["real", 1.0]], "exclude": ["ETTh2", "HZMETRO"]}}}
    assert pretraining_overlap(partial, "ETTh2") == ["ETTm2"]  # ETTm2 records the same transformer
    assert pretraining_overlap(partial, "HZMETRO:out") == []  # excluding a base name excludes its variants
    named = {"run_config": {"data": {"corpora": [["kernelsynth", 1.0], ["los_loop", 1.0]], "exclude": []}}}
    assert pretraining_overlap(named, "METR-LA") == ["LOS-LOOP"]
    assert pretraining_corpus(named) == {"LOS-LOOP"}
    assert pretraining_corpus({"corpus": [["ETTh1", 0.5], "kernelsynth", "NOT_A_SET"]}) == {"ETTh1"}


def test_run_evaluation_refuses_a_leaked_zero_shot(workdir, data_dir):
    with pytest.raises(ValueError, match="its pretraining corpus contains ILLNESS, so a zero-shot result on ILLNESS"):
        run_evaluation("ILLNESS", None, 16, 4, data_dir=str(data_dir), checkpoint=str(workdir), progress=False)
    result = run_evaluation("ILLNESS", None, 96, HORIZON, data_dir=str(data_dir), checkpoint=str(workdir),
                            progress=False, allow_overlap=True)
    assert result["model"] == f"factost:{workdir / 'checkpoints' / '7'}"
    assert set(result["metrics"]["avg"]) == {"MAE", "RMSE", "MAPE", "QL", "coverage_80"}
    with pytest.raises(ValueError, match="exactly one of a baseline model name and a checkpoint"):
        run_evaluation("ILLNESS", "last_value", 16, 4, checkpoint=str(workdir))


def test_evaluate_cli_checkpoint_end_to_end(repo_root, data_dir, workdir, tmp_path):
    output = tmp_path / "result.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "launch/evaluate.py", "--checkpoint", str(workdir), "--dataset", "ILLNESS", "--input_len", "32",
         "--horizon", "12", "--split", "val", "--allow_overlap", "--with_baselines", "--baselines", "naive", "--plot", str(tmp_path / "plots"),
         "--max_context", "16",
         "--output", str(output), "--data_dir", str(data_dir)],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    label = f"factost:{workdir / 'checkpoints' / '7'}"
    lines = proc.stdout.splitlines()
    assert lines[0] == f"ILLNESS | {label} | val | 32->12"
    assert lines[1].split() == ["MAE", "RMSE", "MAPE", "QL", "coverage_80"]
    table_start = lines.index("ILLNESS | val | 32->12 | avg")
    assert [line.split()[0] for line in lines[table_start + 2:table_start + 7]] == [
        label, "last_value", "seasonal_naive_day", "seasonal_naive_week", "historical_average"]
    result = json.loads(output.read_text())
    assert list(result)[:7] == ["dataset", "model", "input_len", "horizon", "split", "channel", "num_windows"]
    assert result["window_stride"] == 1
    assert result["model"] == label and result["num_windows"] == 85
    # --max_context 16 of the 32 input steps: recorded, and said on stderr
    assert result["max_context"] == 16 and "note: the checkpoint sees the last 16 of the 32 input steps" in proc.stderr
    assert [r["model"] for r in result["results"]] == [label, "last_value", "seasonal_naive_day",
                                                        "seasonal_naive_week", "historical_average"]
    assert result["results"][0]["metrics"] == result["metrics"] and result["skipped"] == []
    avg = result["metrics"]["avg"]
    assert 0 < avg["MAE"] < 10 and 0 <= avg["coverage_80"] <= 1 and avg["QL"] > 0
    # The ILLNESS corpus overlap is refused without --allow_overlap: one line on stderr, exit 2.
    refused = subprocess.run(
        [sys.executable, "launch/evaluate.py", "--checkpoint", str(workdir), "--dataset", "ILLNESS", "--input_len",
         "32", "--horizon", "12", "--data_dir", str(data_dir)],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        f"error: checkpoint {workdir / 'checkpoints' / '7'}: its pretraining corpus contains ILLNESS, so a zero-shot "
        "result on ILLNESS would be leaked; evaluate another dataset or pass --allow_overlap"]
    plots = sorted((tmp_path / "plots").glob("*.png"))
    assert len(plots) == 2 and all(p.stat().st_size > 10_000 for p in plots)
