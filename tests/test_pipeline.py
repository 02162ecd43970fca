"""Stage-1 pretraining pipeline: spec §2.1 sample construction, Grain batching, sharding, state."""

import json

import numpy as np
import pytest

from factost_jax.data import pipeline as P

L, H, PS, MC = 128, 64, 16, 48
BUCKETS = (1, 2, 4)


def small_config(**overrides) -> P.PretrainDataConfig:
    fields = dict(context_length=L, predict_length=H, patch_size=PS, min_context=MC, output_patch_buckets=BUCKETS,
                  batch_size=8, corpora=(("kernelsynth", 1.0),), kernelsynth_series=10_000,
                  kernelsynth_length=256, read_threads=0, prefetch_batches=0, seed=7)
    fields.update(overrides)
    return P.PretrainDataConfig(**fields)


def take(config, count, process_index=0, process_count=1, provenance=False):
    iterator = iter(P.make_pretrain_dataset(config, process_index, process_count, include_provenance=provenance))
    return [next(iterator) for _ in range(count)]


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# --------------------------------------------------------------------------- spec transform on hand-made series
def test_outlier_masking_and_zscore_use_input_window_stats():
    rng = np.random.default_rng(0)
    inputs = rng.normal(10.0, 2.0, size=L).astype(np.float32)
    labels = rng.normal(10.0, 2.0, size=H).astype(np.float32)
    inputs[5], inputs[7], labels[3], labels[9] = np.nan, 1e4, 1e4, np.nan
    mean, std = np.nanmean(inputs.astype(np.float64)), np.nanstd(inputs.astype(np.float64))
    z_in, z_lab = P.normalize_window(inputs, labels, outlier_z=4.0)
    assert z_in.dtype == np.float32 and z_lab.dtype == np.float32
    expected_in = (inputs - mean) / std
    expected_lab = (labels - mean) / std
    outlier_in = np.abs(expected_in) > 4
    outlier_lab = np.abs(expected_lab) > 4
    assert outlier_in[7] and outlier_lab[3]  # the spikes are outliers of the INPUT statistics
    np.testing.assert_array_equal(np.isnan(z_in), np.isnan(inputs) | outlier_in)
    np.testing.assert_array_equal(np.isnan(z_lab), np.isnan(labels) | outlier_lab)
    keep = ~np.isnan(z_in)
    np.testing.assert_allclose(z_in[keep], expected_in[keep], rtol=1e-5, atol=1e-5)
    keep = ~np.isnan(z_lab)
    np.testing.assert_allclose(z_lab[keep], expected_lab[keep], rtol=1e-5, atol=1e-5)


