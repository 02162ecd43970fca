"""Your own network end to end, on a debug-size random stage-1 checkpoint and a 4-sensor CSV:
`Forecaster.fit` -> `forecast_df` -> `save` -> `Forecaster.load` / `launch/evaluate.py --checkpoint`, and
`launch/adapt.py --config configs/adapt.py:custom --config.dataset=my.csv`."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from factost_jax import Forecaster
from factost_jax import checkpoint as ckpt_io
from factost_jax.data.synthetic import synthetic_network
from factost_jax.model.config import model_config
from factost_jax.model.encoder import abstract_params, host_random_params, unbox
from factost_jax.network_frames import network_order

FIT_TRAINING = dict(steps=2, eval_every=2, batch_size=8, progress=False,
                    overrides={"train.val_windows": 8, "data.read_threads": 0, "train.eval_batch_size": 64})


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("stage1") / "debug"
    config = model_config("debug")
    params = host_random_params(unbox(abstract_params(config)), 7, std=0.1)
    ckpt_io.save_inference_checkpoint(path, config, params, {"stage": "pretrain", "run_config": {"data": {
        "context_length": 128, "output_patch_buckets": [1, 2, 4]}}})
    return path


@pytest.fixture(scope="module")
def network_csv(tmp_path_factory):
    """A 4-sensor, 5-day, 15-minute network as a long CSV (missing values are absent rows)."""
    ds = synthetic_network(num_nodes=4, num_days=5, freq="15min")
    steps, nodes, _ = ds.values.shape
    frame = pd.DataFrame({"unique_id": np.repeat([f"S{i}" for i in range(nodes)], steps),
                          "ds": np.tile(ds.timestamps, nodes), "y": ds.values[:, :, 0].T.reshape(-1)})
    path = tmp_path_factory.mktemp("net") / "my.csv"
    frame.dropna().to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_fit_forecast_save_load_and_evaluate(stage1_ckpt, network_csv, tmp_path, repo_root):
    df = pd.read_csv(network_csv)
    adapted = Forecaster.load(stage1_ckpt).fit(df, horizon=4, input_len=8, null_val=0.0,
                                               split_ratios=(0.5, 0.2, 0.3), workdir=str(tmp_path / "fit"),
                                               **FIT_TRAINING)
    assert adapted.stage == 2 and adapted.adapter_config.num_nodes == 4
    assert adapted.metadata["node_ids"] == ["S0", "S1", "S2", "S3"] and adapted.metadata["freq"] == "15min"
    test = adapted.metadata["test_metrics"]
    assert test["split"] == "test" and np.isfinite(test["metrics"]["avg"]["MAE"])
    assert adapted.metadata["run_config"]["data"]["input_len"] == 8
    rows = [json.loads(line) for line in (tmp_path / "fit" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_MAE" in r] == [0, 2]

    # sensors in another row order still map to the adapted order; future steps follow the grid
    shuffled = df.sample(frac=1.0, random_state=1)
    out = adapted.forecast_df(shuffled, horizon=4, quantiles=(0.1, 0.5, 0.9))
    assert list(out.columns) == ["unique_id", "ds", "median", "0.1", "0.5", "0.9"] and len(out) == 16
    assert list(out["unique_id"].unique()) == ["S0", "S1", "S2", "S3"]
    last = pd.Timestamp(pd.to_datetime(df["ds"]).max())
    assert list(pd.to_datetime(out["ds"][:4])) == [last + pd.Timedelta(minutes=15 * k) for k in range(1, 5)]
    assert (out["0.1"] <= out["0.5"] + 1e-6).all() and (out["0.5"] <= out["0.9"] + 1e-6).all()
    in_order = adapted.forecast_df(df, horizon=4, quantiles=(0.1, 0.5, 0.9))
    np.testing.assert_allclose(out["median"], in_order["median"], rtol=1e-6)
    with pytest.raises(ValueError, match=r"sensors the model was adapted to but the frame lacks \['S3'\]"):
        adapted.forecast_df(df[df["unique_id"] != "S3"], horizon=4)

    saved = adapted.save(tmp_path / "saved")
    again = Forecaster.load(saved)
    assert again.stage == 2 and again.metadata["node_ids"] == adapted.metadata["node_ids"]
    assert again.metadata["pretrain_context_length"] == adapted.metadata["pretrain_context_length"] == 128
    np.testing.assert_allclose(again.forecast_df(df, horizon=4, quantiles=(0.1, 0.5, 0.9))["median"],
                               in_order["median"], rtol=1e-6)

    result = subprocess.run([sys.executable, str(repo_root / "launch" / "evaluate.py"), "--checkpoint", str(saved),
                             "--dataset", str(network_csv), "--input_len", "8", "--horizon", "4",
                             "--output", str(tmp_path / "eval.json")],  # the fit's split_ratios and null_val apply
                            cwd=repo_root, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["dataset"] == "my.csv" and evaluated["num_windows"] == test["num_windows"]
    assert np.isfinite(evaluated["metrics"]["avg"]["MAE"]) and evaluated["model"] == f"factost:{saved}"
    # the fit report and launch/evaluate.py score the saved model alike: the fit's file options (its
    # 5:2:3 split, not the default 6:2:2) and one input scale (data/input_scale.py)
    for name in ("MAE", "RMSE", "MAPE", "QL", "coverage_80"):
        np.testing.assert_allclose(evaluated["metrics"]["avg"][name], test["metrics"]["avg"][name], rtol=1e-5,
                                   err_msg=name)
    # the fit's workdir loads its best validation step, the parameters the fit returned
    best = Forecaster.load(tmp_path / "fit")
    assert best.path == tmp_path / "fit" / "best" / str(adapted.metadata["step"])


@pytest.mark.slow
def test_custom_variant_launcher_on_a_csv(stage1_ckpt, network_csv, tmp_path, repo_root):
    workdir = tmp_path / "run"
    args = ["--config", "configs/adapt.py:custom", f"--config.dataset={network_csv}", "--config.input_len=8",
            "--config.horizon=4", f"--config.init_from={stage1_ckpt}", "--config.data.null_val=0.0",
            "--config.data.split_ratios=(0.7, 0.1, 0.2)", "--config.train.steps=2", "--config.train.eval_every=2",
            "--config.train.val_windows=8", "--config.data.read_threads=0", "--config.train.progress=False",
            "--workdir", str(workdir)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, str(repo_root / "launch" / "adapt.py"), *args], cwd=repo_root, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dataset my.csv: N=4, 8->4" in result.stdout
    written = json.loads((workdir / "metrics.json").read_text())
    assert written["dataset"] == "my.csv" and np.isfinite(written["metrics"]["avg"]["MAE"])
    recorded = json.loads((workdir / "config.json").read_text())
    data = recorded.get("data", recorded.get("run_config", {}).get("data"))
    assert data["split_ratios"] == [0.7, 0.1, 0.2] and data["null_val"] == 0.0 and data["id_column"] == "unique_id"

    # a missing file or a missing dataset is one line, exit 2
    base = [a for a in args if not a.startswith("--config.dataset=")]
    for extra, expected in ((["--config.dataset=/nonexistent/x.csv"], "error: dataset file /nonexistent/x.csv not found"),
                            ([], "error: config.dataset is missing")):
        out = subprocess.run([sys.executable, str(repo_root / "launch" / "adapt.py"), *base, *extra],
                             cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == expected, out.stderr[-2000:]


def test_network_order():
    np.testing.assert_array_equal(network_order(("b", "a"), ["a", "b"], 2), [1, 0])
    np.testing.assert_array_equal(network_order(("x", "y"), None, 2), [0, 1])
    with pytest.raises(ValueError, match="the frame has 3 sensors but the model was adapted to 2"):
        network_order(("x", "y", "z"), None, 2)
    with pytest.raises(ValueError, match=r"sensors the model does not know \['z'\]"):
        network_order(("a", "b", "z"), ["a", "b"], 2)


def test_fit_builds_the_launchers_custom_config():
    """Forecaster.fit and `launch/adapt.py --config configs/adapt.py:custom` start from one config: fit's
    differs only in what it sets (the frame as dataset, no file options, its training knobs)."""
    from factost_jax.configs.adapt import get_config
    from factost_jax.data.user_files import OPTION_FIELDS
    from factost_jax.fit import DATAFRAME_NAME, build_fit_config

    knobs, overrides = {"train.steps": 3, "data.batch_size": None}, {"adapter.dropout": 0.1}
    fit = build_fit_config(4, 8, "/ckpt", knobs, overrides)
    launcher = get_config("custom")
    launcher.dataset, launcher.input_len, launcher.horizon, launcher.init_from = DATAFRAME_NAME, 8, 4, "/ckpt"
    for name in OPTION_FIELDS:
        launcher.data[name] = None
    launcher.train.steps, launcher.adapter.dropout = 3, 0.1
    assert fit.to_dict() == launcher.to_dict()
    assert fit.data.batch_size == launcher.data.batch_size == 8  # a None knob keeps the custom default
