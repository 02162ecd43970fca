"""Training machinery: WSD schedule, optimizer partitions, the pure train step, mesh helpers, and
the shared loop on the debug pretraining config (metrics, checkpoints, exact resume)."""

import importlib.util
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from factost_jax.train import mesh as mesh_lib
from factost_jax.train.loop import (
    METRICS_FILE,
    SHA_FILE,
    RunConfigError,
    TaskHooks,
    TrainConfig,
    params_sha256,
    train_and_evaluate,
)
from factost_jax.train.optim import make_optimizer, wsd_schedule
from factost_jax.train.steps import TrainState, make_eval_step, make_train_step

REPO = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ schedule
def test_wsd_schedule_values_at_key_steps():
    lr, total = 1e-3, 1000  # warmup to step 100, hold to 600, sqrt decay to 1000
    schedule = wsd_schedule(lr, total, warmup_frac=0.1, stable_until_frac=0.6)
    expected = {
        0: lr / 100,
        50: lr / 100 + (lr - lr / 100) * 0.5,
        100: lr,
        350: lr,
        599: lr,
        600: lr,
        700: lr * (1 - np.sqrt(0.25)),
        800: lr * (1 - np.sqrt(0.5)),
        1000: 0.0,
        1500: 0.0,
    }
    for step, value in expected.items():
        np.testing.assert_allclose(float(schedule(step)), value, rtol=1e-5, atol=1e-12, err_msg=f"step {step}")
    # jit-compatible and monotone in each phase
    values = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(total + 1)))
    assert np.all(np.diff(values[:100]) > 0) and np.all(np.diff(values[600:]) <= 0)


def test_wsd_schedule_other_shapes_and_final_factor():
    linear = wsd_schedule(1.0, 100, warmup_frac=0.0, stable_until_frac=0.5, decay="linear", final_factor=0.1)
    np.testing.assert_allclose(float(linear(0)), 1.0)
    np.testing.assert_allclose(float(linear(75)), 0.1 + 0.9 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(linear(100)), 0.1, rtol=1e-6)
    cosine = wsd_schedule(2.0, 100, warmup_frac=0.0, stable_until_frac=0.0, decay="cosine")
    np.testing.assert_allclose(float(cosine(50)), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"peak_lr": 0.0}, "peak_lr"),
        ({"total_steps": 0}, "total_steps"),
        ({"warmup_frac": 0.7, "stable_until_frac": 0.6}, "warmup_frac"),
        ({"decay": "exp"}, "decay"),
    ],
)
def test_wsd_schedule_rejects_bad_arguments(kwargs, match):
    args = {"peak_lr": 1e-3, "total_steps": 100, **kwargs}
    with pytest.raises(ValueError, match=match):
        wsd_schedule(**args)


# ----------------------------------------------------------------------------------------- optimizer
def _train_cfg(**overrides):
    values = dict(steps=100, lr=0.1, warmup_frac=0.0, stable_until_frac=1.0, weight_decay=0.01, clip_norm=1.0)
    values.update(overrides)
    return TrainConfig(**values).validate()


def test_optimizer_freezes_masked_params_and_clips_trainable_only():
    params = {"adapter": jnp.ones(3), "backbone": {"w": jnp.ones((2, 2))}}
    mask = {"adapter": True, "backbone": {"w": False}}
    optimizer = make_optimizer(_train_cfg(), trainable_mask=mask)
    state = optimizer.init(params)
    # The frozen gradient is huge: it must neither move its leaf nor shrink the adapter's clipped step.
    grads = {"adapter": jnp.full(3, 0.1), "backbone": {"w": jnp.full((2, 2), 1e6)}}
    current = params
    for _ in range(3):
        updates, state = optimizer.update(grads, state, current)
        current = optax.apply_updates(current, updates)
    np.testing.assert_array_equal(np.asarray(current["backbone"]["w"]), np.ones((2, 2)))

    alone = make_optimizer(_train_cfg())
    alone_params = {"adapter": jnp.ones(3)}
    alone_state = alone.init(alone_params)
    for _ in range(3):
        updates, alone_state = alone.update({"adapter": grads["adapter"]}, alone_state, alone_params)
        alone_params = optax.apply_updates(alone_params, updates)
    np.testing.assert_allclose(np.asarray(current["adapter"]), np.asarray(alone_params["adapter"]), rtol=1e-6)
    assert not np.allclose(np.asarray(current["adapter"]), 1.0)


