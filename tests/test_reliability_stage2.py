"""Reliability of stage 2 (issue 7): `launch/adapt.py` killed with SIGKILL or preempted with SIGTERM
resumes to the same parameters, best-validation checkpoint and test metrics as an uninterrupted run.

The subprocess runs adapt the debug model (random stage-1 weights written by a fixture) on a tiny
synthetic sensor network, validating and checkpointing every few steps; they share one persistent
XLA compilation cache, so only the first run compiles. An in-process toy run covers preemption
before the first update, where the step-0 validation must not be counted twice on resume.
"""

import json
import os
import signal
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factost_jax import checkpoint as ckpt_io
from factost_jax.checkpoint import list_steps
from launcher_runs import launcher_env, metric_rows, run, start_and_signal, train_steps
from factost_jax.model.config import model_config
from factost_jax.model.encoder import abstract_params, host_random_params, unbox
from factost_jax.train.loop import SHA_FILE, TaskHooks, TrainConfig, train_and_evaluate
from factost_jax.train.stage2 import BEST_DIR, METRICS_JSON, EarlyStopping

# ------------------------------------------------------------------------------------ subprocess runs
STEPS = 12
INTERVAL = 4  # validate (keeping best/) and checkpoint every INTERVAL steps
TIMEOUT_S = 900  # per launcher run: a ~10 s run took minutes on an overloaded 2-core machine


def _adapt_args(init_from):
    # patience 0: every run trains all STEPS, so the final parameters are comparable bit for bit.
    return [
        "--config", "configs/adapt.py:synthetic", f"--config.init_from={init_from}",
        "--config.data.synthetic_nodes=4", "--config.data.synthetic_days=7", "--config.data.batch_size=8",
        "--config.data.read_threads=0", f"--config.train.steps={STEPS}", f"--config.train.eval_every={INTERVAL}",
        f"--config.train.checkpoint_every={INTERVAL}", "--config.train.log_every=1", "--config.train.patience=0",
        "--config.train.progress=False",
    ]


@pytest.fixture(scope="module")
def cli_env():
    return launcher_env()


def _random_stage1_params(config, seed=7):
    """Stage-1 weights drawn in numpy (no XLA compile): norm scales 1, biases 0, the rest N(0, 0.1^2)."""
    return host_random_params(unbox(abstract_params(config)), seed, std=0.1)


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory):
    """A debug-size stage-1 checkpoint (random weights) to adapt from."""
    path = tmp_path_factory.mktemp("stage1") / "debug"
    config = model_config("debug")
    ckpt_io.save_inference_checkpoint(path, config, _random_stage1_params(config), {"stage": "pretrain"})
    return path


def _adapt_cmd(repo_root, init_from, workdir):
    return [sys.executable, str(repo_root / "launch" / "adapt.py"), *_adapt_args(init_from), "--workdir", str(workdir)]


def _run(cmd, repo_root, env):
    return run(cmd, repo_root, env, TIMEOUT_S)


def _run_record(workdir):
    """What two runs must agree on: final sha256, metrics.json, every step's loss, every validation row, best/."""
    rows = metric_rows(workdir)
    return {
        "sha256": (workdir / SHA_FILE).read_text().strip(),
        "metrics_json": json.loads((workdir / METRICS_JSON).read_text()),
        "losses": [(row["step"], row["loss"]) for row in rows if "loss" in row],
        "validations": [row for row in rows if "val_MAE" in row],
        "best": sorted(p.name for p in (workdir / BEST_DIR).iterdir()),
    }


def _assert_same_run(workdir, reference):
    record = _run_record(workdir)
    assert record["sha256"] == reference["sha256"]
    # Rows a stopped attempt logged past its checkpoint were replaced, not duplicated; losses are bitwise equal.
    assert record["losses"] == reference["losses"]
    # The early-stopping state came back from the checkpoint: same best step / value / counter at every validation.
    assert record["validations"] == reference["validations"]
    assert record["best"] == reference["best"]
    assert record["metrics_json"] == reference["metrics_json"]


