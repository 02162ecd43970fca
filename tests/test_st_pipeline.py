"""Stage-2 data: few-shot subsets, memory replay mixing, no leakage, iterator state, process shards."""

import numpy as np
import pytest

from factost_jax import metrics
from factost_jax.data import st_pipeline as stp
from factost_jax.data.windows import split_target_starts


@pytest.fixture(scope="module")
def network():
    return stp.load_st_dataset(stp.STDataConfig(dataset="synthetic", synthetic_nodes=5, synthetic_days=14))


def _config(**overrides):
    values = dict(dataset="synthetic", synthetic_nodes=5, synthetic_days=14, batch_size=10, read_threads=0,
                  prefetch_batches=0)
    values.update(overrides)
    return stp.STDataConfig(**values)


def _batches(config, dataset, count, process_index=0, process_count=1):
    iterator = iter(stp.make_st_train_dataset(config, dataset, process_index, process_count,
                                              include_provenance=True))
    return [next(iterator) for _ in range(count)]


# ----------------------------------------------------------------------------- subset rules
@pytest.mark.parametrize("num_windows, ratio, expected", [(100, 0.1, 10), (50, 0.1, 5), (99, 0.1, 9), (7, 0.1, 1),
                                                         (40, 1.0, 40), (3, 0.5, 1)])
def test_few_shot_count(num_windows, ratio, expected):
    assert stp.few_shot_count(num_windows, ratio) == expected


def test_selection_modes():
    first = stp.few_shot_indices(100, 0.1, "first", seed=0)
    uniform = stp.few_shot_indices(100, 0.1, "uniform", seed=0)
    random_a = stp.few_shot_indices(100, 0.1, "random", seed=0)
    random_b = stp.few_shot_indices(100, 0.1, "random", seed=1)
    np.testing.assert_array_equal(first, np.arange(10))
    np.testing.assert_array_equal(uniform, np.arange(0, 100, 10))
    assert random_a.size == 10 and np.unique(random_a).size == 10 and np.all(np.diff(random_a) > 0)
    assert random_a.min() >= 0 and random_a.max() < 100
    np.testing.assert_array_equal(random_a, stp.few_shot_indices(100, 0.1, "random", seed=0))
    assert not np.array_equal(random_a, random_b)
    # uneven counts still spread over the whole range
    spread = stp.few_shot_indices(1000, 0.03, "uniform", seed=0)
    assert spread.size == 30 and spread[0] == 0 and spread[-1] > 950
    np.testing.assert_array_equal(stp.few_shot_indices(20, 1.0, "random", seed=3), np.arange(20))


def test_split_memory_and_replay_split():
    memory, current = stp.split_memory(np.array([50, 10, 40, 20, 30, 60, 70, 80, 90, 100]), 0.2)
    np.testing.assert_array_equal(memory, [10, 20])
    np.testing.assert_array_equal(current, [30, 40, 50, 60, 70, 80, 90, 100])
    assert stp.replay_split(32, 0.3) == (10, 22)
    assert stp.replay_split(10, 0.0) == (0, 10)
    with pytest.raises(ValueError, match="too few to split"):
        stp.split_memory(np.array([5]), 0.2)


def test_train_subset_on_network(network):
    config = _config()
    subset = stp.select_train_windows(network, config)
    all_starts = split_target_starts(network, "train", 12, 12)
    np.testing.assert_array_equal(subset.all_starts, all_starts)
    assert subset.selected.size == int(0.1 * all_starts.size)
    assert np.isin(subset.selected, all_starts).all()
    np.testing.assert_array_equal(np.sort(np.concatenate([subset.memory, subset.current])), subset.selected)
    assert subset.memory.size == round(0.2 * subset.selected.size)
    assert subset.memory.max() < subset.current.min()  # memory = the chronologically first windows
    no_replay = stp.select_train_windows(network, _config(replay_ratio=0.0))
    assert no_replay.memory.size == 0
    np.testing.assert_array_equal(no_replay.current, subset.selected)
    full = stp.select_train_windows(network, _config(few_shot_ratio=1.0, replay_ratio=0.0))
    np.testing.assert_array_equal(full.selected, all_starts)


# ----------------------------------------------------------------------------- batches
def test_replay_mixing_ratio(network):
    config = _config(batch_size=10, replay_ratio=0.3)
    subset = stp.select_train_windows(network, config)
    memory, current = set(subset.memory.tolist()), set(subset.current.tolist())
    batches = _batches(config, network, 20)
    for batch in batches:
        starts = batch["target_start"].tolist()
        assert sum(s in memory for s in starts) == 3 and sum(s in current for s in starts) == 7
    seen_memory = {s for b in batches for s in b["target_start"].tolist() if s in memory}
    # 60 memory draws cover the whole buffer (48 windows; one shuffled pass is 16 batches)
    assert len(memory) <= 48 and seen_memory == memory
    # without replay every row comes from the whole selection, and memory windows are no longer favoured
    plain = _batches(_config(batch_size=10, replay_ratio=0.0), network, 12)
    plain_starts = np.concatenate([b["target_start"] for b in plain])
    assert np.isin(plain_starts, subset.selected).all()
    assert np.isin(plain_starts, subset.memory).mean() < 0.3