def test_constant_window_keeps_inputs_raw_and_labels_at_mean():
    inputs = np.full(L, 3.5, np.float32)
    inputs[:10] = np.nan
    labels = np.array([1.0, np.nan, 7.0, 3.5] * (H // 4), np.float32)
    z_in, z_lab = P.normalize_window(inputs, labels)
    np.testing.assert_array_equal(z_in, inputs)
    np.testing.assert_array_equal(np.isnan(z_lab), np.isnan(labels))  # padding never becomes a target
    np.testing.assert_allclose(z_lab[~np.isnan(z_lab)], 3.5)


def test_unobserved_inputs_are_returned_unchanged():
    inputs = np.full(L, np.nan, np.float32)
    labels = np.arange(H, dtype=np.float32)
    z_in, z_lab = P.normalize_window(inputs, labels)
    assert np.isnan(z_in).all()
    np.testing.assert_array_equal(z_lab, labels)


def test_prefix_masking_length_is_uniform_over_the_spec_range():
    inputs = np.arange(L, dtype=np.float32)
    rng = np.random.default_rng(1)
    lengths = []
    for _ in range(3000):
        masked = P.prefix_mask(inputs, rng, MC)
        mask_len = int(np.isnan(masked).sum())
        assert np.isnan(masked[:mask_len]).all()
        np.testing.assert_array_equal(masked[mask_len:], inputs[mask_len:])
        lengths.append(mask_len)
    assert min(lengths) == 0 and max(lengths) == L - MC - 1  # UniformInt[0, L - min_context)
    assert np.isnan(inputs).sum() == 0  # the input is not modified in place


def test_window_padding_and_uniform_start():
    config = small_config()
    series = np.arange(300, dtype=np.float32)
    rng = np.random.default_rng(2)
    starts = []
    for _ in range(3000):
        window, target_start = P.draw_window(series, rng, config)
        assert window.shape == (L + H,)
        index = np.arange(target_start - L, target_start + H)
        inside = (index >= 0) & (index < series.size)
        np.testing.assert_array_equal(window[inside], series[index[inside]])
        assert np.isnan(window[~inside]).all()
        starts.append(target_start)
    # Left pad L - MC and right pad H - PS: the first label runs from MC to n - PS.
    assert min(starts) == MC and max(starts) == series.size - PS


def test_window_with_no_observable_label_does_not_crash():
    config = small_config()
    series = np.full(300, np.nan, np.float32)
    series[:MC] = np.linspace(0, 1, MC)  # no label position can ever be observed
    window = P.sample_training_window(series, np.random.default_rng(3), config)
    assert np.isnan(window["labels"]).all()
    batch = P.to_model_batch(window["context"][None], window["labels"][None], 2 * PS)
    assert not batch["target_mask"].any() and (batch["target"] == 0).all()


def test_constant_series_through_the_sample_function():
    config = small_config()
    window = P.sample_training_window(np.full(400, 2.0, np.float32), np.random.default_rng(4), config)
    context, labels = window["context"], window["labels"]
    observed = ~np.isnan(context)
    assert observed[-MC:].all()
    np.testing.assert_array_equal(context[observed], 2.0)
    np.testing.assert_array_equal(labels[~np.isnan(labels)], 2.0)
    assert np.isfinite(labels[:PS]).all()


def test_rejection_rule():
    threshold = small_config().min_series_last_index
    assert threshold == MC + H + 2
    assert P.keep_series(np.ones(threshold + 1, np.float32), threshold, 0.5)
    assert not P.keep_series(np.ones(threshold, np.float32), threshold, 0.5)
    gappy = np.ones(threshold * 3, np.float32)
    gappy[::3] = np.nan
    gappy[1::3] = np.nan
    assert not P.keep_series(gappy, threshold, 0.5)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides, message", [
    (dict(context_length=130), "multiple of patch_size"),
    (dict(output_patch_buckets=(1, 8)), "output_patch_buckets"),
    (dict(output_patch_buckets=()), "output_patch_buckets"),
    (dict(min_context=L), "min_context"),
    (dict(kernelsynth_length=100), "kernelsynth_length"),
    (dict(corpora=(("kernelsynth", 0.0),)), "weight"),
    (dict(corpora=(("kernelsynth", 1.0), ("KernelSynth", 1.0))), "more than once"),
    (dict(outlier_z=-1.0), "outlier_z"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_config(**overrides)


def test_batch_must_divide_over_processes():
    with pytest.raises(ValueError, match="divisible"):
        small_config(batch_size=6).validate(process_count=4)
    with pytest.raises(ValueError, match="divisible"):
        P.make_pretrain_dataset(small_config(batch_size=6), 0, 4)
    with pytest.raises(ValueError, match="process_index"):
        P.make_pretrain_dataset(small_config(), 2, 2)


def test_config_accepts_lists_from_ml_collections():
    config = small_config(corpora=[["kernelsynth", 1]], output_patch_buckets=[1, 2])
    assert config.corpora == (("kernelsynth", 1.0),) and config.output_patch_buckets == (1, 2)
    hash(config)  # frozen and hashable: it keys caches


# --------------------------------------------------------------------------- batches
def test_batch_shapes_dtypes_and_masks():
    config = small_config()
    widths = set()
    for batch in take(config, 6):
        width = batch["target"].shape[1]
        widths.add(width)
        assert width // PS in BUCKETS and width % PS == 0
        assert batch["context"].shape == (8, L) and batch["context"].dtype == np.float32
        assert batch["context_mask"].dtype == bool and batch["target_mask"].dtype == bool
        assert batch["target"].dtype == np.float32 and batch["target_mask"].shape == (8, width)
        np.testing.assert_array_equal(batch["context_mask"], ~np.isnan(batch["context"]))
        assert np.isfinite(batch["target"]).all()
        assert (batch["target"][~batch["target_mask"]] == 0).all()
        assert batch["context_mask"][:, -MC:].all()  # KernelSynth is fully observed: only outliers vanish
        assert batch["target_mask"][:, :PS].any(axis=1).all()
    assert len(widths) > 1  # F varies between batches


def test_output_patches_are_drawn_from_buckets_per_batch_index():
    drawn = [P.output_patches_for_batch(11, k, BUCKETS) for k in range(200)]
    assert set(drawn) == set(BUCKETS)
    assert drawn == [P.output_patches_for_batch(11, k, BUCKETS) for k in range(200)]


def test_processes_agree_on_F_and_hold_disjoint_shards_of_the_global_batch():
    config = small_config()
    single = take(config, 4, provenance=True)
    shards = [take(config, 4, p, 2, provenance=True) for p in range(2)]
    for k in range(4):
        parts = [shards[p][k] for p in range(2)]
        assert parts[0]["context"].shape == (4, L)
        assert parts[0]["target"].shape[1] == parts[1]["target"].shape[1] == single[k]["target"].shape[1]
        ids = [set(part["series_id"].tolist()) for part in parts]
        assert not ids[0] & ids[1]
        # Together the two processes hold exactly the single-process global batch.
        merged = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        order_merged = np.lexsort((merged["target_start"], merged["series_id"]))
        order_single = np.lexsort((single[k]["target_start"], single[k]["series_id"]))
        for key in merged:
            np.testing.assert_array_equal(merged[key][order_merged], single[k][key][order_single], err_msg=key)


def test_determinism_and_seed_sensitivity():
    first, again = take(small_config(), 3), take(small_config(), 3)
    for a, b in zip(first, again):
        assert_batches_equal(a, b)
    other = take(small_config(seed=8), 3)
    assert not all(a["context"].shape == b["context"].shape and np.array_equal(a["context"], b["context"], equal_nan=True)
                   for a, b in zip(first, other))


def test_iterator_state_round_trip_with_prefetch():
    config = small_config(read_threads=2, prefetch_batches=4)
    dataset = P.make_pretrain_dataset(config)
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()
    json.dumps(state)  # Orbax stores it as JSON
    expected = [next(iterator) for _ in range(3)]
    resumed = iter(P.make_pretrain_dataset(config))
    resumed.set_state(state)
    for want in expected:
        assert_batches_equal(next(resumed), want)


def test_validation_batches_are_fixed_and_full_horizon():
    config = small_config()
    batches = P.make_validation_batches(config, num_windows=16, batch_size=8)
    again = P.make_validation_batches(config, num_windows=16, batch_size=8)
    assert len(batches) == 2
    for a, b in zip(batches, again):
        assert_batches_equal(a, b)
        assert a["target"].shape == (8, H) and a["context"].shape == (8, L)
    halves = [P.make_validation_batches(config, 16, 8, process_index=p, process_count=2) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([halves[0][1]["context"], halves[1][1]["context"]]),
                                  batches[1]["context"])
    with pytest.raises(ValueError, match="multiple of batch_size"):
        P.make_validation_batches(config, num_windows=10, batch_size=8)


# --------------------------------------------------------------------------- real data
def real_config(data_dir, **overrides):
    fields = dict(corpora=(("kernelsynth", 0.5), ("real", 0.5)), data_dir=str(data_dir), kernelsynth_series=1000)
    fields.update(overrides)
    return small_config(**fields)


def test_real_corpus_honours_the_exclusion_list(data_dir):
    from factost_jax.data import formats

    config = real_config(data_dir)
    excluded = {formats.canonical_name(n) for n in formats.EVALUATION_DATASETS}
    rows = P.corpus_summary(config)
    real_rows = [row for row in rows if row["component"] == "real"]
    assert real_rows and sum(row["num_series"] for row in real_rows) > 0
    for row in real_rows:
        assert row["name"] not in excluded and row["name"].split(":")[0] not in excluded, row
    assert abs(sum(row["weight"] for row in rows) - 1.0) < 1e-9
    pool = next(c.pool for c in P.build_corpus(config) if c.name == "real")
    source = pool.training_source()
    for i in range(0, pool.num_series, max(1, pool.num_series // 50)):
        assert P.keep_series(source[i], config.min_series_last_index, config.min_observed_frac)
        # The last predict_length points of each series never reach training.
        assert source[i].size <= pool.full_series(i).size - H


def test_naming_an_evaluation_dataset_raises_unless_allowed(data_dir):
    with pytest.raises(ValueError, match="evaluation"):
        real_config(data_dir, corpora=(("ETTh2", 1.0),))
    with pytest.raises(ValueError, match="evaluation"):
        real_config(data_dir, corpora=(("kernelsynth", 1.0), ("hzmetro:out", 1.0)))
    config = real_config(data_dir, corpora=(("ETTh2", 1.0),), allow_overlap=True)
    from factost_jax.data import formats

    train_end = formats.load_dataset("ETTh2", data_dir).split_range("train")[1]
    (row,) = P.corpus_summary(config)
    assert row["num_series"] == 7 and row["num_points"] <= 7 * (train_end - H)


def test_mixed_real_and_kernelsynth_batches(data_dir):
    config = real_config(data_dir)
    components = [c.name for c in P.build_corpus(config)]
    batches = take(config, 3, provenance=True)
    drawn = np.concatenate([b["component"] for b in batches])
    assert set(drawn.tolist()) == set(range(len(components)))
    assert np.mean(drawn == components.index("real")) == pytest.approx(0.5, abs=0.1)
    for batch in batches:
        assert batch["target_mask"][:, :PS].any(axis=1).all()
    validation = P.make_validation_batches(config, num_windows=16, batch_size=8)
    assert all(np.isfinite(b["target"]).all() and b["target_mask"].any() for b in validation)


def test_empty_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        P.corpus_summary(small_config(corpora=(("real", 1.0),), data_dir=str(tmp_path)))


def test_worker_processes_yield_the_in_process_batches():
    config = small_config(kernelsynth_length=128 + 64)
    expected = take(config, 3)
    iterator = iter(P.make_pretrain_dataset(small_config(kernelsynth_length=128 + 64, worker_count=1)))
    try:
        for want in expected:
            assert_batches_equal(next(iterator), want)
    finally:
        iterator.close()
