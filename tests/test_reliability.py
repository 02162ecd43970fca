"""Reliability (issue 7): exact resume after SIGKILL, SIGTERM/SIGINT preemption, atomic and corrupt
checkpoints, incompatible configs, non-finite batches, finite forecasts on hostile inputs, and
one-line errors for bad files and flags.

Subprocess runs share one persistent XLA compilation cache, so only the first run compiles.
"""

import json
import os
import pathlib
import shutil
import signal
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factost_jax.checkpoint import list_steps
from launcher_runs import launcher_env, run, start_and_signal, train_steps
from factost_jax.train.loop import SHA_FILE, RunConfigError, TaskHooks, TrainConfig, train_and_evaluate

# ------------------------------------------------------------------------------------ subprocess runs
STEPS = 40
CHECKPOINT_EVERY = 5
# The debug model on a KernelSynth-only corpus: no real data needed, one train program.
PRETRAIN_ARGS = [
    "--config", "configs/pretrain.py:debug", f"--config.train.steps={STEPS}", "--config.train.log_every=1",
    "--config.train.eval_every=1000", f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
    "--config.train.max_to_keep=3", "--config.train.progress=False", "--config.train.eval_windows=8",
    "--config.data.batch_size=8", "--config.data.output_patch_buckets=(2,)", "--config.data.kernelsynth_series=40",
    "--config.data.corpora=(('kernelsynth',1.0),)",
]


@pytest.fixture(scope="module")
def cli_env():
    return launcher_env()


def _pretrain_cmd(repo_root, workdir, *extra):
    return [sys.executable, str(repo_root / "launch" / "pretrain.py"), *PRETRAIN_ARGS, "--workdir", str(workdir), *extra]


def _run(cmd, repo_root, env, timeout=240):
    return run(cmd, repo_root, env, timeout)