def test_batch_contents_and_no_leakage(network):
    config = _config(few_shot_ratio=1.0, replay_ratio=0.0, batch_size=16)
    train_end, _ = network.split_bounds()
    normalizer = network.normalizer()
    original = network.values[:, :, 0]
    for batch in _batches(config, network, 6):
        assert batch["values"].shape == (16, 12, 5) and batch["values"].dtype == np.float32
        assert batch["target"].shape == (16, 12, 5) and batch["target_mask"].dtype == bool
        for key in ("context_time_of_day", "context_day_of_week"):
            assert batch[key].shape == (16, 12) and batch[key].dtype == np.int32
        for key in ("future_time_of_day", "future_day_of_week"):
            assert batch[key].shape == (16, 12) and batch[key].dtype == np.int32
        starts = batch["target_start"]
        assert starts.min() >= 12 and (starts + 12).max() <= train_end  # inputs and targets inside train
        for row, start in enumerate(starts):
            context = (original[start - 12:start] - normalizer.mean[0, 0]) / normalizer.std[0, 0]
            np.testing.assert_allclose(batch["values"][row], context, rtol=1e-6, atol=1e-6)
            future = original[start:start + 12]
            counts = metrics.observed_mask_np(future, 0.0)
            np.testing.assert_array_equal(batch["target_mask"][row], counts)
            expected = np.where(counts, (future - normalizer.mean[0, 0]) / normalizer.std[0, 0], 0.0)
            np.testing.assert_allclose(batch["target"][row], expected, rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(batch["future_time_of_day"][row], network.time_of_day[start:start + 12])
        assert not np.isnan(batch["target"]).any()


def test_iterator_state_round_trip(network):
    config = _config()
    dataset = stp.make_st_train_dataset(config, network, include_provenance=True)
    iterator = iter(dataset)
    for _ in range(5):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator)["target_start"] for _ in range(3)]
    resumed = iter(stp.make_st_train_dataset(config, network, include_provenance=True))
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["target_start"], want)


def test_process_shards_form_the_global_batch(network):
    config = _config(batch_size=10)
    whole = _batches(config, network, 4)
    shards = [_batches(config, network, 4, process_index=p, process_count=2) for p in range(2)]
    for step in range(4):
        assert shards[0][step]["values"].shape[0] == 5
        joined = np.concatenate([shards[0][step]["target_start"], shards[1][step]["target_start"]])
        np.testing.assert_array_equal(joined, whole[step]["target_start"])


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("overrides, message", [
    (dict(few_shot_selection="last"), "few_shot_selection"),
    (dict(few_shot_ratio=0.0), "few_shot_ratio"),
    (dict(few_shot_ratio=1.5), "few_shot_ratio"),
    (dict(replay_ratio=1.0), "replay_ratio"),
    (dict(replay_ratio=0.3, batch_size=1), "memory rows"),
    (dict(memory_fraction=0.0), "memory_fraction"),
    (dict(input_len=0), "input_len"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(dataset=""), "dataset"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


def test_process_count_must_divide_batch(network):
    with pytest.raises(ValueError, match="divisible by the process count"):
        stp.make_st_train_dataset(_config(batch_size=10), network, 0, 3)


def test_observed_mask_matches_metrics():
    values = np.array([0.0, 3e-5, 1e-4, np.nan, 7.0, -2e-5], np.float32)
    for null_val in (0.0, float("nan")):
        np.testing.assert_array_equal(stp.observed_mask(values, null_val), metrics.observed_mask_np(values, null_val))


def test_channel_out_of_range():
    with pytest.raises(ValueError, match="channel=1 is out of range"):
        stp.load_st_dataset(_config(channel=1))


def test_hzmetro_few_shot_sizes(data_dir):
    config = stp.STDataConfig(dataset="hzmetro", data_dir=str(data_dir), batch_size=8, read_threads=0)
    dataset = stp.load_st_dataset(config)
    assert dataset.num_nodes == 80 and dataset.num_channels == 1
    train_end, _ = dataset.split_bounds()
    subset = stp.select_train_windows(dataset, config)
    assert subset.all_starts.size == train_end - 24 + 1
    assert subset.selected.size == int(0.1 * subset.all_starts.size)
    batch = next(iter(stp.make_st_train_dataset(config, dataset)))
    # night-time zeros are the null value: they never count as targets
    assert batch["values"].shape == (8, 12, 80)
    original = dataset.values[:, :, 0]
    assert (original[:train_end] == 0).any()