@pytest.fixture(scope="module")
def reference(repo_root, cli_env, stage1_ckpt, tmp_path_factory):
    """`_run_record` of an uninterrupted run (it also fills the compilation cache)."""
    workdir = tmp_path_factory.mktemp("reference")
    result = _run(_adapt_cmd(repo_root, stage1_ckpt, workdir), repo_root, cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert train_steps(workdir) == list(range(1, STEPS + 1))
    record = _run_record(workdir)
    assert [row["step"] for row in record["validations"]] == list(range(0, STEPS + 1, INTERVAL))
    assert record["best"] == [str(record["metrics_json"]["adaptation"]["best_step"])]
    return record


@pytest.mark.slow
def test_adapt_sigkill_mid_run_then_rerun_matches_uninterrupted_run(repo_root, cli_env, stage1_ckpt, reference,
                                                                    tmp_path):
    workdir = tmp_path / "killed"
    cmd = _adapt_cmd(repo_root, stage1_ckpt, workdir)

    def past_a_finished_checkpoint():
        # Saves are asynchronous: wait until one is complete on disk and training has moved on from it.
        steps, saved = train_steps(workdir), list_steps(workdir / "checkpoints")
        return bool(saved) and bool(steps) and steps[-1] > saved[-1]

    proc, _, _ = start_and_signal(cmd, repo_root, cli_env, signal.SIGKILL, past_a_finished_checkpoint, TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / SHA_FILE).exists() and not (workdir / METRICS_JSON).exists(), "finished before the kill"
    saved = list_steps(workdir / "checkpoints")
    assert saved and saved[-1] < STEPS

    rerun = _run(cmd, repo_root, cli_env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from step {saved[-1]} " in rerun.stdout
    _assert_same_run(workdir, reference)


@pytest.mark.slow
def test_adapt_sigterm_saves_exits_zero_and_rerun_resumes_there(repo_root, cli_env, stage1_ckpt, reference, tmp_path):
    workdir = tmp_path / "preempted"
    cmd = _adapt_cmd(repo_root, stage1_ckpt, workdir)
    proc, out, err = start_and_signal(cmd, repo_root, cli_env, signal.SIGTERM,
                                       lambda: bool(train_steps(workdir)), TIMEOUT_S)  # after the first logged step
    assert proc.returncode == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("preempted at step ")]
    assert len(lines) == 1, out
    step = int(lines[0].split()[3].rstrip(";"))
    assert 1 <= step < STEPS
    assert lines[0] == f"preempted at step {step}; checkpoint saved to {workdir / 'checkpoints' / str(step)}"
    assert list_steps(workdir / "checkpoints")[-1] == step  # written (async save finished) before exiting
    # Not finished: no test evaluation, no report, no final sha.
    assert not (workdir / METRICS_JSON).exists() and not (workdir / SHA_FILE).exists()
    assert "best step" not in out and "wrote " not in out

    rerun = _run(cmd, repo_root, cli_env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from step {step} " in rerun.stdout
    _assert_same_run(workdir, reference)


# ------------------------------------------------------------------------------- in-process toy run
class _ValidatedToyTask(TaskHooks):
    """y = x @ w + b with the stage-2 hooks: a validation loss, `EarlyStopping` and its state in checkpoints.

    `signal_on_first_validation` sends SIGTERM to this process while the step-0 validation runs,
    i.e. a preemption notice that arrives before the first update.
    """

    name = "toy_adapt"

    def __init__(self, patience, min_delta, signal_on_first_validation=False):
        self.early_stopping = EarlyStopping(patience, min_delta)
        self.signal_on_first_validation = signal_on_first_validation
        rng = np.random.default_rng(123)
        self._val_x = rng.normal(size=(16, 4)).astype(np.float32)
        self._val_y = self._val_x.sum(-1, keepdims=True)

    def model_config_dict(self):
        return {"kind": "toy"}

    def init_params(self, rng):
        init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed", "mlp"))
        return {"w": init(rng, (4, 1)), "b": jnp.ones((1,))}

    def loss_fn(self, params, batch, rng, deterministic):
        pred = batch["x"] @ params["w"] + params["b"]
        return jnp.mean((pred - batch["y"]) ** 2), {}

    def train_dataset(self, process_index, process_count):
        import grain

        def make(index):
            x = np.random.default_rng(index).normal(size=(8, 4)).astype(np.float32)
            return {"x": x, "y": x.sum(-1, keepdims=True)}

        return grain.MapDataset.range(1_000).map(make).to_iter_dataset()

    def eval_batches(self):
        return []

    def batch_shapes_key(self, batch):
        return batch["x"].shape

    def trainable_mask(self, params):
        return None

    def tokens_in_batch(self, batch):
        return batch["x"].size

    def evaluate_params(self, params, step):
        if self.signal_on_first_validation:
            self.signal_on_first_validation = False
            os.kill(os.getpid(), signal.SIGTERM)
        w, b = np.asarray(jax.device_get(params["w"])), np.asarray(jax.device_get(params["b"]))
        val_loss = float(np.mean((self._val_x @ w + b - self._val_y) ** 2))
        self.early_stopping.update(val_loss, step)
        return {"val_loss": val_loss, "evals_without_improvement": self.early_stopping.evals_without_improvement}

    def should_stop(self):
        return self.early_stopping.should_stop

    def state_dict(self):
        return {"early_stopping": self.early_stopping.state_dict()}

    def load_state_dict(self, state):
        self.early_stopping.load_state_dict(state.get("early_stopping", {}))


class _ToyConfig:
    def __init__(self):
        self.train = TrainConfig(steps=6, log_every=1, eval_every=2, eval_windows=8, checkpoint_every=2,
                                 max_to_keep=10, progress=False, lr=0.05, async_checkpointing=False)
        self.mesh = type("Mesh", (), {"shape": "-1,1,1"})()

    def to_dict(self):
        return {"train": {"steps": self.train.steps}, "mesh": {"shape": self.mesh.shape}}


def _validation_rows(workdir):
    return [row for row in metric_rows(workdir) if "val_loss" in row]


def test_preempted_before_first_update_resumes_without_repeating_step0_validation(tmp_path):
    # patience 1 and an unreachable min_delta: the step-2 validation is the first without improvement,
    # so an uninterrupted run stops early at step 2. Counting the step-0 validation twice would
    # instead stop the resumed run at step 0, before any update.
    toy = dict(patience=1, min_delta=1e9)
    reference_dir = tmp_path / "reference"
    reference = train_and_evaluate(_ValidatedToyTask(**toy), _ToyConfig(), reference_dir)
    assert reference["stopped_early"] and reference["step"] == 2
    assert [(r["step"], r["evals_without_improvement"]) for r in _validation_rows(reference_dir)] == [(0, 0), (2, 1)]

    workdir = tmp_path / "preempted"
    stopped = train_and_evaluate(_ValidatedToyTask(**toy, signal_on_first_validation=True), _ToyConfig(), workdir)
    assert stopped["preempted"] and stopped["step"] == 0 and list_steps(workdir / "checkpoints") == [0]

    resumed = train_and_evaluate(_ValidatedToyTask(**toy), _ToyConfig(), workdir)
    assert resumed["start_step"] == 0 and resumed["step"] == 2 and resumed["stopped_early"]
    assert resumed["params_sha256"] == reference["params_sha256"]
    # The step-0 row logged before the preemption is kept once, and the counters match the reference.
    assert _validation_rows(workdir) == _validation_rows(reference_dir)


def test_best_save_cut_off_by_a_kill_leaves_nothing_behind(tmp_path):
    from factost_jax.train.best_params import save_best

    root = tmp_path / BEST_DIR
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save_best(root, params, 4, 0.5, {"stage": "toy"})
    # What a SIGKILL during the best-parameters save of step 8 leaves next to the previous best (Orbax
    # writes `<step>.orbax-checkpoint-tmp-<time>/` and renames it when complete).
    (root / "8.orbax-checkpoint-tmp-1764000000" / "d").mkdir(parents=True)
    save_best(root, {"w": params["w"] + 1}, 8, 0.25, {"stage": "toy"})
    assert sorted(p.name for p in root.iterdir()) == ["8"]
    metadata = json.loads((root / "8" / "metadata" / "metadata").read_text())
    assert metadata == {"stage": "toy", "step": 8, "val_MAE": 0.25}