def test_optimizer_accepts_callable_mask_and_clips_global_norm():
    params = {"a": jnp.zeros(4), "b": jnp.zeros(4)}
    optimizer = make_optimizer(_train_cfg(lr=1.0, weight_decay=0.0, clip_norm=0.5),
                               trainable_mask=lambda p: {"a": True, "b": False})
    state = optimizer.init(params)
    updates, _ = optimizer.update({"a": jnp.full(4, 100.0), "b": jnp.full(4, 100.0)}, state, params)
    # Adam's first step is ~ -lr * sign(g) whatever the clipping; frozen gets exact zeros.
    np.testing.assert_allclose(np.asarray(updates["a"]), -1.0, rtol=1e-3)
    np.testing.assert_array_equal(np.asarray(updates["b"]), 0.0)


# ---------------------------------------------------------------------------------------- train step
def _toy_loss(params, batch, rng, deterministic):
    pred = batch["x"] * params["w"]
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, {"mean_pred": jnp.mean(pred)}


def test_train_step_updates_and_skips_non_finite():
    optimizer = make_optimizer(_train_cfg())
    schedule = wsd_schedule(0.1, 100, warmup_frac=0.0, stable_until_frac=1.0)
    step_fn = jax.jit(make_train_step(_toy_loss, optimizer, schedule))
    state = TrainState.create({"w": jnp.ones(3)}, optimizer)
    rng = jax.random.key(0)
    good = {"x": jnp.ones((4, 3)), "y": jnp.zeros((4, 3))}
    state, metrics = step_fn(state, good, rng)
    assert int(state.step) == 1 and int(metrics["skipped"]) == 0
    assert float(metrics["loss"]) == pytest.approx(1.0)
    assert float(metrics["lr"]) == pytest.approx(0.1)
    assert {"grad_norm", "param_norm", "update_norm", "mean_pred"} <= set(metrics)
    assert not np.allclose(np.asarray(state.params["w"]), 1.0)

    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    bad = {"x": good["x"].at[0, 0].set(jnp.nan), "y": good["y"]}
    state, metrics = step_fn(state, bad, rng)
    assert int(state.step) == 2 and int(metrics["skipped"]) == 1
    assert float(metrics["update_norm"]) == 0.0
    after = jax.tree.map(np.asarray, (state.params, state.opt_state))
    jax.tree.map(np.testing.assert_array_equal, before, after)

    state, metrics = step_fn(state, good, rng)  # training continues after a skipped step
    assert int(metrics["skipped"]) == 0 and int(state.step) == 3


def test_eval_step_is_deterministic_loss():
    eval_step = jax.jit(make_eval_step(_toy_loss))
    metrics = eval_step({"w": jnp.full(3, 2.0)}, {"x": jnp.ones((2, 3)), "y": jnp.ones((2, 3))})
    assert float(metrics["loss"]) == pytest.approx(1.0) and float(metrics["mean_pred"]) == pytest.approx(2.0)


