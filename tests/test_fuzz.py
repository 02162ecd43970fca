"""Property-based (hypothesis) tests over random shapes and NaN patterns: the metric functions,
`rollout.forecast_quantiles` and `Forecaster.forecast` with the debug model stay finite whenever
anything is observed, keep their shapes, and forecast quantiles never cross."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factost_jax import metrics

FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LEVELS = np.array([0.1, 0.25, 0.5, 0.75, 0.9], np.float32)


@st.composite
def masked_arrays(draw):
    """(pred, target, mask): same random shape; target has random NaNs; mask random or None."""
    # A few fixed shapes: every new shape recompiles each eager jax op, which would dominate the run.
    shape = draw(st.sampled_from([(1,), (7,), (2, 5), (3, 1, 4)]))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = 10.0 ** draw(st.integers(-6, 6))
    rng = np.random.default_rng(seed)
    target = (rng.normal(size=shape) * scale).astype(np.float32)
    missing = rng.random(shape) < draw(st.sampled_from([0.0, 0.3, 0.9, 1.0]))
    target[missing] = np.nan
    if draw(st.booleans()):  # a few exact zeros, the traffic "missing" value
        target[rng.random(shape) < 0.2] = 0.0
    pred = (target + rng.normal(size=shape) * scale).astype(np.float32)
    pred = np.where(np.isfinite(pred), pred, rng.normal(size=shape) * scale).astype(np.float32)
    mask = rng.random(shape) < 0.8 if draw(st.booleans()) else None
    return pred, target, mask


@FUZZ
@given(masked_arrays(), st.sampled_from([0.0, math.nan]))
def test_point_metrics_are_finite_and_ordered(arrays, null_val):
    pred, target, mask = arrays
    observed = np.asarray(metrics.observed_mask(target, null_val, mask))
    assert observed.shape == target.shape
    mae = float(metrics.masked_mae(pred, target, null_val, mask))
    mse = float(metrics.masked_mse(pred, target, null_val, mask))
    rmse = float(metrics.masked_rmse(pred, target, null_val, mask))
    mape = float(metrics.masked_mape(pred, target, null_val, mask))
    for value in (mae, mse, rmse, mape):
        assert math.isfinite(value) and value >= 0.0
    if not observed.any():
        assert mae == mse == rmse == mape == 0.0  # a fully missing batch is a zero loss, not NaN
    else:
        expected = np.abs(pred - target)[observed].astype(np.float64).mean()
        assert mae == pytest.approx(expected, rel=1e-4, abs=1e-30)
        assert rmse >= mae * (1 - 1e-5)  # RMSE >= MAE always (Jensen)


@FUZZ
@given(masked_arrays(), st.integers(0, 2**31 - 1))
def test_quantile_metrics_finite_iff_observed(arrays, seed):
    _, target, mask = arrays
    rng = np.random.default_rng(seed)
    centre = np.where(np.isfinite(target), target, 0.0)
    spread = np.sort(rng.normal(size=target.shape + (LEVELS.size,)), axis=-1) * (np.abs(centre[..., None]) + 1)
    quantiles = (centre[..., None] + spread).astype(np.float32)
    observed = np.asarray(metrics.observed_mask(target, math.nan, mask))

    loss = float(metrics.pinball_loss(quantiles, target, LEVELS, mask))
    assert math.isfinite(loss) and loss >= 0.0
    coverage = float(metrics.interval_coverage(quantiles[..., 0], quantiles[..., -1], target, mask))
    wql = float(metrics.weighted_quantile_loss(quantiles, target, LEVELS, mask))
    if observed.any():
        assert 0.0 <= coverage <= 1.0
        scale = np.abs(target[observed]).sum()
        assert math.isfinite(wql) if scale > 0 else math.isnan(wql)
    else:
        assert math.isnan(coverage) and math.isnan(wql)  # "no data" never reads as a perfect score
    # jit gives the same answer (the loss runs jitted in training).
    jitted = float(jax.jit(metrics.pinball_loss)(quantiles, target, jnp.asarray(LEVELS), mask))
    assert jitted == pytest.approx(loss, rel=1e-5, abs=1e-30)


@FUZZ
@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 4), st.integers(0, 2**31 - 1),
       st.sampled_from([0.0, math.nan]))
def test_horizon_metrics_finite_at_every_observed_step(batch, horizon, nodes, seed, null_val):
    rng = np.random.default_rng(seed)
    shape = (batch, horizon, nodes)
    target = rng.normal(size=shape) * 100
    target[rng.random(shape) < 0.5] = np.nan
    pred = rng.normal(size=shape) * 100
    quantiles = np.sort(pred[..., None] + rng.normal(size=shape + (LEVELS.size,)), axis=-1)
    accumulator = metrics.HorizonMetrics(horizon, null_val, LEVELS)
    accumulator.update(pred, target, quantiles=quantiles)
    result = accumulator.result(steps=range(1, horizon + 1))
    assert set(result) == {"avg"} | {f"step_{k}" for k in range(1, horizon + 1)}
    observed = metrics.observed_mask_np(target, null_val)
    for k in range(1, horizon + 1):
        step = result[f"step_{k}"]
        assert math.isfinite(step["MAE"]) == bool(observed[:, k - 1].any())
        assert math.isfinite(step["RMSE"]) == bool(observed[:, k - 1].any())
        if observed[:, k - 1].any():
            assert 0.0 <= step["coverage_80"] <= 1.0


# ------------------------------------------------------------------------------------ forecasting
@pytest.fixture(scope="module")
def debug_model():
    from factost_jax.model.config import model_config
    from factost_jax.model.encoder import Encoder

    config = model_config("debug", dropout=0.0)
    context = jnp.zeros((1, 2 * config.patch_size))
    init = jax.jit(lambda rng: Encoder(config).init(rng, context, jnp.ones_like(context, bool), 1, True)["params"])
    params = init(jax.random.key(1))
    return config, params


@st.composite
def contexts(draw):
    """[B, L] float32 contexts: random lengths, magnitudes 1e-9..1e9, offsets, NaN/inf patterns."""
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(1, 140))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    scale = 10.0 ** draw(st.integers(-9, 9))
    offset = draw(st.sampled_from([0.0, 1.0, -1e6]))
    values = (offset + scale * rng.normal(size=(batch, length))).astype(np.float32)
    pattern = draw(st.sampled_from(["none", "random", "leading", "row_all_nan", "all_nan", "constant", "inf"]))
    if pattern == "random":
        values[rng.random(values.shape) < 0.4] = np.nan
    elif pattern == "leading":
        values[:, : rng.integers(0, length + 1)] = np.nan
    elif pattern == "row_all_nan":
        values[0] = np.nan
    elif pattern == "all_nan":
        values[:] = np.nan
    elif pattern == "constant":
        values[:] = np.float32(offset + scale)
    elif pattern == "inf":
        values[rng.random(values.shape) < 0.2] = np.inf
    return values


@FUZZ
@given(contexts(), st.sampled_from([1, 7, 64, 70]))
def test_forecast_quantiles_finite_shaped_and_monotone(debug_model, context, horizon):
    from factost_jax.model.rollout import forecast_quantiles

    config, params = debug_model
    forecast = forecast_quantiles(params, config, context, horizon, context_buckets=(128,))
    assert forecast.shape == (context.shape[0], horizon, len(config.quantile_levels))
    assert forecast.dtype == np.float32
    assert np.isfinite(forecast).all()
    assert (np.diff(forecast, axis=-1) >= 0).all()


@st.composite
def ragged_series(draw):
    """A list of 2 1-D series of different lengths, magnitudes and NaN patterns (at least one observed each).

    Two series and two horizons keep the number of compiled programs (context bucket x batch x
    output patches) small; `test_forecast_quantiles_...` above varies the batch and rolls out.
    """
    count = 2
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    series = []
    for _ in range(count):
        length = int(rng.integers(1, 160))
        scale = 10.0 ** int(rng.integers(-9, 10))
        values = scale * (1.0 + 0.1 * rng.normal(size=length))
        values[rng.random(length) < rng.choice([0.0, 0.5, 0.95])] = np.nan
        values[rng.integers(0, length)] = scale  # at least one observed value
        series.append(values)
    return series


@pytest.mark.filterwarnings("ignore:quantile levels .* were not trained")
@settings(FUZZ, max_examples=15)
@given(ragged_series(), st.sampled_from([5, 40]), st.sampled_from([(0.5,), (0.1, 0.5, 0.9), (0.05, 0.5, 0.95)]))
def test_forecaster_forecast_finite_shaped_and_monotone(debug_model, series, horizon, levels):
    from factost_jax.forecast import Forecaster

    config, params = debug_model
    result = Forecaster(params, config).forecast(series, horizon, quantiles=levels)
    assert result.quantiles.shape == (len(series), horizon, len(levels))
    assert result.median.shape == (len(series), horizon)
    assert np.isfinite(result.quantiles).all() and np.isfinite(result.median).all()
    assert (np.diff(result.quantiles, axis=-1) >= 0).all()
