"""Checkpoint I/O: inference round trips, the training loop's on-disk layout, path resolution errors."""

import json

import grain
import jax
import numpy as np
import pytest

from factost_jax import checkpoint as ckpt
from factost_jax.model.config import model_config
from factost_jax.model.encoder import init_params
from factost_jax.train import loop
from factost_jax.train.mesh import unbox
from factost_jax.train.optim import make_optimizer
from factost_jax.train.steps import TrainState


@pytest.fixture(scope="module")
def debug_model():
    config = model_config("debug", num_layers=1)
    params = jax.device_get(unbox(init_params(config, jax.random.key(3))))
    return config, params


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_inference_checkpoint_round_trip(tmp_path, debug_model):
    config, params = debug_model
    path = ckpt.save_inference_checkpoint(tmp_path / "shipped", config, params, {"step": 123, "note": "unit"})
    loaded_config, loaded = ckpt.load_inference_params(path)
    assert loaded_config == config
    _assert_trees_equal(loaded, params)
    assert all(isinstance(x, np.ndarray) and x.dtype == np.float32 for x in jax.tree.leaves(loaded))
    metadata = ckpt.read_metadata(path)
    assert metadata["step"] == 123 and metadata["note"] == "unit" and metadata["params_dtype"] == "float32"
    assert ckpt.find_checkpoint(path) == (path, 123)


def test_bfloat16_inference_checkpoint_loads_as_float32(tmp_path, debug_model):
    config, params = debug_model
    path = ckpt.save_inference_checkpoint(tmp_path / "bf16", config, params, dtype="bfloat16")
    _, loaded = ckpt.load_inference_params(path)
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)
    assert any(not np.array_equal(g, w) for g, w in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)))
    with pytest.raises(ValueError, match="already exists"):
        ckpt.save_inference_checkpoint(path, config, params)
    with pytest.raises(ValueError, match="dtype"):
        ckpt.save_inference_checkpoint(tmp_path / "f16", config, params, dtype="float16")


def test_loop_layout_is_readable_for_inference(tmp_path, debug_model):
    config, params = debug_model
    train_cfg = loop.TrainConfig(steps=10, checkpoint_every=1, async_checkpointing=True).validate()
    optimizer = make_optimizer(train_cfg)
    state = TrainState.create(jax.tree.map(np.asarray, params), optimizer)
    data_iter = iter(grain.MapDataset.range(100).to_iter_dataset())
    next(data_iter)
    workdir = tmp_path / "work"
    manager = loop.make_checkpoint_manager(workdir / ckpt.CHECKPOINTS_DIR, train_cfg)
    for step in (3, 7):
        loop.save_checkpoint(manager, state, data_iter, {"step": step, "stage": "pretrain",
                                                         "model_config": config.to_dict()}, force=True)
    manager.wait_until_finished()
    manager.close()

    step_dir, step = ckpt.find_checkpoint(workdir)
    assert (step_dir, step) == (workdir / "checkpoints" / "7", 7)
    assert ckpt.find_checkpoint(workdir / "checkpoints") == (step_dir, 7)
    assert ckpt.find_checkpoint(workdir / "checkpoints" / "3") == (workdir / "checkpoints" / "3", 3)
    assert ckpt.list_steps(workdir / "checkpoints") == [3, 7]
    assert sorted(p.name for p in step_dir.iterdir() if p.is_dir()) == ["data_iter", "metadata", "opt_state", "params"]
    assert json.loads((step_dir / "data_iter" / "process_0-of-1.json").read_text())  # Grain iterator state
    assert ckpt.read_metadata(workdir)["stage"] == "pretrain"
    loaded_config, loaded = ckpt.load_inference_params(workdir)
    assert loaded_config == config
    _assert_trees_equal(loaded, params)
    assert ckpt.saved_param_shapes(workdir) == {
        ckpt.key_path_str(path): leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def test_find_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.find_checkpoint(tmp_path / "missing")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        ckpt.find_checkpoint(a_file)
    (tmp_path / "empty" / "checkpoints" / "5.orbax-checkpoint-tmp-1").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        ckpt.find_checkpoint(tmp_path / "empty")


def test_metadata_without_model_config_is_rejected(tmp_path, debug_model):
    config, params = debug_model
    path = ckpt.save_inference_checkpoint(tmp_path / "c", config, params)
    metadata_file = path / "metadata" / "metadata"
    metadata = json.loads(metadata_file.read_text())
    del metadata["model_config"]
    metadata_file.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="model_config"):
        ckpt.load_inference_params(path)


def test_replicated_state_saves_without_compiling_per_device_slices(tmp_path, debug_model, caplog):
    """On CPU every replica of an array lies in host memory, so the loop's save writes each replicated
    array whole: Orbax's replica-parallel default compiled a slice per array and device (about 150
    compilations, 7 s, on the first save of a debug run over 8 devices)."""
    import logging

    from jax.sharding import NamedSharding, PartitionSpec

    config, params = debug_model
    replicated = NamedSharding(jax.make_mesh((8,), ("data",)), PartitionSpec())
    train_cfg = loop.TrainConfig(steps=10, checkpoint_every=1).validate()
    state = jax.device_put(TrainState.create(jax.tree.map(np.asarray, params), make_optimizer(train_cfg)), replicated)
    data_iter = iter(grain.MapDataset.range(10).to_iter_dataset())
    manager = loop.make_checkpoint_manager(tmp_path / ckpt.CHECKPOINTS_DIR, train_cfg)
    with caplog.at_level(logging.WARNING, logger="jax._src.interpreters.pxla"), jax.log_compiles(True):
        loop.save_checkpoint(manager, state, data_iter, {"step": 1, "stage": "pretrain",
                                                         "model_config": config.to_dict()}, force=True)
        manager.wait_until_finished()
    manager.close()
    compiled = [r.getMessage().split(" with ")[0] for r in caplog.records if r.getMessage().startswith("Compiling")]
    assert not [name for name in compiled if "slice" in name], compiled
    _assert_trees_equal(ckpt.load_inference_params(tmp_path)[1], params)
