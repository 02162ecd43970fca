"""The shipped `factost_jax/pretrained/factost-tiny` loads by name and forecasts exactly as recorded.

`tests/data/factost_tiny_expected.json` holds the median and 0.1/0.9 quantiles the checkpoint gave on
fixed held-out windows when it was exported (written by `benchmarks/shipped_expected.py`). A change to
the model code, the checkpoint format or the inference path that alters a forecast fails here.
"""

import json

import numpy as np
import pytest

from factost_jax import Forecaster
from factost_jax.data.formats import load_dataset

EXPECTED = "tests/data/factost_tiny_expected.json"


@pytest.fixture(scope="module")
def expected(repo_root):
    return json.loads((repo_root / EXPECTED).read_text())


@pytest.fixture(scope="module")
def forecaster(repo_root):
    assert (repo_root / "factost_jax" / "pretrained" / "factost-tiny").is_dir(), "the shipped checkpoint is missing"
    return Forecaster.load("factost-tiny")


def test_shipped_checkpoint_metadata(forecaster):
    assert forecaster.config.d_model == 256 and forecaster.config.num_layers == 3
    corpus = set(forecaster.metadata["corpus"])
    assert not corpus & {"ETTh2", "ETTm2", "WEATHER", "HZMETRO", "LOS-LOOP", "AQI36"}


def test_shipped_checkpoint_reproduces_recorded_forecasts(forecaster, expected, data_dir):
    for case in expected["cases"]:
        dataset = load_dataset(case["dataset"], data_dir)
        series = dataset.values[:, case["node"], 0]
        start = case["target_start"]
        context = series[start - case["input_len"]:start]
        result = forecaster.forecast(context[None, :], horizon=case["horizon"], quantiles=(0.1, 0.5, 0.9))
        np.testing.assert_allclose(result.median[0], case["median"], rtol=2e-3, atol=2e-3 * case["scale"])
        np.testing.assert_allclose(result.quantiles[0], case["quantiles"], rtol=2e-3, atol=2e-3 * case["scale"])
        assert np.all(np.diff(result.quantiles[0], axis=-1) >= 0)
