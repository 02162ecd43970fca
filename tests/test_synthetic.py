"""Tests for factost_jax.data.synthetic: KernelSynth series and the synthetic sensor network."""

import pickle
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from factost_jax.data import synthetic
from factost_jax.data.synthetic import KernelSynthSource, kernel_synth_series, synthetic_network
from factost_jax.data.types import STDataset


# ------------------------------------------------------------------------------------ helpers
def _autocorrelation(x: np.ndarray) -> np.ndarray:
    """`[L] -> [L]` sample autocorrelation by FFT (lag 0 = 1)."""
    x = x - x.mean()
    spectrum = np.fft.rfft(x, 2 * x.size)
    acov = np.fft.irfft(spectrum * np.conj(spectrum))[: x.size]
    return acov / max(acov[0], 1e-300)


def _bank(length: int) -> dict:
    return dict(synthetic.kernel_bank(length))


def _seasonal_residual(ds: STDataset) -> np.ndarray:
    """`[T, N]` flow minus its train-split mean for the same (weekday/weekend, time-of-day) slot,
    scaled to unit train variance per node; NaN where missing."""
    values = ds.values[:, :, 0].astype(np.float64)
    train_end, _ = ds.split_bounds()
    slot = (ds.day_of_week >= 5).astype(int) * ds.steps_per_day + ds.time_of_day
    profile = np.zeros((2 * ds.steps_per_day, ds.num_nodes))
    for key in np.unique(slot[:train_end]):
        profile[key] = np.nanmean(values[:train_end][slot[:train_end] == key], axis=0)
    residual = values - profile[slot]
    return residual / np.nanstd(residual[:train_end], axis=0)


@pytest.fixture(scope="module")
def network() -> STDataset:
    return synthetic_network()  # the defaults other parts of the project use


# ------------------------------------------------------------------------------------ KernelSynth
def test_kernel_synth_series_is_a_deterministic_finite_float32_path():
    first = kernel_synth_series(7)
    assert first.shape == (1024,) and first.dtype == np.float32
    assert np.all(np.isfinite(first))
    np.testing.assert_array_equal(first, kernel_synth_series(7))
    assert not np.array_equal(first, kernel_synth_series(8))
    for length, max_kernels in ((2, 1), (17, 3), (300, 5)):
        for seed in range(6):
            series = kernel_synth_series(seed, length=length, max_kernels=max_kernels)
            assert series.shape == (length,) and series.dtype == np.float32
            assert np.all(np.isfinite(series))


@pytest.mark.parametrize("kwargs", [dict(seed=-1), dict(seed=0, length=1), dict(seed=0, max_kernels=0),
                                    dict(seed=1.5)])
def test_kernel_synth_series_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        kernel_synth_series(**kwargs)


def test_kernel_bank_yields_periodic_trending_and_rough_families():
    length, count = 512, 100
    t = np.linspace(0.0, 1.0, length)
    design = np.stack([np.ones(length), t], axis=1)
    periodic = trending = rough = 0
    for seed in range(count):
        series = kernel_synth_series(seed, length=length).astype(np.float64)
        coef = np.linalg.lstsq(design, series, rcond=None)[0]
        detrended = series - design @ coef
        r_squared = 1.0 - detrended.var() / max(series.var(), 1e-300)
        acf = _autocorrelation(detrended)
        first_negative = int(np.argmax(acf < 0)) if np.any(acf < 0) else length
        # A periodic series correlates with itself again after decorrelating once.
        periodic += first_negative < length // 2 and acf[first_negative : length // 2].max() > 0.5
        trending += r_squared > 0.8
        rough += acf[1] < 0.5
    assert periodic >= 0.25 * count, periodic
    assert trending >= 0.05 * count, trending
    assert rough >= 0.05 * count, rough


def test_pivoted_cholesky_reconstructs_a_low_rank_kernel():
    bank = _bank(200)
    term = (bank["rbf(0.1)"] * bank["dot_product(1)"] + bank["rational_quadratic(1)"]).terms[0]
    factor, residual = synthetic.pivoted_cholesky(term.rest, max_rank=200, rel_tol=1e-10)
    dense = term.rest.dense_smooth()
    assert factor.shape[0] < 80  # smooth kernels are numerically low-rank
    reconstruction = factor.T @ factor + np.diag(residual)
    assert np.abs(reconstruction - dense).max() <= 1e-8 * np.diag(dense).max()
    assert synthetic.pivoted_cholesky(term.rest, max_rank=3) is None  # rank 3 is not enough