@pytest.fixture(scope="module")
def reference_run(repo_root, cli_env, tmp_path_factory):
    """(workdir, final_params.sha256) of an uninterrupted run (it also fills the compilation cache)."""
    workdir = tmp_path_factory.mktemp("reference")
    result = _run(_pretrain_cmd(repo_root, workdir), repo_root, cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert train_steps(workdir) == list(range(1, STEPS + 1))
    return workdir, (workdir / SHA_FILE).read_text().strip()


@pytest.fixture(scope="module")
def reference_sha(reference_run):
    return reference_run[1]


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_matches_uninterrupted_run(repo_root, cli_env, reference_sha, tmp_path):
    workdir = tmp_path / "killed"
    cmd = _pretrain_cmd(repo_root, workdir)
    def past_a_finished_checkpoint():
        # Saves are asynchronous: wait until one is complete on disk and training has moved on from it.
        steps, saved = train_steps(workdir), list_steps(workdir / "checkpoints")
        return bool(saved) and bool(steps) and steps[-1] > saved[-1]

    proc, _, _ = start_and_signal(cmd, repo_root, cli_env, signal.SIGKILL, past_a_finished_checkpoint, timeout=240)
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / SHA_FILE).exists(), "the run finished before it was killed"
    saved = list_steps(workdir / "checkpoints")
    assert saved and saved[-1] < STEPS

    rerun = _run(cmd, repo_root, cli_env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from step {saved[-1]} " in rerun.stdout
    assert (workdir / SHA_FILE).read_text().strip() == reference_sha
    # Rows the killed run logged past its last checkpoint were replaced, not duplicated.
    assert train_steps(workdir) == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_rerun_resumes_there(repo_root, cli_env, reference_sha, tmp_path):
    workdir = tmp_path / "preempted"
    cmd = _pretrain_cmd(repo_root, workdir)
    proc, out, err = start_and_signal(cmd, repo_root, cli_env, signal.SIGTERM,
                                       lambda: bool(train_steps(workdir)), timeout=240)  # after the first logged step
    assert proc.returncode == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("preempted at step ")]
    assert len(lines) == 1, out
    step = int(lines[0].split()[3].rstrip(";"))
    assert 1 <= step < STEPS
    assert lines[0] == f"preempted at step {step}; checkpoint saved to {workdir / 'checkpoints' / str(step)}"
    assert list_steps(workdir / "checkpoints")[-1] == step  # written (async save finished) before exiting
    assert not (workdir / SHA_FILE).exists() and "done:" not in out

    rerun = _run(cmd, repo_root, cli_env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from step {step} " in rerun.stdout
    assert (workdir / SHA_FILE).read_text().strip() == reference_sha


# ------------------------------------------------------------------------------- in-process toy runs
class _ToyTask(TaskHooks):
    """y = x @ w + b on deterministic rows; `poison_batches` get a NaN, `width` changes the model."""

    name = "toy"

    def __init__(self, width=2, poison_batches=(), signal_at_batch=None):
        self.width, self.poison_batches, self.signal_at_batch = width, set(poison_batches), signal_at_batch

    def model_config_dict(self):
        return {"kind": "toy", "width": self.width}

    def init_params(self, rng):
        init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed", "mlp"))
        return {"w": init(rng, (4, self.width)), "b": jnp.ones((self.width,))}

    def loss_fn(self, params, batch, rng, deterministic):
        pred = batch["x"] @ params["w"] + params["b"]
        return jnp.mean((pred - batch["y"]) ** 2), {}

    def train_dataset(self, process_index, process_count):
        import grain

        width, poison, signal_at = self.width, self.poison_batches, self.signal_at_batch

        def make(index):
            rng = np.random.default_rng(index)
            x = rng.normal(size=(8, 4)).astype(np.float32)
            y = np.repeat(x.sum(-1, keepdims=True), width, axis=-1)
            if index in poison:
                x[3, 1] = np.nan
            if index == signal_at:  # a preemption notice arriving while batch `index` is being made
                os.kill(os.getpid(), signal.SIGINT)
            return {"x": x, "y": y}

        return grain.MapDataset.range(1_000).map(make).to_iter_dataset()

    def eval_batches(self):
        return []

    def batch_shapes_key(self, batch):
        return batch["x"].shape

    def trainable_mask(self, params):
        return None

    def tokens_in_batch(self, batch):
        return batch["x"].size


class _ToyConfig:
    def __init__(self, **train):
        self.train = TrainConfig(**{"steps": 6, "log_every": 1, "eval_every": 1000, "eval_windows": 8,
                                    "checkpoint_every": 2, "max_to_keep": 10, "progress": False, "lr": 0.05,
                                    "async_checkpointing": False, **train})
        self.mesh = type("Mesh", (), {"shape": "-1,1,1"})()

    def to_dict(self):
        return {"train": {"steps": self.train.steps}, "mesh": {"shape": self.mesh.shape}}


@pytest.fixture(scope="module")
def toy_reference(tmp_path_factory):
    """(workdir, sha) of an uninterrupted 6-step toy run with checkpoints at 2, 4, 6."""
    workdir = tmp_path_factory.mktemp("toy_reference")
    summary = train_and_evaluate(_ToyTask(), _ToyConfig(), workdir)
    assert list_steps(workdir / "checkpoints") == [2, 4, 6]
    return workdir, summary["params_sha256"]


def _copy_run_until(reference_dir, target, last_step):
    """A copy of the reference workdir as a run that crashed right after checkpoint `last_step`."""
    shutil.copytree(reference_dir / "checkpoints", target / "checkpoints",
                    ignore=lambda d, names: [n for n in names if n.isdigit() and int(n) > last_step]
                    if pathlib.Path(d).name == "checkpoints" else [])
    return target


def test_sigint_in_process_finishes_step_saves_and_resumes(tmp_path, toy_reference):
    _, reference = toy_reference
    workdir = tmp_path / "sigint"
    previous = signal.getsignal(signal.SIGINT)
    summary = train_and_evaluate(_ToyTask(signal_at_batch=2), _ToyConfig(), workdir)
    assert signal.getsignal(signal.SIGINT) is previous  # handlers are put back
    # grain may read ahead, so the notice can arrive before any step has run (step 0 is then saved)
    assert summary["preempted"] and 0 <= summary["step"] < 6 and "params_sha256" not in summary
    assert list_steps(workdir / "checkpoints")[-1] == summary["step"]
    assert not (workdir / SHA_FILE).exists()
    resumed = train_and_evaluate(_ToyTask(), _ToyConfig(), workdir)
    assert resumed["start_step"] == summary["step"] and resumed["params_sha256"] == reference


def test_half_written_checkpoint_is_never_loaded(tmp_path, toy_reference, capsys):
    reference_dir, reference = toy_reference
    workdir = _copy_run_until(reference_dir, tmp_path / "cut", last_step=4)
    # Orbax writes `<step>.orbax-checkpoint-tmp-<time>` and renames it when complete; a crash
    # mid-save leaves the temporary directory behind.
    partial = workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1764000000"
    shutil.copytree(reference_dir / "checkpoints" / "6" / "params", partial / "params")
    summary = train_and_evaluate(_ToyTask(), _ToyConfig(), workdir)
    assert summary["start_step"] == 4 and summary["params_sha256"] == reference
    assert not partial.exists()  # leftovers of cut-off saves are cleaned up
    assert "unreadable" not in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate_params", "delete_metadata", "empty_metadata", "missing_items"])
def test_corrupt_latest_checkpoint_is_reported_and_previous_used(tmp_path, toy_reference, capsys, damage):
    reference_dir, reference = toy_reference
    workdir = _copy_run_until(reference_dir, tmp_path / damage, last_step=6)
    latest = workdir / "checkpoints" / "6"
    if damage == "truncate_params":
        data_files = [p for p in (latest / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
        assert data_files
        for path in data_files:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "delete_metadata":
        (latest / "metadata" / "metadata").unlink()
    elif damage == "empty_metadata":
        (latest / "metadata" / "metadata").write_text("")
    else:  # a step dir copied by hand, cut off before the optimizer state and data position
        shutil.rmtree(latest / "opt_state")
        shutil.rmtree(latest / "data_iter")
    summary = train_and_evaluate(_ToyTask(), _ToyConfig(), workdir)
    err = capsys.readouterr().err
    assert f"warning: checkpoint {latest} is unreadable" in err
    assert summary["start_step"] == 4 and summary["params_sha256"] == reference
    set_aside = [p.name for p in (workdir / "checkpoints").iterdir() if p.name.startswith("unreadable-6-")]
    assert len(set_aside) == 1 and list_steps(workdir / "checkpoints") == [2, 4, 6]


def test_no_readable_checkpoint_stops_without_renaming(tmp_path, toy_reference):
    reference_dir, _ = toy_reference
    workdir = _copy_run_until(reference_dir, tmp_path / "all_bad", last_step=6)
    for step in (2, 4, 6):
        (workdir / "checkpoints" / str(step) / "metadata" / "metadata").write_text("{not json")
    with pytest.raises(RunConfigError, match="no readable checkpoint in .*checkpoints/6: cannot read checkpoint"):
        train_and_evaluate(_ToyTask(), _ToyConfig(), workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4", "6"]


def test_incompatible_config_is_refused_naming_the_fields(tmp_path, toy_reference):
    reference_dir, _ = toy_reference
    workdir = _copy_run_until(reference_dir, tmp_path / "other_model", last_step=4)
    with pytest.raises(RunConfigError, match=r"different model than configured: width \(checkpoint 2, configured 3\)"):
        train_and_evaluate(_ToyTask(width=3), _ToyConfig(), workdir)
    assert list_steps(workdir / "checkpoints") == [2, 4]  # refused, not set aside as unreadable


@pytest.mark.slow
def test_pretrain_checkpoint_of_other_model_size_is_refused(repo_root, cli_env, reference_run, tmp_path):
    workdir = tmp_path / "sizes"
    shutil.copytree(reference_run[0] / "checkpoints", workdir / "checkpoints")
    result = _run(_pretrain_cmd(repo_root, workdir, "--config.model.size=minuscule", "--config.train.steps=4"),
                  repo_root, cli_env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds a different model than configured: d_model (checkpoint 32, configured 192)" in lines[0]
    assert "num_layers (checkpoint 2, configured 3)" in lines[0]


def test_poisoned_batch_never_reaches_params(tmp_path):
    from factost_jax.checkpoint import _restore_params_to_host

    workdir = tmp_path / "poison"
    summary = train_and_evaluate(_ToyTask(poison_batches={2}), _ToyConfig(checkpoint_every=1), workdir)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [0, 0, 1, 0, 0, 0] and summary["skipped_total"] == 1
    assert rows[2]["loss"] is None  # the NaN loss is logged as null, the step still counts
    before, after = (_restore_params_to_host(workdir / "checkpoints" / str(s) / "params") for s in (2, 3))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    final = _restore_params_to_host(workdir / "checkpoints" / "6" / "params")
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(final))


# --------------------------------------------------------------------------------- numerics: forecasts
@pytest.fixture(scope="module")
def debug_model():
    from factost_jax.model.config import model_config
    from factost_jax.model.encoder import Encoder

    config = model_config("debug", dropout=0.0)
    context = jnp.zeros((1, 2 * config.patch_size))
    init = jax.jit(lambda rng: Encoder(config).init(rng, context, jnp.ones_like(context, bool), 1, True)["params"])
    params = init(jax.random.key(0))
    return config, params


@pytest.mark.parametrize("case", ["all_nan", "constant", "huge", "tiny", "mixed_rows"])
def test_hostile_contexts_give_finite_sorted_forecasts(debug_model, case):
    from factost_jax.model.rollout import forecast_quantiles

    config, params = debug_model
    length, t = 96, np.arange(96, dtype=np.float32)
    wave = np.sin(2 * np.pi * t / 24).astype(np.float32)
    contexts = {
        "all_nan": np.full((2, length), np.nan, np.float32),
        "constant": np.stack([np.full(length, 7.5), np.zeros(length)]).astype(np.float32),
        "huge": np.stack([1e9 * (1 + 0.01 * wave), np.full(length, 1e9)]).astype(np.float32),
        "tiny": np.stack([1e-9 * (1 + wave), np.full(length, 1e-9)]).astype(np.float32),
        "mixed_rows": np.stack([np.where(t % 3 == 0, np.nan, wave), np.where(t < 90, np.nan, 1e9),
                                np.full(length, np.inf), np.full(length, -1e-9)]).astype(np.float32),
    }
    context = contexts[case]
    horizon = 3 * config.max_output_patches * config.patch_size + 5  # forces the rollout path
    forecast = forecast_quantiles(params, config, context, horizon)
    assert forecast.shape == (context.shape[0], horizon, len(config.quantile_levels))
    assert np.isfinite(forecast).all()
    assert (np.diff(forecast, axis=-1) >= 0).all()
    if case == "constant":
        # A flat history is forecast near its level (instance normalisation divides by a floored std).
        np.testing.assert_allclose(np.median(forecast[0]), 7.5, atol=1.0)
    if case == "huge":
        assert np.all(np.abs(forecast[1, :, len(config.quantile_levels) // 2] - 1e9) < 1e8)


@pytest.mark.parametrize("case", ["constant", "huge", "tiny", "ragged_nan"])
def test_hostile_series_through_forecaster_are_finite(debug_model, case):
    from factost_jax.forecast import Forecaster

    config, params = debug_model
    forecaster = Forecaster(params, config)
    t = np.arange(200, dtype=np.float64)
    series = {
        "constant": [np.full(50, 3.0), np.zeros(130)],
        "huge": [1e9 + 1e7 * np.sin(t / 4), np.full(20, 1e9)],
        "tiny": [1e-9 * (2 + np.sin(t / 4)), np.full(20, 1e-9)],
        "ragged_nan": [np.where(t % 2 == 0, np.nan, t), np.array([np.nan, np.inf, 5.0, np.nan])],
    }[case]
    horizon = 2 * config.max_output_patches * config.patch_size + 3
    result = forecaster.forecast(series, horizon, quantiles=(0.1, 0.5, 0.9))
    assert result.quantiles.shape == (2, horizon, 3) and np.isfinite(result.quantiles).all()
    assert (np.diff(result.quantiles, axis=-1) >= 0).all()
    if case == "constant":
        np.testing.assert_allclose(result.median[0], 3.0, rtol=0.05)  # scaled by its level, not by a zero std
        assert np.all(np.abs(result.median[1]) < 1.0)
    if case == "tiny":
        assert np.all(np.abs(result.median) < 1e-7)  # stays on the series' own scale


def test_all_nan_series_through_forecaster(debug_model):
    from factost_jax.forecast import Forecaster

    config, params = debug_model
    forecaster = Forecaster(params, config)
    series = [np.arange(30.0), np.full(30, np.nan)]
    with pytest.raises(ValueError, match=r"series with no observed \(finite\) value at indices \[1\]"):
        forecaster.forecast(series, 12)
    result = forecaster.forecast(series, 12, allow_unobserved=True)
    assert np.isfinite(result.quantiles).all() and result.quantiles.shape[:2] == (2, 12)


# ------------------------------------------------------------------------- bad files and bad flags
def _one_line_error(result, status=2):
    assert result.returncode == status, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.data.corpora=(('NO_SUCH_SET',1.0),)"], "NO_SUCH_SET"),
        (["--config.train.steps=abc"], "steps"),
        (["--config.data.batch_size=0"], "batch_size"),
        (["--config.data.predict_length=64000"], "predict_length"),  # horizon longer than the data
        (["--config.data.context_length=100000"], "context_length"),
        (["--config.mesh.shape=16,1,1"], "mesh.shape"),
        (["--config.data.batch_size=7"], "global batch 7 is not divisible by the data*fsdp mesh size 8"),
    ],
)
def test_pretrain_bad_flags_one_line_exit_2(repo_root, cli_env, tmp_path, extra, message):
    result = _run(_pretrain_cmd(repo_root, tmp_path / "w", *extra), repo_root, cli_env)
    assert message in _one_line_error(result)


@pytest.mark.slow
def test_evaluate_rejects_malformed_files_with_one_line(repo_root, cli_env, tmp_path):
    evaluate = [sys.executable, str(repo_root / "launch" / "evaluate.py"), "--model", "last_value", "--input_len", "12"]
    folder = tmp_path / "data" / "ETT"
    folder.mkdir(parents=True)
    cases = [
        ("", "ETTh1.csv: file is empty"),  # empty file
        ("date,HUFL,OT\n2016-07-01 00:00:00,1.0,x\n2016-07-01 01:00:00,2.0,3.0\n", "non-numeric"),  # wrong dtype
    ]
    for content, message in cases:
        (folder / "ETTh1.csv").write_text(content)
        result = _run([*evaluate, "--dataset", "ETTh1", "--horizon", "12", "--data_dir", str(tmp_path / "data")],
                      repo_root, cli_env)
        assert message in _one_line_error(result)
    # Well-formed but too short for any test window: the horizon is longer than the data.
    rows = "".join(f"2016-07-01 {h:02d}:00:00,{h}.0,{h}.5\n" for h in range(20))
    (folder / "ETTh1.csv").write_text("date,HUFL,OT\n" + rows)
    result = _run([*evaluate, "--dataset", "ETTh1", "--horizon", "48", "--data_dir", str(tmp_path / "data")],
                  repo_root, cli_env)
    assert "horizon=48" in _one_line_error(result)
    # Wrong shape: a PEMS archive whose array is [T, N] instead of [T, N, C].
    pems = tmp_path / "data" / "PEMS08"
    pems.mkdir()
    np.savez(pems / "PEMS08.npz", data=np.ones((50, 3), np.float32))
    (pems / "PEMS08.csv").write_text("from,to,cost\n0,1,1.0\n")
    result = _run([*evaluate, "--dataset", "PEMS08", "--horizon", "12", "--data_dir", str(tmp_path / "data")],
                  repo_root, cli_env)
    assert "expected a numeric (T, N, C) array" in _one_line_error(result)
