"""What a checkpoint was trained on bounds what is asked of it (issue 13, items 3-5): the trained
context and output lengths travel with every derived checkpoint; the Forecaster feeds at most the
trained context (more on request, with a warning) and asks for trained output lengths; stage 2
refuses longer contexts and targets of the pretraining corpus unless told otherwise."""

import functools
import types
import warnings

import numpy as np
import pytest

from factost_jax import Forecaster
from factost_jax import checkpoint as ckpt_io
from factost_jax.configs import adapt as adapt_configs
from factost_jax.data.leakage import pretraining_corpus
from factost_jax.eval.evaluate import checkpoint_predictor
from factost_jax.model import rollout
from factost_jax.model.config import model_config
from factost_jax.model.encoder import abstract_params, host_random_params, unbox
from factost_jax.train.stage2 import validate_adapt_config

CONFIG = model_config("debug")  # architecture: 128-step contexts, 4 output patches of 16 steps
# Forecasts here use 64-step contexts and F 4 (or 3): two compiled programs for the whole file.
# A stage-1 run that trained on half the architecture's context and F in {1, 2, 4}, on METR-LA.
TRAINED = {"stage": "pretrain", "step": 3,
           "run_config": {"data": {"context_length": 64, "output_patch_buckets": [4, 1, 2],
                                   "corpora": [["kernelsynth", 0.5], ["METR-LA", 0.5]], "exclude": []}}}
PROVENANCE = {"pretrain_context_length": 64, "pretrain_output_patch_buckets": [4, 1, 2],
              "pretrain_corpora": [["kernelsynth", 0.5], ["METR-LA", 0.5]], "pretrain_exclude": []}


@functools.lru_cache(maxsize=None)
def params():
    return host_random_params(unbox(abstract_params(CONFIG)), 5, std=0.2)


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("trained") / "stage1"
    ckpt_io.save_inference_checkpoint(path, CONFIG, params(), TRAINED)
    return path


def seasonal(length, period=24, seed=0):
    t = np.arange(length)
    return 5 + np.sin(2 * np.pi * t / period) + 0.1 * np.random.default_rng(seed).standard_normal(length)


# ----------------------------------------------------------------------------- provenance
def test_inherited_metadata_survives_a_chain_of_derived_checkpoints():
    assert ckpt_io.inherited_metadata(TRAINED) == PROVENANCE
    adapted = {"stage": "adapt", "run_config": {"data": {"input_len": 12, "context_length": 9}}, **PROVENANCE}
    assert ckpt_io.inherited_metadata(adapted) == PROVENANCE  # a stage-2 run config is not read
    assert ckpt_io.trained_context_length(adapted) == 64 and ckpt_io.trained_output_patches(adapted) == (1, 2, 4)
    assert pretraining_corpus(adapted) == {"METR-LA"}  # the leakage guards still see the corpus
    assert ckpt_io.inherited_metadata({"stage": "adapt", "corpus": ["ETTh1"]}) == {"corpus": ["ETTh1"]}


def test_save_and_hub_keep_the_provenance(trained_ckpt, tmp_path):
    saved = Forecaster.load(trained_ckpt).save(tmp_path / "saved")
    assert {k: ckpt_io.read_step_metadata(saved)[k] for k in PROVENANCE} == PROVENANCE
    hub_dir = Forecaster.load(saved).save_pretrained(tmp_path / "hub")
    assert Forecaster.from_pretrained(hub_dir).max_context == 64


# ----------------------------------------------------------------------------- context length
def test_max_context_defaults_to_the_trained_length_and_cuts_longer_contexts():
    fc = Forecaster(params(), CONFIG, metadata=TRAINED)
    assert fc.trained_context == 64 and fc.max_context == 64
    assert Forecaster(params(), CONFIG).max_context == 128  # unrecorded: the architecture's maximum
    series = seasonal(200)
    np.testing.assert_array_equal(fc.forecast([series], 64).quantiles, fc.forecast([series[-64:]], 64).quantiles)
    # The rollout's extended contexts are cut too: no program sees more than 64 steps.
    assert max(bucket for _, bucket, _ in fc.program_shapes(64, 200, 8)) == 64
    assert checkpoint_predictor(fc, types.SimpleNamespace(steps_per_day=24)).max_context == 64