def test_dense_square_root_handles_singular_and_indefinite_matrices():
    bank = _bank(40)
    singular = (bank["periodic(4)"] * bank["rbf(1)"]).terms[0].dense_smooth()  # rank < 40
    root = synthetic.dense_square_root(singular)
    assert np.abs(root @ root.T - singular).max() < 1e-3
    indefinite = np.diag([2.0, -1.0, 1.0])  # Cholesky fails at every jitter: clipped eigh instead
    root = synthetic.dense_square_root(indefinite)
    np.testing.assert_allclose(root @ root.T, np.diag([2.0, 0.0, 1.0]), atol=1e-12)


def test_periodic_product_paths_have_the_product_covariance():
    length, periods = 20, (4, 7)
    paths = synthetic.periodic_product_paths(periods, length, 20000, np.random.default_rng(0), budget=1 << 30)
    assert paths.shape == (20000, length)
    target = np.ones((length, length))
    for period in periods:
        target *= synthetic._symmetric_toeplitz(synthetic.periodic_lags(period, length))
    assert np.abs(paths.T @ paths / len(paths) - target).max() < 0.05
    # lcm(365, 512, 672) = 3.9M points: over budget, so the caller takes the dense path.
    assert synthetic.periodic_product_paths((365, 512, 672), 1024, 2, np.random.default_rng(0)) is None


def _max_normalised_covariance_error(draw, target: np.ndarray, num_samples: int) -> float:
    """max_ij |empirical - target| / sqrt(target_ii target_jj) over `num_samples` zero-mean draws."""
    samples = np.stack([draw() for _ in range(num_samples)])
    scale = np.sqrt(np.outer(np.diag(target), np.diag(target)))
    return float(np.max(np.abs(samples.T @ samples / num_samples - target) / scale))


@pytest.mark.parametrize("max_rank", [None, 1])  # low-rank x FFT path, then the forced dense fallback
def test_term_sampler_has_the_term_covariance(max_rank):
    bank = _bank(64)
    (term,) = ((bank["dot_product(1)"] * bank["periodic(12)"]) * bank["rational_quadratic(0.1)"]).terms
    assert synthetic.pivoted_cholesky(term.rest, max_rank=16) is not None  # default path is the fast one
    rng = np.random.default_rng(0)
    error = _max_normalised_covariance_error(
        lambda: synthetic.sample_term_smooth(term, rng, max_rank=max_rank), term.dense_smooth(), 2000)
    assert error < 0.12, error


def test_sampled_paths_have_the_composed_kernel_covariance():
    bank = _bank(64)
    kernel = ((bank["dot_product(1)"] * bank["periodic(12)"]) * bank["rational_quadratic(0.1)"]
              + bank["periodic(4)"] * bank["periodic(7)"] + bank["rbf(1)"] + bank["white(0.1)"])
    assert len(kernel.terms) == 3  # periodic(12) product, periodic(4)*periodic(7), non-periodic rest
    rng = np.random.default_rng(1)
    error = _max_normalised_covariance_error(lambda: synthetic.sample_gp_path(kernel, rng), kernel.dense(), 2000)
    assert error < 0.12, error


def test_kernel_algebra_matches_dense_matrices():
    bank = _bank(16)
    a, b, c = bank["dot_product(10)"], bank["periodic(4)"], bank["white(1)"]
    np.testing.assert_allclose((a * b + c).dense(), a.dense() * b.dense() + c.dense(), rtol=1e-12)
    np.testing.assert_allclose(((a + c) * b).dense(), (a.dense() + c.dense()) * b.dense(), rtol=1e-12)
    np.testing.assert_allclose((c * c).dense(), c.dense() * c.dense(), rtol=1e-12)


