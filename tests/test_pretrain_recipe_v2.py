"""Pretraining recipe v2 (issue 13): seasonal corpus, per-batch context widths, user context lengths,
init_from. Cheap: no model is run except in the init_from test (tiny shapes)."""

import jax
import numpy as np
import pytest

from factost_jax import checkpoint as ckpt_io
from factost_jax.configs import pretrain as pretrain_configs
from factost_jax.data import pipeline as P
from factost_jax.data.pretrain_windows import apply_context_width, context_width_for_batch, visible_lengths
from factost_jax.data.seasonal_synth import SeasonalSynthSource, daily_profile, seasonal_synth_series
from factost_jax.train.tasks import PretrainTask, validate_pretrain_config

L, H, PS = 256, 64, 16


def bucketed_config(**overrides) -> P.PretrainDataConfig:
    fields = dict(context_length=L, predict_length=H, patch_size=PS, min_context=8, output_patch_buckets=(1, 4),
                  context_buckets=(32, 128, 256), context_bucket_weights=(0.5, 0.3, 0.2), user_context_share=0.5,
                  batch_size=16, corpora=(("seasonal", 1.0),), seasonal_series=1_000, seasonal_length=1024,
                  read_threads=0, prefetch_batches=0, seed=3)
    fields.update(overrides)
    return P.PretrainDataConfig(**fields)


# --------------------------------------------------------------------------- seasonal generator
def test_seasonal_series_are_deterministic_distinct_and_periodic():
    a, b = seasonal_synth_series(11, 2048), seasonal_synth_series(11, 2048)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (2048,)
    assert not np.array_equal(seasonal_synth_series(12, 2048), a)
    source = SeasonalSynthSource(50, 1024, seed=5)
    np.testing.assert_array_equal(source[7], SeasonalSynthSource(50, 1024, seed=5)[7])
    # Most series repeat themselves: a lag of one of the generator's periods explains them better than lag 1.
    def seasonal_gain(x):
        x = np.nan_to_num(x - np.nanmean(x))
        lags = (7, 12, 24, 30, 48, 52, 96, 144, 168, 288, 672)
        best = min(np.mean(np.abs(x[lag:] - x[:-lag])) for lag in lags)
        return best / max(np.mean(np.abs(x[1:] - x[:-1])), 1e-9)
    gains = [seasonal_gain(source[i]) for i in range(50)]
    assert np.median(gains) < 3.0 and all(np.isfinite(source[i]).mean() > 0.8 for i in range(50))


def test_daily_profile_shapes_and_bad_shape():
    phase = np.linspace(0, 1, 97)[:-1]
    rng = np.random.default_rng(0)
    rectified = daily_profile(phase, "rectified", rng)
    assert rectified.min() == 0.0 and rectified.max() > 0.9
    assert np.all(np.abs(daily_profile(phase, "square", rng)) <= 1.0)
    with pytest.raises(ValueError, match="unknown profile shape 'zigzag'"):
        daily_profile(phase, "zigzag", rng)
    with pytest.raises(ValueError, match="num_series must be a positive integer"):
        SeasonalSynthSource(0)


# --------------------------------------------------------------------------- per-batch widths and visible lengths
def test_context_width_is_a_pure_function_of_the_batch_index_and_follows_the_weights():
    widths, probs = (32, 128, 256), (0.5, 0.3, 0.2)
    draws = [context_width_for_batch(3, k, widths, probs) for k in range(2000)]
    assert draws == [context_width_for_batch(3, k, widths, probs) for k in range(2000)]
    shares = [draws.count(w) / len(draws) for w in widths]
    np.testing.assert_allclose(shares, probs, atol=0.04)


