"""BasicTS masked metrics, quantile metrics and the per-horizon accumulator, against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factost_jax import metrics


def approx(value, expected, rel=1e-5):
    return float(value) == pytest.approx(expected, rel=rel, abs=1e-7)


# --------------------------------------------------------------------------- masked point metrics
def test_nan_null_hand_computed():
    pred = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    target = np.array([2.0, np.nan, 1.0, 4.0], np.float32)
    # observed errors: |1-2| = 1, |3-1| = 2, |4-4| = 0
    assert approx(metrics.masked_mae(pred, target), 1.0)
    assert approx(metrics.masked_mse(pred, target), 5.0 / 3.0)
    assert approx(metrics.masked_rmse(pred, target), math.sqrt(5.0 / 3.0))
    assert approx(metrics.masked_mape(pred, target), (0.5 + 2.0 + 0.0) / 3.0)


def test_zero_null_drops_zeros_and_near_zeros_nan_null_keeps_them():
    pred = np.array([5.0, 1.0, 1.0, 1.0], np.float32)
    target = np.array([0.0, 2.0, 3e-5, 1e-4], np.float32)
    # null_val=0: targets 0 and 3e-5 are within 5e-5 of 0 and do not count.
    assert approx(metrics.masked_mae(pred, target, null_val=0.0), (1.0 + (1.0 - 1e-4)) / 2.0)
    # null_val=NaN: every target counts for MAE ...
    assert approx(metrics.masked_mae(pred, target), (5.0 + 1.0 + (1.0 - 3e-5) + (1.0 - 1e-4)) / 4.0)
    # ... but MAPE still drops |target| <= 5e-5.
    assert approx(metrics.masked_mape(pred, target), (0.5 + (1.0 - 1e-4) / 1e-4) / 2.0, rel=1e-4)


def test_null_val_atol_edge_is_absolute():
    pred = np.zeros(4, np.float32)
    # 1.00004 is within 5e-5 of null_val=1 (masked); 1.0001 is not.
    target = np.array([1.00004, 1.0001, 0.99996, 3.0], np.float32)
    assert approx(metrics.masked_mae(pred, target, null_val=1.0), (1.0001 + 3.0) / 2.0)
    # A large null value uses the same absolute tolerance (rtol is 0, as in BasicTS).
    target_large = np.array([1000.0, 1000.01, 5.0], np.float32)
    assert approx(metrics.masked_mae(np.zeros(3), target_large, null_val=1000.0), (1000.01 + 5.0) / 2.0)


def test_nan_target_never_counts_even_with_zero_null():
    pred = np.array([1.0, 2.0], np.float32)
    target = np.array([np.nan, 4.0], np.float32)
    assert approx(metrics.masked_mae(pred, target, null_val=0.0), 2.0)


def test_extra_mask_is_anded():
    pred = np.array([1.0, 2.0, 3.0], np.float32)
    target = np.array([2.0, 4.0, 0.0], np.float32)
    mask = np.array([True, False, True])
    # index 1 removed by the mask, index 2 by null_val=0
    assert approx(metrics.masked_mae(pred, target, null_val=0.0, mask=mask), 1.0)


def test_all_masked_losses_are_zero():
    pred = np.array([[1.0, 2.0]], np.float32)
    target = np.array([[0.0, 0.0]], np.float32)
    for fn in (metrics.masked_mae, metrics.masked_mse, metrics.masked_rmse, metrics.masked_mape):
        assert float(fn(pred, target, null_val=0.0)) == 0.0
        assert float(fn(pred, np.full_like(target, np.nan))) == 0.0
    assert float(metrics.pinball_loss(np.ones((1, 2, 3)), target, [0.1, 0.5, 0.9], mask=np.zeros((1, 2), bool))) == 0.0


def test_nan_prediction_surfaces_only_where_target_counts():
    target = np.array([1.0, 0.0, 3.0], np.float32)
    nan_at_observed = np.array([np.nan, 1.0, 3.0], np.float32)
    nan_at_null = np.array([2.0, np.nan, 3.0], np.float32)
    for fn in (metrics.masked_mae, metrics.masked_rmse, metrics.masked_mape):
        assert math.isnan(float(fn(nan_at_observed, target, null_val=0.0)))
        assert math.isfinite(float(fn(nan_at_null, target, null_val=0.0)))
    assert approx(metrics.masked_mae(nan_at_null, target, null_val=0.0), 0.5)


def test_works_under_jit_and_gradients_ignore_nan_targets():
    pred = jnp.array([1.0, 2.0, 3.0])
    target = jnp.array([2.0, np.nan, 0.0])
    loss = jax.jit(lambda p, t: metrics.masked_mae(p, t, 0.0))
    assert approx(loss(pred, target), 1.0)
    grad = jax.grad(lambda p: metrics.masked_mse(p, target, np.nan))(pred)
    np.testing.assert_allclose(np.asarray(grad), [-1.0, 0.0, 3.0])  # d/dp mean((p-t)^2) over 2 points
    assert np.all(np.isfinite(jax.grad(lambda p: metrics.pinball_loss(
        jnp.stack([p - 1, p, p + 1], -1), target, jnp.array([0.1, 0.5, 0.9])))(pred)))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="does not match"):
        metrics.masked_mae(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="null_val"):
        metrics.masked_mae(np.zeros(3), np.zeros(3), null_val="zero")


# --------------------------------------------------------------------------- quantile metrics
def test_pinball_wql_and_coverage_hand_computed():
    levels = np.array([0.1, 0.5, 0.9], np.float32)
    quantiles = np.array([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [9.0, 9.0, 9.0]], np.float32)
    target = np.array([2.0, 5.0, np.nan], np.float32)
    # y=2: q.1 d=1 -> 0.1; q.5 d=0 -> 0; q.9 d=-2 -> 0.2.  y=5: d=(4,3,1) -> 0.4, 1.5, 0.9.  NaN target ignored.
    assert approx(metrics.pinball_loss(quantiles, target, levels), (0.3 + 2.8) / (2 * 3))
    # mean over levels of 2 * sum pinball / sum |y|: (2*0.5 + 2*1.5 + 2*1.1) / 7 / 3
    assert approx(metrics.weighted_quantile_loss(quantiles, target, levels), (1.0 + 3.0 + 2.2) / 7.0 / 3.0)
    assert approx(metrics.pinball_loss(quantiles, target, levels, mask=[True, False, True]), 0.3 / 3)
    # [1, 4] holds 2 but not 5
    assert approx(metrics.interval_coverage(quantiles[:, 0], quantiles[:, 2], target), 0.5)
    assert math.isnan(float(metrics.interval_coverage(quantiles[:, 0], quantiles[:, 2], target, mask=np.zeros(3, bool))))
    assert math.isnan(float(metrics.weighted_quantile_loss(quantiles, np.zeros(3), levels)))
    with pytest.raises(ValueError, match="pred_quantiles"):
        metrics.pinball_loss(quantiles[:, :2], target, levels)


# --------------------------------------------------------------------------- HorizonMetrics
def test_rmse_is_sqrt_of_global_mse_not_mean_of_batch_rmse():
    acc = metrics.HorizonMetrics(horizon=1, null_val=np.nan)
    acc.update(np.zeros((1, 1, 1)), np.full((1, 1, 1), 3.0))  # batch RMSE 3
    acc.update(np.zeros((3, 1, 1)), np.full((3, 1, 1), 1.0))  # batch RMSE 1
    result = acc.result()["avg"]
    assert result["RMSE"] == pytest.approx(math.sqrt((9.0 + 3.0) / 4.0))
    assert result["RMSE"] != pytest.approx((3.0 + 1.0) / 2.0)
    assert result["MAE"] == pytest.approx(6.0 / 4.0)
    assert result["MAPE"] == pytest.approx(1.0)  # reported as a fraction, not a percentage


def _random_case(seed=0, b=10, h=12, n=5, q=(0.1, 0.5, 0.9)):
    rng = np.random.default_rng(seed)
    target = rng.normal(10.0, 5.0, size=(b, h, n)).astype(np.float32)
    target[rng.random(target.shape) < 0.15] = 0.0
    target[rng.random(target.shape) < 0.1] = np.nan
    pred = (target + rng.normal(0.0, 2.0, size=target.shape)).astype(np.float32)
    pred = np.nan_to_num(pred, nan=1.0)
    offsets = np.sort(rng.normal(0.0, 2.0, size=(b, h, n, len(q))), axis=-1)
    quantiles = (pred[..., None] + offsets).astype(np.float32)
    mask = rng.random(target.shape) > 0.1
    return pred, target, mask, quantiles, np.array(q, np.float32)


def test_accumulator_equals_one_shot_and_jax_metrics_across_uneven_batches():
    pred, target, mask, quantiles, levels = _random_case()
    one_shot = metrics.HorizonMetrics(12, 0.0, levels)
    one_shot.update(pred, target, mask, quantiles)
    batched = metrics.HorizonMetrics(12, 0.0, levels)
    for lo, hi in ((0, 3), (3, 4), (4, 10)):
        batched.update(pred[lo:hi], target[lo:hi], mask[lo:hi], quantiles[lo:hi])
    expected, got = one_shot.result(), batched.result()
    assert list(got) == ["avg", "step_3", "step_6", "step_12"]
    for row in expected:
        for name in ("MAE", "RMSE", "MAPE", "QL", "coverage_80"):
            assert got[row][name] == pytest.approx(expected[row][name], rel=1e-10)

    def jax_row(index):
        p, t, m, qs = pred[:, index], target[:, index], mask[:, index], quantiles[:, index]
        observed = metrics.observed_mask(t, 0.0, m)
        return {"MAE": metrics.masked_mae(p, t, 0.0, m), "RMSE": metrics.masked_rmse(p, t, 0.0, m),
                "MAPE": metrics.masked_mape(p, t, 0.0, m),
                "QL": metrics.weighted_quantile_loss(qs, t, levels, observed),
                "coverage_80": metrics.interval_coverage(qs[..., 0], qs[..., 2], t, observed)}

    for row, index in (("avg", slice(None)), ("step_3", 2), ("step_6", 5), ("step_12", 11)):
        for name, value in jax_row(index).items():
            assert got[row][name] == pytest.approx(float(value), rel=1e-4), (row, name)


def test_result_steps_limited_to_horizon_and_step_k_is_index_k_minus_1():
    acc = metrics.HorizonMetrics(horizon=4, null_val=np.nan)
    target = np.zeros((2, 4, 1))
    pred = np.arange(4, dtype=np.float64)[None, :, None].repeat(2, axis=0)
    acc.update(pred, target)
    result = acc.result()
    assert list(result) == ["avg", "step_3"]
    assert result["step_3"]["MAE"] == 2.0
    assert result["avg"]["MAE"] == pytest.approx(1.5)
    assert "QL" not in result["avg"]


def test_accumulator_nan_handling_and_empty_steps():
    acc = metrics.HorizonMetrics(horizon=2, null_val=0.0)
    target = np.array([[[1.0], [0.0]]])
    acc.update(np.array([[[np.nan], [np.nan]]]), target)
    result = acc.result(steps=(1, 2))
    assert math.isnan(result["step_1"]["MAE"])  # NaN forecast of an observed target is not hidden
    assert math.isnan(result["step_2"]["MAE"])  # nothing observed at step 2: undefined, not 0
    assert math.isnan(result["avg"]["MAE"])


def test_accumulator_coverage_only_with_central_levels_and_bad_input():
    pred, target, mask, quantiles, _ = _random_case(seed=1, q=(0.25, 0.5, 0.75))
    acc = metrics.HorizonMetrics(12, np.nan, (0.25, 0.5, 0.75))
    acc.update(pred, target, mask, quantiles)
    assert "QL" in acc.result()["avg"] and "coverage_80" not in acc.result()["avg"]
    with pytest.raises(ValueError, match="quantiles must be"):
        acc.update(pred, target, mask, quantiles[..., :2])
    with pytest.raises(ValueError, match="without quantile_levels"):
        metrics.HorizonMetrics(12).update(pred, target, quantiles=quantiles)
    with pytest.raises(ValueError, match="target must be"):
        metrics.HorizonMetrics(6).update(pred, target)
    with pytest.raises(ValueError, match="horizon"):
        metrics.HorizonMetrics(0)