def test_kernel_synth_source_is_random_access_deterministic_and_picklable():
    grain = pytest.importorskip("grain")
    source = KernelSynthSource(num_series=1_000_000, length=64, max_kernels=5, seed=3)
    assert len(source) == 1_000_000
    np.testing.assert_array_equal(source[123_456], source[123_456])
    assert not np.array_equal(source[0], source[1])
    assert not np.array_equal(source[0], KernelSynthSource(10, length=64, seed=4)[0])
    np.testing.assert_array_equal(source[-1], source[999_999])
    restored = pickle.loads(pickle.dumps(source))
    assert restored == source and repr(restored) == repr(source)
    np.testing.assert_array_equal(restored[42], source[42])
    series = source[5]
    assert series.shape == (64,) and series.dtype == np.float32 and np.all(np.isfinite(series))
    dataset = grain.MapDataset.source(source)
    np.testing.assert_array_equal(dataset[7], source[7])
    with pytest.raises(IndexError):
        source[1_000_000]
    with pytest.raises(ValueError):
        KernelSynthSource(0)


# ------------------------------------------------------------------------------------ network
def test_network_layout_and_conventions(network):
    ds = network
    assert ds.values.shape == (28 * 288, 64, 1) and ds.values.dtype == np.float32
    assert (ds.name, ds.domain, ds.freq, ds.norm, ds.null_val, ds.rescale) == (
        "SYNTHETIC", "synthetic", "5min", "global", 0.0, True)
    assert ds.split_ratios == (0.6, 0.2, 0.2)
    assert pd.Timestamp(ds.timestamps[0]) == pd.Timestamp("2024-01-01 00:00")
    assert ds.day_of_week[0] == 0 and ds.time_of_day[0] == 0
    observed = ds.values[ds.mask]
    assert observed.min() >= 0.0 and np.all(observed == np.round(observed))
    adjacency = ds.adjacency
    assert adjacency.shape == (64, 64) and adjacency.dtype == np.float32
    np.testing.assert_array_equal(adjacency, adjacency.T)
    assert np.all(np.diag(adjacency) == 0) and adjacency.min() >= 0.0
    degree = (adjacency > 0).sum(axis=1)
    assert degree.min() >= 1 and 3 <= degree.mean() <= 12


def test_network_missing_rate_and_outages(network):
    missing = ~network.mask[:, :, 0]
    assert abs(missing.mean() - 0.02) < 0.004
    # Outages make runs of >= 12 consecutive missing steps (1 h at 5 min), which points alone
    # would essentially never produce at a 2% rate.
    edges = np.diff(np.pad(missing.T.astype(np.int8), ((0, 0), (1, 1))), axis=1)  # [N, T + 1]
    # argwhere walks node by node, so the k-th run start and the k-th run end belong together.
    run_lengths = np.argwhere(edges == -1)[:, 1] - np.argwhere(edges == 1)[:, 1]
    assert (run_lengths >= 12).sum() >= 20
    no_missing = synthetic_network(num_nodes=8, num_days=1, missing_rate=0.0)
    assert no_missing.mask.all()


def test_network_is_deterministic_in_seed():
    first = synthetic_network(num_nodes=16, num_days=2, seed=5)
    again = synthetic_network(num_nodes=16, num_days=2, seed=5)
    other = synthetic_network(num_nodes=16, num_days=2, seed=6)
    np.testing.assert_array_equal(first.values, again.values)  # NaNs compare equal here
    np.testing.assert_array_equal(first.adjacency, again.adjacency)
    assert not np.array_equal(first.values, other.values, equal_nan=True)


def test_network_has_daily_and_weekly_cycles(network):
    flow = network.values[:, :, 0]
    weekend = network.day_of_week >= 5
    assert np.nanmean(flow[weekend]) < 0.8 * np.nanmean(flow[~weekend])
    hour = network.time_of_day // 12
    weekday = ~weekend
    night = np.nanmean(flow[weekday & (hour == 3)])
    morning = np.nanmean(flow[weekday & (hour == 8)])
    assert morning > 3 * night


def test_seasonal_naive_day_beats_the_global_mean(network):
    flow = network.values[:, :, 0]
    train_end, val_end = network.split_bounds()
    day = network.steps_per_day
    target, naive = flow[val_end:], flow[val_end - day : -day]
    valid = ~np.isnan(target) & ~np.isnan(naive) & (target != network.null_val)
    naive_mae = np.abs(target - naive)[valid].mean()
    mean_mae = np.abs(target - np.nanmean(flow[:train_end]))[valid].mean()
    assert naive_mae < 0.7 * mean_mae
    assert naive_mae > 0.1 * mean_mae  # yet not trivial: noise and incidents remain


