"""The stage-2 input scale (data/input_scale.py): what a stage-2 checkpoint records and both the
training task and the Forecaster map windows through."""

import numpy as np
import pytest

from factost_jax.data.input_scale import (InputScale, dataset_input_scale, identity_scale, recorded_input_scale,
                                          to_metric_scale, to_model_scale)
from factost_jax.data.synthetic import synthetic_network


@pytest.mark.parametrize("norm", ["global", "per_node"])
def test_dataset_scale_is_the_train_z_score_of_channel_0(norm):
    dataset = synthetic_network(num_nodes=3, num_days=4, freq="1h").replace(norm=norm)
    scale = dataset_input_scale(dataset)
    normalizer = dataset.normalizer()
    assert scale.mean.shape == ((1,) if norm == "global" else (3,)) and scale.mean.dtype == np.float32
    np.testing.assert_array_equal(scale.mean, normalizer.mean[:, 0])
    np.testing.assert_array_equal(scale.std, normalizer.std[:, 0])
    # a window [B, T, N] (NaN kept) and forecasts [B, H, N, Q] map there and back
    window = dataset.values[None, :24, :, 0].copy()
    window[0, :, 1] = np.nan  # a node with no observed context stays missing, not 0
    z = to_model_scale(window, scale)
    assert z.dtype == np.float32 and np.isnan(z[0, :, 1]).all()
    np.testing.assert_allclose(z[0, :, 0], (window[0, :, 0] - scale.mean[0]) / scale.std[0], rtol=1e-6)
    quantiles = np.stack([z, z + 1.0], axis=-1)
    np.testing.assert_allclose(to_metric_scale(quantiles, scale, quantile_axis=True)[..., 0], window, rtol=1e-6)
    np.testing.assert_allclose(to_metric_scale(z, scale, quantile_axis=False), window, rtol=1e-6)
    # metrics on the normalised scale already: the windows are the model's input as they are
    assert dataset_input_scale(dataset.replace(rescale=False)) == identity_scale()


def test_recorded_scale_round_trips_through_metadata():
    scale = InputScale(mean=np.array([1.5, -2.0], np.float32), std=np.array([3.0, 0.25], np.float32))
    loaded = recorded_input_scale({"input_scale": scale.to_dict()})
    np.testing.assert_array_equal(loaded.mean, scale.mean)
    np.testing.assert_array_equal(loaded.std, scale.std)
    assert recorded_input_scale({"stage": "adapt"}) is None  # written before the scale was recorded
    with pytest.raises(ValueError, match="'input_scale' must hold equal-length 'mean' and positive 'std'"):
        recorded_input_scale({"input_scale": {"mean": [0.0], "std": [0.0]}})
