"""Meshes on 8 simulated CPU devices: equal loss curves on every mesh, real parameter sharding,
the rules table and a node-sharded stage-2 adapter (resharding restore: tests/test_distributed.py)."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from factost_jax.train import mesh as mesh_lib
from factost_jax.train.setup import build_setup, jit_steps

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 3
MESHES = {"1": None, "8x1x1": "8,1,1", "2x4x1": "2,4,1", "1x4x2": "1,4,2"}


def _debug_config(data_dir, mesh_shape="-1,1,1"):
    spec = importlib.util.spec_from_file_location("factost_configs_pretrain_mesh", REPO / "configs" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("debug")
    config.data.data_dir = str(data_dir)
    config.data.batch_size = 16
    config.data.output_patch_buckets = (2,)
    config.model.num_layers = 1
    config.train.update(dict(steps=NUM_STEPS, log_every=1, eval_every=NUM_STEPS, eval_windows=16,
                             checkpoint_every=NUM_STEPS, progress=False))
    config.mesh.shape = mesh_shape
    return module.validate_config(config)


def _mesh(name):
    if MESHES[name] is None:
        return mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    return mesh_lib.make_mesh(MESHES[name])


def _losses_on_mesh(task, run_config, mesh, host_batches):
    """The stage-1 train step of the loop, jitted for `mesh`, over fixed global batches -> losses."""
    with mesh_lib.mesh_context(mesh):
        init_rng, dropout_rng = jax.random.split(jax.random.key(run_config.train.seed))
        setup = build_setup(task, run_config.train, mesh, init_rng)
        state = setup.create_state(init_rng)
        train_step, _ = jit_steps(task, setup)
        losses = []
        for host_batch in host_batches:
            state, metrics = train_step(state, mesh_lib.host_to_global(host_batch, mesh), dropout_rng)
            losses.append(float(metrics["loss"]))
    return losses, state


@pytest.fixture(scope="module")
def stage1(data_dir):
    from factost_jax.train.tasks import PretrainTask

    run_config = _debug_config(data_dir)
    task = PretrainTask(run_config)
    iterator = iter(task.train_dataset(0, 1))
    host_batches = [next(iterator) for _ in range(NUM_STEPS)]
    return task, run_config, host_batches


def test_same_loss_curve_on_every_mesh_and_params_really_sharded(stage1):
    task, run_config, host_batches = stage1
    curves, states = {}, {}
    for name in MESHES:
        curves[name], states[name] = _losses_on_mesh(task, run_config, _mesh(name), host_batches)
    assert all(np.isfinite(curves["1"])) and curves["1"][-1] < curves["1"][0] * 1.5
    for name in MESHES:
        np.testing.assert_allclose(curves[name], curves["1"], rtol=2e-5, err_msg=f"mesh {name}")

    # The MLP up projection [layers, embed, mlp] (a largest weight): FSDP over embed, tensor over mlp.
    kernel = states["1x4x2"].params["stack"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding.spec == PartitionSpec(None, "fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (1, 32 // 4, 128 // 2)
    mu = states["1x4x2"].opt_state  # Adam moments follow their parameter's sharding
    mu_kernels = [leaf for leaf in jax.tree.leaves(mu) if getattr(leaf, "shape", None) == kernel.shape]
    assert mu_kernels and all(leaf.sharding.spec == kernel.sharding.spec for leaf in mu_kernels)
    on_1x4x2 = states["1x4x2"].params["stack"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert len({tuple(map(str, s.index)) for s in on_1x4x2.addressable_shards}) == 8  # 8 distinct blocks


def test_fsdp_over_eight_devices_shards_every_embed_dimension(stage1):
    task, run_config, _ = stage1
    mesh = mesh_lib.make_mesh("1,8,1")
    with mesh_lib.mesh_context(mesh):
        init_rng = jax.random.key(0)
        setup = build_setup(task, run_config.train, mesh, init_rng)
        state = setup.create_state(init_rng)
    kernel = state.params["stack"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec(None, "fsdp", None)), kernel.ndim)
    assert kernel.addressable_shards[0].data.shape == (1, 32 // 8, 128)
    sharded = [leaf for leaf in jax.tree.leaves(state.params) if "fsdp" in str(leaf.sharding.spec)]
    assert len(sharded) >= len(jax.tree.leaves(state.params)) // 2


def test_rules_table_maps_every_model_axis_and_switches_nodes():
    rules = dict(mesh_lib.LOGICAL_AXIS_RULES)
    assert rules["batch"] == ("data", "fsdp") and rules["embed"] == "fsdp"
    assert rules["mlp"] == rules["heads"] == "tensor" and rules["nodes"] is None
    # Every logical name the model declares is in the table (none replicated by omission): the
    # parameters' names read from the boxes `jax.eval_shape` gives (stage 1 and the stage-2 adapter),
    # the activations' from the constants the model passes to `nn.with_logical_constraint`.
    import flax.linen as nn

    from factost_jax.model import adapter, layers
    from factost_jax.model.config import model_config
    from factost_jax.model.encoder import abstract_params

    def box_names(boxed):
        boxes = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        assert boxes and all(isinstance(box, nn.Partitioned) for box in boxes), "every parameter carries axis names"
        return {name for box in boxes for name in box.names if name is not None}

    config = model_config("debug")
    stage1 = box_names(abstract_params(config))
    stage2 = box_names(jax.eval_shape(lambda key: adapter.init_adapter_params(
        config, adapter.AdapterConfig(num_nodes=3), key), jax.random.key(0)))
    assert {"embed", "mlp", "heads", "layers"} <= stage1 and {"nodes", "adapter_embed"} <= stage2 - stage1
    activations = set(layers.ACTIVATION_AXES) | set(layers.HIDDEN_AXES) | set(layers.HEAD_AXES) | set(adapter.NODE_AXES)
    declared = stage1 | stage2 | activations
    assert declared <= set(rules), declared - set(rules)
    assert dict(mesh_lib.logical_axis_rules("tensor"))["nodes"] == "tensor"
    with pytest.raises(ValueError, match="nodes_axis"):
        mesh_lib.logical_axis_rules("fsdp")
    mesh = mesh_lib.make_mesh("2,2,2")
    spec = mesh_lib.logical_to_spec(("batch", "nodes", "length", "embed"), (4, 6, 8, 32), mesh,
                                    mesh_lib.logical_axis_rules("tensor"))
    assert spec == PartitionSpec(("data", "fsdp"), "tensor", None, None)


def _adapter_inputs(batch, length, horizon, num_nodes):
    rng = np.random.default_rng(0)
    values = rng.normal(10.0, 2.0, size=(batch, length, num_nodes)).astype(np.float32)
    values[0, :5, 1] = np.nan
    steps = rng.integers(0, 1000, size=(batch, 1)) + np.arange(length + horizon)[None]
    calendar = {"time_of_day": (steps % 24).astype(np.int32), "day_of_week": ((steps // 24) % 7).astype(np.int32)}
    return (values, {k: v[:, :length] for k, v in calendar.items()}, {k: v[:, length:] for k, v in calendar.items()})


def test_stage2_adapter_with_node_axis_sharded_gives_the_same_output():
    """A `[B, T, N]` batch with N split over "tensor" runs through STAdapterModel unchanged."""
    from factost_jax.model.adapter import AdapterConfig, STAdapterModel, init_adapter_params
    from factost_jax.model.config import model_config

    backbone = model_config("debug", num_layers=1)
    batch, length, horizon, num_nodes = 2, 32, 16, 4
    adapter_config = AdapterConfig(num_nodes=num_nodes)
    boxed = init_adapter_params(backbone, adapter_config, jax.random.key(0))
    # Move the zero-initialised adapter factors off zero so the node-mixing paths really contribute.
    noise = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(mesh_lib.unbox(boxed)))))
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(next(noise), p.shape, p.dtype), mesh_lib.unbox(boxed))
    values, context_calendar, future_calendar = _adapter_inputs(batch, length, horizon, num_nodes)
    model = STAdapterModel(backbone, adapter_config)
    mesh = mesh_lib.make_mesh("2,1,4")

    def forecast(rules, values_spec):
        with mesh_lib.mesh_context(mesh, rules):
            shardings = mesh_lib.param_shardings(boxed, mesh, rules)
            placed = jax.device_put(params, shardings)
            inputs = jax.device_put(values, NamedSharding(mesh, values_spec))
            apply = jax.jit(lambda p, v: model.apply({"params": p}, v, context_calendar, future_calendar, horizon))
            return np.asarray(apply(placed, inputs)), shardings

    replicated_out, _ = forecast(mesh_lib.LOGICAL_AXIS_RULES, PartitionSpec(("data", "fsdp")))
    sharded_out, shardings = forecast(mesh_lib.logical_axis_rules("tensor"), PartitionSpec(("data", "fsdp"), None, "tensor"))
    assert shardings["adapter"]["st_context"]["node_embed"].spec[0] == "tensor"
    assert replicated_out.shape == (batch, horizon, num_nodes, len(backbone.quantile_levels))
    assert np.isfinite(sharded_out).all()
    np.testing.assert_allclose(sharded_out, replicated_out, rtol=1e-5, atol=1e-5)
