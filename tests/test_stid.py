"""STID baseline: shapes, NaN handling, calendar identities, config errors, and that it learns."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from factost_jax.model.stid import STID, STIDConfig, init_stid_params

CFG = STIDConfig(num_nodes=5, input_len=12, horizon=12, steps_per_day=24, num_layers=2, dropout=0.1)


def _inputs(batch=3, cfg=CFG, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(batch, cfg.input_len, cfg.num_nodes)).astype(np.float32)
    tod = rng.integers(0, cfg.steps_per_day, size=(batch,)).astype(np.int32)
    dow = rng.integers(0, 7, size=(batch,)).astype(np.int32)
    return jnp.asarray(values), jnp.asarray(tod), jnp.asarray(dow)


def test_output_shape_and_param_layout():
    params = init_stid_params(CFG, jax.random.key(0))
    values, tod, dow = _inputs()
    out = STID(CFG).apply({"params": params}, values, tod, dow)
    assert out.shape == (3, CFG.horizon, CFG.num_nodes)
    assert np.isfinite(np.asarray(out)).all()
    unboxed = nn.unbox(params)
    assert unboxed["node_embed"].shape == (5, 32)
    assert unboxed["tod_embed"].shape == (24, 32)
    assert unboxed["dow_embed"].shape == (7, 32)
    assert unboxed["series_embed"]["kernel"].shape == (12, 32)
    assert unboxed["encoder_0"]["fc1"]["kernel"].shape == (128, 128)
    assert unboxed["regression"]["kernel"].shape == (128, 12)
    # every weight carries logical axis names, and the node table's rows are the "nodes" axis
    leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    assert params["node_embed"].names == ("nodes", "stid_embed")


def test_nan_inputs_are_read_as_zero():
    params = init_stid_params(CFG, jax.random.key(1))
    values, tod, dow = _inputs()
    values_nan = values.at[:, :4, 2].set(jnp.nan)
    values_zero = values.at[:, :4, 2].set(0.0)
    model = STID(CFG)
    out_nan = model.apply({"params": params}, values_nan, tod, dow)
    out_zero = model.apply({"params": params}, values_zero, tod, dow)
    assert np.isfinite(np.asarray(out_nan)).all()
    np.testing.assert_array_equal(np.asarray(out_nan), np.asarray(out_zero))


def test_calendar_and_node_identities_matter():
    params = init_stid_params(CFG, jax.random.key(2))
    values, tod, dow = _inputs()
    model = STID(CFG)
    base = np.asarray(model.apply({"params": params}, values, tod, dow))
    shifted_tod = np.asarray(model.apply({"params": params}, values, (tod + 1) % 24, dow))
    assert not np.allclose(base, shifted_tod)
    # slots wrap modulo the table size instead of indexing out of bounds
    wrapped = np.asarray(model.apply({"params": params}, values, tod + 24, dow + 7))
    np.testing.assert_allclose(base, wrapped, rtol=1e-6)
    # identical series on two nodes still get different forecasts through the node identity
    same = jnp.broadcast_to(values[:, :, :1], values.shape)
    out = np.asarray(model.apply({"params": params}, same, tod, dow))
    assert not np.allclose(out[:, :, 0], out[:, :, 1])


def test_bad_inputs_and_config_raise():
    params = init_stid_params(CFG, jax.random.key(3))
    model = STID(CFG)
    values, tod, dow = _inputs()
    with pytest.raises(ValueError, match="6 nodes but the node-embedding table has 5"):
        model.apply({"params": params}, jnp.zeros((3, 12, 6)), tod, dow)
    with pytest.raises(ValueError, match="input length 10"):
        model.apply({"params": params}, values[:, :10], tod, dow)
    with pytest.raises(ValueError, match="time_of_day must be"):
        model.apply({"params": params}, values, tod[:, None], dow)
    with pytest.raises(ValueError, match="STIDConfig.num_nodes"):
        STIDConfig(num_nodes=0).validate()
    with pytest.raises(ValueError, match="STIDConfig.dropout"):
        STIDConfig(num_nodes=3, dropout=1.5).validate()
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['hidden'\]"):
        STIDConfig.from_dict({"num_nodes": 3, "hidden": 4})
    assert STIDConfig.from_dict(CFG.to_dict()) == CFG


def test_adamw_steps_reduce_loss():
    """A toy network whose future is a node-specific shift of its past: STID must fit it quickly."""
    cfg = STIDConfig(num_nodes=5, input_len=12, horizon=12, steps_per_day=24, num_layers=2, dropout=0.1)
    rng = np.random.default_rng(0)
    t = np.arange(4000)
    phase = rng.uniform(0, 2 * np.pi, size=cfg.num_nodes)
    series = np.sin(2 * np.pi * t[:, None] / 24 + phase) + 0.1 * rng.normal(size=(t.size, cfg.num_nodes))
    starts = rng.integers(0, t.size - 24, size=32)
    x = np.stack([series[s:s + 12] for s in starts]).astype(np.float32)
    y = np.stack([series[s + 12:s + 24] for s in starts]).astype(np.float32)
    tod = ((starts + 11) % 24).astype(np.int32)
    dow = (((starts + 11) // 24) % 7).astype(np.int32)
    model = STID(cfg)
    params = nn.unbox(init_stid_params(cfg, jax.random.key(4)))
    optimizer = optax.adamw(3e-3, weight_decay=0.01)
    opt_state = optimizer.init(params)

    def loss_fn(p, rng):
        pred = model.apply({"params": p}, x, tod, dow, deterministic=False, rngs={"dropout": rng})
        return jnp.mean(jnp.abs(pred - y))

    @jax.jit
    def step(p, s, rng):
        loss, grads = jax.value_and_grad(loss_fn)(p, rng)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    losses = []
    for i in range(40):
        params, opt_state, loss = step(params, opt_state, jax.random.key(i))
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])
