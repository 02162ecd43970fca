"""Arbitrary-horizon rollout: quantile interpolation, re-aggregation, bucketing, compilation bound."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factost_jax.model import encoder as enc
from factost_jax.model import rollout
from factost_jax.model.config import model_config


@pytest.fixture(scope="module")
def debug_config():
    return model_config("debug")


@pytest.fixture(scope="module")
def params(debug_config):
    return enc.init_params(debug_config, jax.random.key(0))


def _context(seed: int, batch: int, length: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = np.arange(length)
    series = 5.0 + 2.0 * np.sin(2 * np.pi * steps / 24.0) + 0.3 * rng.standard_normal((batch, length))
    series[rng.random((batch, length)) < 0.1] = np.nan
    return series.astype(np.float32)


# ----------------------------------------------------------------------------- pure helpers


def test_interpolate_quantiles_is_linear_in_level_and_flat_outside():
    levels = (0.1, 0.5, 0.9)
    q = np.array([[1.0, 3.0, 11.0]], np.float32)
    out = rollout.interpolate_quantiles(q, levels, (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [[1.0, 1.0, 2.0, 3.0, 7.0, 11.0, 11.0]], rtol=1e-6)
    jax_out = rollout.interpolate_quantiles(jnp.asarray(q), levels, (0.3, 0.7))
    assert isinstance(jax_out, jax.Array)
    np.testing.assert_allclose(jax_out, [[2.0, 7.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="last axis"):
        rollout.interpolate_quantiles(q, (0.1, 0.9), (0.5,))
    with pytest.raises(ValueError, match="strictly increasing"):
        rollout.interpolate_quantiles(q, (0.5, 0.1, 0.9), (0.5,))


def test_trapezoid_masses():
    np.testing.assert_allclose(rollout.trapezoid_masses(np.arange(1, 10) / 10), np.full(9, 1 / 9), rtol=1e-6)
    masses = rollout.trapezoid_masses((0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99))
    np.testing.assert_allclose(masses.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(masses[[0, 1, 5]], np.array([0.05, 0.095, 0.1]) / 0.99, rtol=1e-5)


def test_weighted_quantile():
    samples = np.array([[3.0, 1.0, 2.0, 4.0]], np.float32)  # positions of the sorted samples: .125 .375 .625 .875
    out = rollout.weighted_quantile(samples, np.ones(4), (0.05, 0.25, 0.5, 0.875, 0.99))
    np.testing.assert_allclose(out, [[1.0, 1.5, 2.5, 4.0, 4.0]], rtol=1e-6)
    # a heavy sample pulls the quantiles towards itself: sorted positions 1/26, 3/26, 5/26, 16/26
    heavy = rollout.weighted_quantile(samples, np.array([1.0, 1.0, 1.0, 10.0]), (0.5, 0.7))
    np.testing.assert_allclose(heavy, [[3.0 + 8.0 / 11.0, 4.0]], rtol=1e-5)
    # numpy and jax agree; the result is monotone in the level
    rng = np.random.default_rng(0)
    many = rng.standard_normal((3, 5, 99)).astype(np.float32)
    weights = rng.random(99)
    levels = tuple(np.linspace(0.01, 0.99, 11))
    out_np = rollout.weighted_quantile(many, weights, levels)
    out_jax = rollout.weighted_quantile(jnp.asarray(many), weights, levels)
    np.testing.assert_allclose(out_np, np.asarray(out_jax), rtol=1e-5, atol=1e-5)
    assert out_np.shape == (3, 5, 11) and (np.diff(out_np, axis=-1) >= 0).all()
    with pytest.raises(ValueError, match="weights"):
        rollout.weighted_quantile(many, np.ones(98), levels)


def test_weighted_quantile_recovers_a_mixture_of_identical_distributions():
    # 9 paths that all predict the same quantiles -> re-aggregation gives those quantiles back
    levels = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99)
    single = np.array(levels, np.float32) * 10.0
    samples = np.tile(single, 9)[None]
    weights = np.outer(rollout.trapezoid_masses(np.arange(1, 10) / 10), rollout.trapezoid_masses(levels)).ravel()
    out = rollout.weighted_quantile(samples, weights, levels)[0]
    np.testing.assert_allclose(out[1:-1], single[1:-1], atol=0.6)
    assert out[5] == pytest.approx(5.0, abs=1e-4)


def test_buckets_and_fitting(debug_config):
    assert rollout.default_context_buckets(debug_config) == (16, 32, 64, 128)
    assert rollout.default_context_buckets(model_config("tiny"))[-1] == 2048
    context = np.arange(40, dtype=np.float32)[None]
    fitted = rollout.fit_to_bucket(context, (16, 64, 128), 128)
    assert fitted.shape == (1, 64) and np.isnan(fitted[0, :24]).all()
    np.testing.assert_array_equal(fitted[0, 24:], context[0])
    assert rollout.fit_to_bucket(np.zeros((2, 300), np.float32), (16, 64, 128), 128).shape == (2, 128)


# ----------------------------------------------------------------------------- forecasts


def test_input_validation(params, debug_config):
    context = _context(0, 2, 30)
    with pytest.raises(ValueError, match="horizon"):
        rollout.forecast_quantiles(params, debug_config, context, 0)
    with pytest.raises(ValueError, match="context must have shape"):
        rollout.forecast_quantiles(params, debug_config, context[0], 12)
    with pytest.raises(ValueError, match="multiples of patch_size"):
        rollout.forecast_quantiles(params, debug_config, context, 12, context_buckets=(20, 40))
    with pytest.raises(ValueError, match="power of two"):
        rollout.forecast_quantiles(params, debug_config, context, 12, max_batch_size=12)


def test_single_pass_matches_the_sorted_encoder_output(params, debug_config):
    context = _context(1, 3, 45)
    out = rollout.forecast_quantiles(params, debug_config, context, 20)
    direct = np.sort(np.asarray(enc.predict(params, debug_config, context, None, 2)), axis=-1)[:, :20]
    assert out.shape == (3, 20, debug_config.num_quantiles)
    np.testing.assert_allclose(out, direct, atol=2e-5)


def test_rollout_to_a_long_horizon(params, debug_config):
    context = _context(2, 3, 90)
    context[2] = np.nan  # an all-missing row stays finite
    out = rollout.forecast_quantiles(params, debug_config, context, 300)
    assert out.shape == (3, 300, debug_config.num_quantiles) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert (np.diff(out, axis=-1) >= 0).all()  # sorted along Q
    # the first chunk is the single-pass forecast; later chunks come from the rollout
    first = rollout.forecast_quantiles(params, debug_config, context, debug_config.max_horizon)
    np.testing.assert_allclose(out[:, : debug_config.max_horizon], first, atol=2e-5)
    # the second chunk also predicts max_output_patches, so a 2-chunk horizon reproduces the start of
    # the long one; running the 27 path rows in batches of 8 must not change it
    two_chunks = 2 * debug_config.max_horizon
    chunked = rollout.forecast_quantiles(params, debug_config, context, two_chunks, max_batch_size=8)
    np.testing.assert_allclose(chunked, out[:, :two_chunks], atol=2e-5)


def test_bounded_number_of_compilations(params, debug_config):
    forward = enc.jitted_apply(debug_config)
    buckets = rollout.default_context_buckets(debug_config)
    rollout.forecast_quantiles(params, debug_config, _context(3, 5, 16), 24)
    before = forward._cache_size()
    lengths = np.random.default_rng(4).integers(1, 400, size=25)
    for seed, length in enumerate(lengths):
        out = rollout.forecast_quantiles(params, debug_config, _context(seed, 5, int(length)), 24)
        assert out.shape == (5, 24, debug_config.num_quantiles)
    assert forward._cache_size() - before <= len(buckets) - 1