def test_a_longer_context_warns_once_and_past_the_architecture_raises(trained_ckpt):
    with pytest.warns(UserWarning, match="max_context=100 is longer than the 64-step contexts this checkpoint"):
        fc = Forecaster.load(trained_ckpt, max_context=100)
    assert fc.max_context == 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # forecasting with it does not warn again; within the trained length is silent
        fc.forecast([seasonal(64)], 64)
        fc.set_max_context(32)
    with pytest.raises(ValueError, match="max_context=256 exceeds the model's maximum context of 128 steps"):
        fc.set_max_context(256)
    with pytest.raises(ValueError, match="max_context must be a positive int"):
        fc.set_max_context(0)


# ----------------------------------------------------------------------------- output lengths
def test_output_patches_round_up_to_a_trained_count():
    tiny = model_config("tiny")
    assert rollout.output_patches(96, tiny) == 6 and rollout.output_patches(96, tiny, (1, 2, 4, 8, 16)) == 8
    assert rollout.output_patches(48, CONFIG, (1, 2, 4)) == 4 and rollout.output_patches(16, CONFIG, (1, 2, 4)) == 1
    assert rollout.output_patches(500, CONFIG, (1, 2, 4)) == 4  # capped at the one-pass maximum
    assert rollout.output_patches(40, CONFIG, (1, 2)) == 3  # nothing trained covers it: unchanged


def test_rounded_forecasts_are_the_truncated_longer_pass():
    rounded = Forecaster(params(), CONFIG, metadata=TRAINED)
    exact = Forecaster(params(), CONFIG, metadata=TRAINED, round_output_patches=False)
    context = [seasonal(64)]
    # 48 steps = F 3, rounded to the trained 4: the first 48 steps of the 64-step (F 4) forecast.
    np.testing.assert_array_equal(rounded.forecast(context, 48).quantiles, rounded.forecast(context, 64).quantiles[:, :48])
    assert not np.allclose(exact.forecast(context, 48).quantiles, rounded.forecast(context, 48).quantiles)
    assert {patches for _, _, patches in rounded.program_shapes(64, 48, 8)} == {1, 2, 4}
    assert {patches for _, _, patches in exact.program_shapes(64, 48, 8)} == {1, 2, 3}


# ----------------------------------------------------------------------------- stage 2
def _adapt_config(init_from, dataset="synthetic", input_len=12, horizon=12, **top):
    config = adapt_configs.get_config("synthetic")
    config.init_from, config.dataset, config.input_len, config.horizon = str(init_from), dataset, input_len, horizon
    config.data.update(dict(synthetic_nodes=4, synthetic_days=7, read_threads=0))
    config.update(top)
    return config


def test_stage2_refuses_a_context_longer_than_pretraining(trained_ckpt):
    with pytest.raises(ValueError, match=r"--config.input_len=96 is longer than the 64-step contexts init_from .* was "
                                         r"pretrained on; use --config.input_len<=64 or pass "
                                         r"--config.allow_longer_context=True"):
        validate_adapt_config(_adapt_config(trained_ckpt, input_len=96, horizon=48))
    with pytest.warns(UserWarning, match=r"--config.allow_longer_context=True\): the encoder never saw"):
        run = validate_adapt_config(_adapt_config(trained_ckpt, input_len=96, horizon=48, allow_longer_context=True))
    assert run.allow_longer_context and run.to_dict()["allow_longer_context"] is True


def test_stage2_refuses_a_dataset_of_the_pretraining_corpus(trained_ckpt, data_dir):
    # Refused before the dataset is read: LOS-LOOP is METR-LA's sensors.
    with pytest.raises(ValueError, match=r"init_from .*stage1: its pretraining corpus contains METR-LA \(the same "
                                         r"sensors as LOS-LOOP\), so adapting to LOS-LOOP is not few-shot; .* pass "
                                         r"--config.allow_overlap=True"):
        validate_adapt_config(_adapt_config(trained_ckpt, "LOS-LOOP"))
    allowed = _adapt_config(trained_ckpt, "LOS-LOOP", allow_overlap=True)
    allowed.data.data_dir = str(data_dir)
    with pytest.warns(UserWarning, match=r"contains METR-LA .*\(--config.allow_overlap=True\)"):
        assert validate_adapt_config(allowed).allow_overlap
    # The shipped checkpoint pretrained on MONTEVIDEO_BUS: a corpus set, not a few-shot target.
    with pytest.raises(ValueError, match="factost-tiny: its pretraining corpus contains MONTEVIDEO_BUS"):
        validate_adapt_config(_adapt_config("factost-tiny", "MONTEVIDEO_BUS"))
    assert "montevideo_bus" not in adapt_configs.VARIANTS