def test_visible_lengths_cover_the_range_and_the_user_lengths():
    rng = np.random.default_rng(0)
    draws = rng.random((20_000, 2))
    spec_law = visible_lengths(draws, 256, 8, 0.0)
    assert spec_law.min() == 9 and spec_law.max() == 256
    mixed = visible_lengths(draws, 256, 8, 0.5)
    assert mixed.min() >= 9 and mixed.max() <= 256
    for length in (12, 24, 96, 168, 256):  # user lengths below the width, and the full width
        assert np.mean(mixed == length) > 0.02, length
    np.testing.assert_array_equal(mixed[draws[:, 1] >= 0.5], spec_law[draws[:, 1] >= 0.5])


def test_apply_context_width_keeps_the_last_steps_and_masks_the_prefix():
    context = np.arange(2 * L, dtype=np.float32).reshape(2, L)
    draws = np.array([[0.0, 0.9], [0.999, 0.9]], np.float32)  # shortest and longest visible, no user length
    cut = apply_context_width(context, draws, 64, 8, 0.5)
    assert cut.shape == (2, 64)
    assert np.isfinite(cut[0]).sum() == 9 and np.isfinite(cut[1]).sum() == 64
    np.testing.assert_array_equal(cut[1], context[1, -64:])


def test_bucketed_stream_cuts_each_batch_to_a_drawn_width():
    config = bucketed_config()
    batches = [b for b, _ in zip(iter(P.make_pretrain_dataset(config)), range(12))]
    widths = {b["context"].shape[1] for b in batches}
    assert widths <= {32, 128, 256} and len(widths) >= 2
    for index, batch in enumerate(batches):
        width = context_width_for_batch(config.seed, index, config.context_widths, config.context_width_probabilities)
        assert batch["context"].shape == (16, width) and batch["context_mask"].shape == (16, width)
        visible = batch["context_mask"].sum(1)
        assert visible.max() <= width and batch["target_mask"][:, :PS].any(1).all()
    validation = P.make_validation_batches(config, num_windows=32, batch_size=16)
    assert all(b["context"].shape == (16, L) and b["target"].shape == (16, H) for b in validation)


@pytest.mark.parametrize("overrides, message", [
    (dict(context_buckets=(32, 300)), "context_buckets: 300 must be a multiple of patch_size=16"),
    (dict(context_buckets=(32, 32)), "context_buckets must be distinct"),
    (dict(context_bucket_weights=(1.0, 2.0)), "must give one weight per context bucket"),
    (dict(user_context_share=1.5), "user_context_share must lie in"),
    (dict(context_buckets=(), context_bucket_weights=(), user_context_share=0.2), "user_context_share needs"),
    (dict(seasonal_length=40), "seasonal_length=40 is too short"),
])
def test_bucket_config_errors_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        bucketed_config(**overrides)


# --------------------------------------------------------------------------- configs and init_from
def test_v2_recipe_defaults():
    config = pretrain_configs.get_config("tiny")
    data = validate_pretrain_config(config).data
    assert data.min_context == 8 and data.context_length == 2048
    assert data.context_widths == (64, 256, 1024, 2048) and 6 in data.output_patch_buckets
    assert dict(data.corpora)["seasonal"] > 0 and data.user_context_share > 0
    debug = validate_pretrain_config(pretrain_configs.get_config("debug")).data
    assert debug.context_widths == (debug.context_length,) and dict(debug.corpora)["seasonal"] > 0


def test_init_from_loads_the_shipped_weights_and_rejects_bad_names():
    config = pretrain_configs.get_config("tiny")
    config.data.corpora = (("seasonal", 1.0),)
    config.init_from = "factost-tiny"
    run_config = validate_pretrain_config(config)
    task = PretrainTask(run_config)
    values = task.initial_values()

    _, shipped = ckpt_io.load_inference_params(run_config.init_from)
    assert jax.tree.structure(values) == jax.tree.structure(shipped)
    for got, want in zip(jax.tree.leaves(values), jax.tree.leaves(shipped)):
        np.testing.assert_array_equal(got, want)
    config.init_from = "no-such-model"
    with pytest.raises(ValueError, match="init_from: "):
        validate_pretrain_config(config)