# --------------------------------------------------------------------------------------------- mesh
def test_make_mesh_shapes_and_errors():
    assert jax.device_count() == 8
    assert dict(mesh_lib.make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert dict(mesh_lib.make_mesh("2,-1,1").shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert dict(mesh_lib.make_mesh((1, 2, 4)).shape) == {"data": 1, "fsdp": 2, "tensor": 4}
    with pytest.raises(ValueError, match="do not divide"):
        mesh_lib.make_mesh("3,-1,1")
    with pytest.raises(ValueError, match="has 4 devices"):
        mesh_lib.make_mesh("2,2,1")
    with pytest.raises(ValueError, match="3 sizes"):
        mesh_lib.make_mesh("8,1")
    with pytest.raises(ValueError, match="integers"):
        mesh_lib.make_mesh("a,1,1")


class _TwoKernels(nn.Module):
    @nn.compact
    def __call__(self, x):
        init = nn.initializers.lecun_normal()
        wide = self.param("wide", nn.with_logical_partitioning(init, ("embed", "mlp")), (x.shape[-1], 8))
        odd = self.param("odd", nn.with_logical_partitioning(init, ("embed", "mlp")), (x.shape[-1], 3))
        bias = self.param("bias", nn.initializers.zeros, (8,))
        return x @ wide + bias, x @ odd


def test_param_shardings_follow_rules_and_fall_back_on_odd_dims():
    mesh = mesh_lib.make_mesh("2,2,2")
    module = _TwoKernels()
    x = jnp.ones((4, 6))
    abstract = jax.eval_shape(module.init, jax.random.key(0), x)["params"]
    shardings = mesh_lib.param_shardings(abstract, mesh)
    assert shardings["wide"].spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert shardings["odd"].spec == jax.sharding.PartitionSpec("fsdp", None)  # 3 is not divisible by 2
    assert shardings["bias"].spec == jax.sharding.PartitionSpec()
    # Born sharded: jit places each leaf on its shards straight from init.
    params = jax.jit(lambda r: mesh_lib.unbox(module.init(r, x)["params"]), out_shardings=shardings)(jax.random.key(0))
    assert params["wide"].sharding == shardings["wide"]
    # Optimizer moments follow their parameter (read from its box); scalars (the step count) are
    # replicated; the tree is the one the unboxed optimizer state has.
    opt_shardings = mesh_lib.opt_state_shardings(optax.adam(1e-3), abstract, mesh)
    assert opt_shardings[0].mu["wide"].spec == shardings["wide"].spec
    assert opt_shardings[0].nu["odd"].spec == shardings["odd"].spec == jax.sharding.PartitionSpec("fsdp", None)
    assert opt_shardings[0].count.spec == jax.sharding.PartitionSpec()
    unboxed_state = jax.eval_shape(optax.adam(1e-3).init, mesh_lib.unbox(abstract))
    assert jax.tree.structure(opt_shardings) == jax.tree.structure(unboxed_state)


def test_host_to_global_shards_batch_and_checks_divisibility():
    mesh = mesh_lib.make_mesh("4,2,1")
    batch = {"context": np.arange(16 * 5, dtype=np.float32).reshape(16, 5), "mask": np.ones((16, 5), bool)}
    out = mesh_lib.host_to_global(batch, mesh)
    assert out["context"].shape == (16, 5)
    assert out["context"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    assert len(out["context"].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(out["context"]), batch["context"])
    replicated = mesh_lib.replicated_host_to_global(batch, mesh)
    np.testing.assert_array_equal(np.asarray(replicated["context"]), batch["context"])
    with pytest.raises(ValueError, match="not divisible by the data\\*fsdp mesh size 8"):
        mesh_lib.host_to_global({"context": np.zeros((12, 5), np.float32)}, mesh)


def test_mesh_context_turns_logical_constraints_into_shardings():
    mesh = mesh_lib.make_mesh("4,2,1")

    def constrained(x):
        return nn.with_logical_constraint(x * 2, ("batch", "length", "embed"))

    x = jnp.ones((8, 3, 4))
    assert jax.jit(constrained)(x).sharding.is_fully_replicated  # no rules, no mesh: a no-op
    with mesh_lib.mesh_context(mesh):
        out = jax.jit(constrained)(x)
    assert out.sharding.is_equivalent_to(mesh_lib.batch_sharding(mesh), out.ndim)


# --------------------------------------------------------------------------------------------- loop
def _load_pretrain_configs():
    spec = importlib.util.spec_from_file_location("factost_configs_pretrain", REPO / "configs" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _debug_run_config(data_dir=None, **train_overrides):
    """The debug pretraining run; without `data_dir` its corpus is KernelSynth only (no files needed)."""
    pretrain_configs = _load_pretrain_configs()
    config = pretrain_configs.get_config("debug")
    if data_dir is None:
        config.data.corpora = (("kernelsynth", 1.0),)
    else:
        config.data.data_dir = str(data_dir)
    config.data.batch_size = 16
    config.data.output_patch_buckets = (2,)  # one compiled train program keeps the test short
    config.model.num_layers = 1
    config.train.update(dict(steps=6, log_every=1, eval_every=3, eval_windows=32, checkpoint_every=2,
                             max_to_keep=5, progress=False))
    config.train.update(train_overrides)
    config.mesh.shape = "4,2,1"  # data x fsdp: parameters and optimizer state really are sharded
    return pretrain_configs.validate_config(config)


def _rows(workdir):
    return [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]


def test_loop_logs_checkpoints_and_resumes_exactly(tmp_path):
    """Needs no real data (KernelSynth corpus), so it runs on any machine."""
    from factost_jax.checkpoint import list_steps, load_inference_params
    from factost_jax.train.tasks import PretrainTask

    run_config = _debug_run_config()
    workdir = tmp_path / "run"
    first = train_and_evaluate(PretrainTask(run_config), run_config, workdir)
    assert first["step"] == 6 and first["start_step"] == 0 and first["num_programs"] == 1
    rows = _rows(workdir)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in eval_rows] == [3, 6]
    for row in train_rows:
        assert {"lr", "grad_norm", "tokens_per_s", "windows_per_s", "skipped"} <= set(row)
        assert np.isfinite(row["loss"]) and row["skipped"] == 0
    assert list_steps(workdir / "checkpoints") == [2, 4, 6]
    sha = (workdir / SHA_FILE).read_text().strip()
    assert sha == first["params_sha256"]

    # The shipped-params reader sees exactly the trained parameters.
    model_config, params = load_inference_params(workdir)
    assert model_config == run_config.model
    assert params_sha256(params) == sha

    # Simulate a crash after the step-4 checkpoint: a rerun must resume at 4 (not 0) and, with the
    # data iterator and optimizer restored, reproduce the uninterrupted run bit for bit.
    shutil.rmtree(workdir / "checkpoints" / "6")
    (workdir / SHA_FILE).unlink()
    second = train_and_evaluate(PretrainTask(run_config), run_config, workdir)
    assert second["start_step"] == 4 and second["step"] == 6
    assert second["params_sha256"] == sha
    steps_logged = [r["step"] for r in _rows(workdir) if "loss" in r]
    assert steps_logged == [1, 2, 3, 4, 5, 6]  # rows past the restored step were replaced, not duplicated
    assert [r["loss"] for r in _rows(workdir) if "loss" in r][4:] == pytest.approx([r["loss"] for r in train_rows][4:])

    # A finished run reruns as a no-op; a different model in the same workdir is refused.
    third = train_and_evaluate(PretrainTask(run_config), run_config, workdir)
    assert third["start_step"] == 6 and third["params_sha256"] == sha
    other = _debug_run_config()
    other = type(other)(other.model_size, type(other.model)(**{**other.model.to_dict(), "d_model": 64}),
                        other.data, other.train, other.mesh)
    with pytest.raises(RunConfigError, match="different model"):
        train_and_evaluate(PretrainTask(other), other, workdir)


def test_loop_rejects_bad_workdir_and_mesh(tmp_path):
    from factost_jax.train.tasks import PretrainTask

    run_config = _debug_run_config()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RunConfigError, match="not a directory"):
        train_and_evaluate(PretrainTask(run_config), run_config, a_file)
    bad_mesh = type(run_config)(run_config.model_size, run_config.model, run_config.data, run_config.train,
                                type(run_config.mesh)("3,1,1"))
    with pytest.raises(RunConfigError, match="mesh.shape"):
        train_and_evaluate(PretrainTask(bad_mesh), bad_mesh, tmp_path / "run")


class _ToyTask(TaskHooks):
    """A minimal task: y = x @ w + b on synthetic rows; `poison` makes every loss NaN."""

    name = "toy"

    def __init__(self, poison=False, freeze_bias=False):
        self.poison, self.freeze_bias = poison, freeze_bias

    def model_config_dict(self):
        return {"kind": "toy"}

    def init_params(self, rng):
        init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed", "mlp"))
        return {"w": init(rng, (4, 2)), "b": jnp.ones((2,))}

    def loss_fn(self, params, batch, rng, deterministic):
        pred = batch["x"] @ params["w"] + params["b"]
        loss = jnp.mean((pred - batch["y"]) ** 2)
        return (loss * jnp.nan if self.poison else loss), {}

    def train_dataset(self, process_index, process_count):
        import grain

        def make(index):
            rng = np.random.default_rng(index)
            x = rng.normal(size=4).astype(np.float32)
            return {"x": x, "y": np.array([x.sum(), -x[0]], np.float32)}

        return grain.MapDataset.range(10_000).map(make)[process_index::process_count].batch(8).to_iter_dataset()

    def eval_batches(self):
        return [{"x": np.ones((8, 4), np.float32), "y": np.zeros((8, 2), np.float32)}]

    def batch_shapes_key(self, batch):
        return batch["x"].shape

    def trainable_mask(self, params):
        return {"w": True, "b": not self.freeze_bias} if self.freeze_bias else None

    def tokens_in_batch(self, batch):
        return batch["x"].size


class _ToyConfig:
    def __init__(self, **train):
        self.train = TrainConfig(**{"steps": 3, "log_every": 1, "eval_every": 100, "eval_windows": 8,
                                    "checkpoint_every": 1, "progress": False, "lr": 0.05, **train})
        self.mesh = type("Mesh", (), {"shape": "-1,1,1"})()

    def to_dict(self):
        return {"train": {"steps": self.train.steps}, "mesh": {"shape": self.mesh.shape}}


def test_loop_with_frozen_partition_resumes_masked_optimizer_state(tmp_path):
    workdir = tmp_path / "toy"
    task = _ToyTask(freeze_bias=True)
    first = train_and_evaluate(task, _ToyConfig(steps=3), workdir)
    assert first["step"] == 3 and np.isfinite(first["eval_loss"])
    second = train_and_evaluate(task, _ToyConfig(steps=5), workdir)  # a longer run continues from step 3
    assert second["start_step"] == 3 and second["step"] == 5
    from factost_jax.checkpoint import _restore_params_to_host

    params = _restore_params_to_host(workdir / "checkpoints" / "5" / "params")
    np.testing.assert_array_equal(params["b"], np.ones(2))  # frozen by the task's trainable mask
    metadata = json.loads((workdir / "checkpoints" / "5" / "metadata" / "metadata").read_text())
    assert metadata["stage"] == "toy" and metadata["step"] == 5 and metadata["model_config"] == {"kind": "toy"}
    from tb_events import read_scalars

    events = read_scalars(workdir / "tensorboard")  # both runs, one curve
    assert [step for step, _ in events["loss"]] == [1, 2, 3, 4, 5]
    assert [step for step, _ in events["eval_loss"]] == [3, 5]


def test_loop_stops_after_consecutive_non_finite_steps(tmp_path):
    from factost_jax.train.loop import TrainingDivergedError

    with pytest.raises(TrainingDivergedError, match="3 consecutive steps had a non-finite loss"):
        train_and_evaluate(_ToyTask(poison=True), _ToyConfig(steps=50, max_consecutive_skips=3), tmp_path / "nan")
    rows = _rows(tmp_path / "nan")
    assert rows[0]["skipped"] == 1 and rows[0]["loss"] is None


def test_metric_writer_writes_tensorboard_events_and_purges_a_crashed_attempt(tmp_path):
    from factost_jax.train.metric_log import TENSORBOARD_DIR, MetricWriter

    from tb_events import read_scalars

    first = MetricWriter(tmp_path, enabled=True, purge_step=0)
    for step in (1, 2, 3):
        first.write({"step": step, "loss": 1.0 / step, "note": "text", "grad_norm": None})
    first.close()
    # A resume from the step-2 checkpoint: the attempt's step-3 row is dropped, step 3 logged anew.
    second = MetricWriter(tmp_path, enabled=True, purge_step=3)
    second.write({"step": 3, "loss": 0.25})
    second.close()
    scalars = read_scalars(tmp_path / TENSORBOARD_DIR)
    assert set(scalars) == {"loss"}  # text and None (non-finite) are not scalars
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3] and scalars["loss"][-1][1] == pytest.approx(0.25)
    assert json.loads((tmp_path / METRICS_FILE).read_text().splitlines()[0]) == {
        "step": 1, "loss": 1.0, "note": "text", "grad_norm": None}
    MetricWriter(tmp_path / "other", enabled=False).close()  # other processes write nothing
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("variant", ["minuscule", "tiny", "small", "base"])
def test_pretrain_config_variants_follow_the_spec(variant):
    run_config = _load_pretrain_configs().validate_config(_load_pretrain_configs().get_config(variant))
    train, data, model = run_config.train, run_config.data, run_config.model
    assert (train.lr, train.weight_decay, train.clip_norm, train.steps, train.seed) == (1e-3, 0.01, 1.0, 100_000, 2025)
    assert (train.warmup_frac, train.stable_until_frac, train.decay) == (0.1, 0.6, "sqrt")
    assert (data.batch_size, data.context_length, data.predict_length, data.seed) == (512, 2048, 256, 2025)
    assert model.dropout == 0.1 and model.compute_dtype == "float32"  # "auto" resolves to float32 on CPU
    assert run_config.model_size == variant and run_config.to_dict()["model"]["d_model"] == model.d_model


def test_validate_config_names_the_bad_field():
    configs = _load_pretrain_configs()
    cases = [
        ("train.warmup_frac", 0.9, "train.warmup_frac"),
        ("data.batch_size", 0, "data: batch_size"),
        ("data.predict_length", 512, "output patches exceeds the model's max_output_patches"),
        ("model.dropout", 1.5, "model: ModelConfig.dropout"),
        ("mesh.shape", "1,1", "mesh.shape"),
    ]
    for path, value, message in cases:
        config = configs.get_config("tiny")
        section, field = path.split(".")
        config[section][field] = value
        with pytest.raises(ValueError, match=message):
            configs.validate_config(config)
    with pytest.raises(ValueError, match="unknown pretrain config variant 'huge'"):
        configs.get_config("huge")