def test_neighbours_correlate_more_than_non_neighbours(network):
    residual = _seasonal_residual(network)
    correlation = pd.DataFrame(residual).corr().to_numpy()
    linked = network.adjacency > 0
    unlinked = ~linked & ~np.eye(network.num_nodes, dtype=bool)
    assert correlation[linked].mean() > correlation[unlinked].mean() + 0.2


def test_neighbour_aware_linear_model_beats_per_node_one(network):
    horizon, lags = 12, 4
    residual = np.nan_to_num(_seasonal_residual(network))
    adjacency = network.adjacency
    neighbour = residual @ (adjacency / adjacency.sum(axis=1, keepdims=True)).T
    train_end, val_end = network.split_bounds()

    def design(start, stop, with_neighbours):
        t = np.arange(max(start, lags), stop - horizon)
        columns = [residual[t - k] for k in range(lags)]
        if with_neighbours:
            columns += [neighbour[t - k] for k in range(lags)]
        return np.stack(columns, axis=-1).reshape(-1, len(columns)), residual[t + horizon].reshape(-1)

    test_mse = {}
    for with_neighbours in (False, True):
        x, y = design(0, train_end, with_neighbours)
        weights = np.linalg.lstsq(x, y, rcond=None)[0]
        x, y = design(val_end, network.num_steps, with_neighbours)
        test_mse[with_neighbours] = np.mean((x @ weights - y) ** 2)
    assert test_mse[True] < 0.99 * test_mse[False], test_mse
    assert test_mse[False] < 0.9 * np.mean(y**2)  # the per-node model itself beats predicting 0


def test_network_length_override_frequency_and_single_node():
    hourly = synthetic_network(num_nodes=10, freq="1h", num_steps=50, seed=1)
    assert hourly.values.shape == (50, 10, 1) and hourly.steps_per_day == 24
    assert pd.Timestamp(hourly.timestamps[1]) == pd.Timestamp("2024-01-01 01:00")
    single = synthetic_network(num_nodes=1, num_days=1)
    assert single.values.shape == (288, 1, 1) and single.adjacency.tolist() == [[0.0]]
    tiny = synthetic_network(num_nodes=3, num_steps=2, missing_rate=0.0)
    assert tiny.values.shape == (2, 3, 1) and np.nanmax(tiny.values) < 5000  # no blow-up when T is tiny


@pytest.mark.parametrize("kwargs", [dict(num_nodes=0), dict(num_days=0), dict(num_steps=1), dict(missing_rate=1.0),
                                    dict(missing_rate=-0.1), dict(freq="banana"), dict(seed=-3)])
def test_network_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        synthetic_network(**kwargs)


def test_random_geometric_graph_is_symmetric_and_sparse():
    graph = synthetic.random_geometric_graph(500, np.random.default_rng(0))
    edges = set(zip(graph.senders.tolist(), graph.receivers.tolist()))
    assert edges == {(r, s) for s, r in edges}
    assert all(s != r for s, r in edges)
    assert np.all(np.diff(graph.receivers) >= 0)
    assert graph.degree.min() >= 1 and 5 <= graph.degree.mean() <= 10
    x = np.random.default_rng(1).standard_normal((3, 500))
    dense = graph.dense_adjacency().astype(np.float64)
    np.testing.assert_allclose(graph.neighbour_mean(x, max_chunk_elements=7),
                               x @ (dense / dense.sum(axis=1, keepdims=True)).T, rtol=1e-10)


def test_network_with_8000_nodes_builds_in_bounded_memory():
    tracemalloc.start()
    try:
        ds = synthetic_network(num_nodes=8000, num_days=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ds.values.shape == (288, 8000, 1)
    assert ds.adjacency.shape == (8000, 8000)
    degree = np.count_nonzero(ds.adjacency, axis=1)
    assert degree.min() >= 1 and 5 <= degree.mean() <= 10
    # The dense float32 adjacency alone is 256 MB; everything else is O(N * T).
    assert peak < 600 * 2**20, peak / 2**20
