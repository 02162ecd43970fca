"""Stage-2 adapter: shapes, step-0 equivalence with stage 1, weight graft, trainable masks, input
errors, linear cost in N, and that a few AdamW steps on the adapter reduce the loss."""

import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from factost_jax.model.adapter import (
    AdapterConfig,
    DomainPrompts,
    STAdapterModel,
    adapter_predict,
    calendar_slots,
    graft_stage1_params,
    init_adapter_params,
    patch_calendar,
    trainable_mask,
)
from factost_jax.model.config import model_config
from factost_jax.model.encoder import init_params, predict, unbox

CFG = model_config("debug")
B, N, H = 2, 5, 12


def _batch(length=40, horizon=H, num_nodes=N, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(length + horizon)
    level = rng.uniform(5, 50, size=num_nodes)
    series = level + 3 * np.sin(2 * np.pi * t[:, None] / 24 + rng.uniform(0, 6, size=num_nodes))
    noise = rng.normal(size=(B, length + horizon, num_nodes))
    values = np.broadcast_to(series, (B, length + horizon, num_nodes)) + noise
    values = values.astype(np.float32)
    context, target = values[:, :length].copy(), values[:, length:]
    context[0, :7, 1] = np.nan  # missing values inside a series
    context[1, :, 3] = np.nan  # a whole series missing
    start = rng.integers(0, 1000, size=(B, 1))
    steps = start + np.arange(length + horizon)[None]
    calendar = {"time_of_day": (steps % 24).astype(np.int32), "day_of_week": ((steps // 24) % 7).astype(np.int32)}
    context_calendar = {k: v[:, :length] for k, v in calendar.items()}
    future_calendar = {k: v[:, length:] for k, v in calendar.items()}
    return context, context_calendar, future_calendar, target


def _stage1_reference(stage1_params, context, horizon):
    """Stage-1 zero-shot forecast of every node's series: [B, H, N, Q]."""
    batch, length, num_nodes = context.shape
    series = np.swapaxes(context, 1, 2).reshape(batch * num_nodes, length)
    out = predict(stage1_params, CFG, series, None, math.ceil(horizon / CFG.patch_size))[:, :horizon]
    return np.transpose(np.asarray(out).reshape(batch, num_nodes, horizon, -1), (0, 2, 1, 3))


@pytest.fixture(scope="module")
def stage1_params():
    return jax.jit(functools.partial(init_params, CFG))(jax.random.key(11))


@pytest.fixture(scope="module")
def fresh():
    return init_adapter_params(CFG, AdapterConfig(num_nodes=N), jax.random.key(5))


@pytest.fixture(scope="module")
def grafted(stage1_params, fresh):
    return AdapterConfig(num_nodes=N), graft_stage1_params(fresh, stage1_params)


def _ablation_params(acfg, default_params):
    """Fresh-init params of an ablated config, taken from the default tree (same names, same inits)
    so the test does not compile another init; the tree structure is checked against eval_shape."""
    abstract = jax.eval_shape(functools.partial(init_adapter_params, CFG, acfg), jax.random.key(0))

    def pick(shape_tree, full_tree):
        if isinstance(shape_tree, dict):
            return {key: pick(shape_tree[key], full_tree[key]) for key in shape_tree}
        assert shape_tree.shape == full_tree.shape
        return full_tree

    return pick(unbox(abstract), unbox(default_params))


def _apply(acfg, params, context, context_calendar, future_calendar, horizon=H):
    return adapter_predict(params, CFG, acfg, context, context_calendar, future_calendar, horizon)


# --------------------------------------------------------------------------- shapes and step 0


def test_output_shape_and_finite(grafted):
    acfg, params = grafted
    context, cal, fut, _ = _batch()
    out = _apply(acfg, params, context, cal, fut)
    assert out.shape == (B, H, N, CFG.num_quantiles)
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize(
    "overrides, length, horizon",
    [
        ({}, 40, 12),  # default zero-gated prompts; context not a multiple of 16 (left padding)
        ({}, 150, 20),  # context longer than max_context_patches * 16 (truncated), two output patches
        ({"use_cpr": False, "use_st_filtering": False, "use_prompts": False, "outer_revin": False}, 40, 5),
    ],
)
def test_step0_forecast_equals_stage1_zero_shot(stage1_params, grafted, overrides, length, horizon):
    acfg, params = grafted
    if overrides:
        acfg = AdapterConfig(num_nodes=N, **overrides)
        params = _ablation_params(acfg, params)
    context, cal, fut, _ = _batch(length=length, horizon=horizon, seed=length)
    out = np.asarray(_apply(acfg, params, context, cal, fut, horizon))
    ref = _stage1_reference(stage1_params, context, horizon)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_joint_prompts_are_zero_at_init_but_break_equivalence(stage1_params, grafted):
    """The spec-literal variant: u = 0 gives zero prompt tokens that still take attention mass."""
    prompts = DomainPrompts(num_tokens=3, d_model=CFG.d_model, zero_init_u=True)
    prompt_params = prompts.init(jax.random.key(0))
    assert not np.any(np.asarray(prompts.apply(prompt_params)))
    acfg = AdapterConfig(num_nodes=N, prompt_attention="joint")
    assert "prompt_gate" not in jax.eval_shape(functools.partial(init_adapter_params, CFG, acfg),
                                               jax.random.key(0))["adapter"]
    # the default tree minus the gate, with u = 0, is exactly a fresh joint-variant adapter at init
    _, params = grafted
    adapter = {k: v for k, v in unbox(params["adapter"]).items() if k != "prompt_gate"}
    adapter["prompts"] = {**adapter["prompts"], "u": jnp.zeros_like(adapter["prompts"]["u"])}
    context, cal, fut, _ = _batch()
    out = np.asarray(_apply(acfg, {**unbox(params), "adapter": adapter}, context, cal, fut))
    assert np.isfinite(out).all()
    assert not np.allclose(out, _stage1_reference(stage1_params, context, H), rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------- parameters


def test_adapter_params_are_logically_named(grafted):
    _, params = grafted
    assert set(params) == {"token_embed", "reg_token", "stack", "head", "adapter"}
    boxes = jax.tree_util.tree_leaves(params["adapter"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert boxes and all(isinstance(box, nn.LogicallyPartitioned) for box in boxes)
    assert params["adapter"]["st_context"]["node_embed"].names == ("nodes", "adapter_embed")
    assert params["adapter"]["prompt_gate"].names == ("layers", "heads")
    assert params["adapter"]["prompt_gate"].value.shape == (CFG.num_layers, CFG.num_heads)


def test_graft_copies_every_stage1_leaf(stage1_params, fresh):
    grafted = graft_stage1_params(fresh, stage1_params)
    for key in ("token_embed", "reg_token", "stack", "head"):
        src = jax.tree_util.tree_leaves_with_path(unbox(stage1_params[key]))
        dst = dict(jax.tree_util.tree_leaves_with_path(unbox(grafted[key])))
        assert len(src) == len(dst)
        for path, leaf in src:
            np.testing.assert_array_equal(np.asarray(dst[path]), np.asarray(leaf))
    # the adapter subtree is untouched and boxes survive the graft
    for a, b in zip(jax.tree.leaves(unbox(fresh["adapter"])), jax.tree.leaves(unbox(grafted["adapter"]))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert isinstance(grafted["stack"]["layers"]["attn"]["q_proj"]["kernel"], nn.LogicallyPartitioned)
    # plain (unboxed, e.g. restored from a checkpoint) trees graft as well
    plain = graft_stage1_params(unbox(fresh), unbox(stage1_params))
    np.testing.assert_array_equal(np.asarray(plain["reg_token"]), np.asarray(unbox(stage1_params)["reg_token"]))


def test_graft_rejects_wrong_size_and_wrong_tree(stage1_params, fresh):
    other_size = jax.eval_shape(functools.partial(init_params, model_config("debug", ffn_dim=64)), jax.random.key(0))
    with pytest.raises(ValueError, match=r"shape mismatch at token_embed/mlp/\w+/kernel"):
        graft_stage1_params(fresh, other_size)
    with pytest.raises(ValueError, match="exactly the keys"):
        graft_stage1_params(fresh, {"params": stage1_params})
    with pytest.raises(ValueError, match="lack the stage-1 subtree 'head'"):
        graft_stage1_params({k: v for k, v in fresh.items() if k != "head"}, stage1_params)


def test_trainable_mask_settings(grafted):
    _, params = grafted
    for setting, expected in (("adapter", {"adapter"}), ("adapter+head", {"adapter", "head"}),
                              ("all", {"token_embed", "reg_token", "stack", "head", "adapter"})):
        mask = trainable_mask(unbox(params), setting)
        assert jax.tree.structure(mask) == jax.tree.structure(unbox(params))
        for key in params:
            leaves = jax.tree.leaves(mask[key])
            assert leaves and all(leaf == (key in expected) for leaf in leaves), (setting, key)
    boxed_mask = trainable_mask(params, "adapter")  # same structure as a boxed tree too
    assert jax.tree.structure(boxed_mask) == jax.tree.structure(params)
    with pytest.raises(ValueError, match="trainable must be one of"):
        trainable_mask(params, "backbone")
    with pytest.raises(ValueError, match="no 'adapter' subtree"):
        trainable_mask({"head": params["head"]}, "all")


# --------------------------------------------------------------------------- inputs and config


def test_input_errors(grafted):
    acfg, params = grafted
    context, cal, fut, _ = _batch()
    with pytest.raises(ValueError, match="data has 6 nodes but the node-embedding table has .*num_nodes = 5"):
        _apply(acfg, params, np.zeros((B, 40, 6), np.float32), cal, fut)
    with pytest.raises(ValueError, match=r"future_calendar lacks calendar features \['day_of_week'\]"):
        _apply(acfg, params, context, cal, {"time_of_day": fut["time_of_day"]})
    with pytest.raises(ValueError, match=r"context_calendar lacks calendar features \['time_of_day'\]"):
        _apply(acfg, params, context, {"day_of_week": cal["day_of_week"]}, fut)
    with pytest.raises(ValueError, match=r"future_calendar\['time_of_day'\] must be \[2, >= 12\]"):
        _apply(acfg, params, context, cal, {k: v[:, :6] for k, v in fut.items()})
    with pytest.raises(ValueError, match="needs 5 output patches"):
        _apply(acfg, params, context, cal, fut, horizon=65)


def test_adapter_config_validation_and_round_trip():
    acfg = AdapterConfig(num_nodes=7, calendar_features=(("time_of_day", 288), ("day_of_week", 7)))
    assert AdapterConfig.from_dict(json.loads(json.dumps(acfg.to_dict()))) == acfg
    assert AdapterConfig(num_nodes=3, calendar_features={"day_of_week": 7}).feature_names == ("day_of_week",)
    for bad, match in (
        ({"num_nodes": 0}, "num_nodes must be a positive int"),
        ({"num_nodes": 3, "dropout": 1.0}, "dropout must be in"),
        ({"num_nodes": 3, "prompt_attention": "sum"}, "prompt_attention must be one of"),
        ({"num_nodes": 3, "calendar_features": (("time_of_day", 0),)}, "calendar_features entries"),
        ({"num_nodes": 3, "calendar_features": (("a", 2), ("a", 3))}, "duplicate names"),
        ({"num_nodes": 3, "use_cpr": 1}, "use_cpr must be a bool"),
    ):
        with pytest.raises(ValueError, match=match):
            AdapterConfig(**bad)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['nodes'\]"):
        AdapterConfig.from_dict({"nodes": 3})
    with pytest.raises(ValueError, match="missing required key 'num_nodes'"):
        AdapterConfig.from_dict({})


def test_calendar_helpers():
    five_minute = np.arange(288)
    hours = calendar_slots(five_minute, steps_per_day=288, cycle=24)
    np.testing.assert_array_equal(hours, np.repeat(np.arange(24), 12))
    np.testing.assert_array_equal(calendar_slots(np.arange(24), 24, 24), np.arange(24))
    assert isinstance(calendar_slots(jnp.arange(3), 24, 24), jax.Array)
    # first step of each 16-step patch; the left-padded first patch takes the window's first step
    context = jnp.arange(100, 140)[None]  # 40 steps -> padded to 48: patches start at -8, 8, 24
    future = jnp.arange(140, 160)[None]
    slots = patch_calendar(context, future, patch_size=16, num_future_patches=2)
    np.testing.assert_array_equal(np.asarray(slots), [[100, 108, 124, 140, 156]])


# --------------------------------------------------------------------------- cost linear in N


def _abstract_forward(num_nodes):
    """The forward at N nodes with abstract params and context (nothing is initialised)."""
    acfg = AdapterConfig(num_nodes=num_nodes)
    params = unbox(jax.eval_shape(functools.partial(init_adapter_params, CFG, acfg), jax.random.key(0)))
    context, cal, fut, _ = _batch(num_nodes=num_nodes)
    fn = lambda p, x: STAdapterModel(CFG, acfg).apply({"params": p}, x, cal, fut, H)  # noqa: E731
    return fn, params, jax.ShapeDtypeStruct(context.shape, context.dtype)


def _all_avals(jaxpr):
    for eqn in jaxpr.eqns:
        yield from (v.aval for v in eqn.outvars)
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _all_avals(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _all_avals(sub)


def test_no_node_by_node_intermediate():
    n = 13  # a prime no other axis of this configuration has
    fn, params, context = _abstract_forward(n)
    closed = jax.make_jaxpr(fn)(params, context)
    shapes = [tuple(aval.shape) for aval in _all_avals(closed.jaxpr) if hasattr(aval, "shape")]
    assert any(n in shape for shape in shapes)  # the node axis is there...
    offending = [s for s in shapes
                 if sum(dim == n for dim in s) > 1 or any(dim > 0 and dim % (n * n) == 0 for dim in s)]
    assert not offending, offending[:5]  # ...but never twice, nor folded as N*N


def test_flops_linear_in_nodes():
    flops = []
    for num_nodes in (N, 2 * N):
        fn, params, context = _abstract_forward(num_nodes)
        cost = jax.jit(fn).lower(params, context).cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops.append(cost["flops"])
    assert 1.8 < flops[1] / flops[0] < 2.2, flops


# --------------------------------------------------------------------------- training


def test_adapter_training_steps(grafted):
    """AdamW on the adapter only (mask "adapter"), dropout on.

    Step 0: dropout is active (two keys, two losses) and every zero-initialised factor has a
    gradient, so step-0 equivalence does not freeze learning. After 20 steps the deterministic loss
    has fallen and the backbone is bit-identical.
    """
    acfg, params = grafted
    context, cal, fut, target = _batch()
    plain = unbox(params)
    labels = jax.tree.map(lambda m: "train" if m else "freeze", trainable_mask(plain, "adapter"))
    optimizer = optax.multi_transform({"train": optax.adamw(3e-2, weight_decay=0.01), "freeze": optax.set_to_zero()},
                                      labels)
    opt_state = optimizer.init(plain)
    model = STAdapterModel(CFG, acfg)
    median = CFG.quantile_levels.index(0.5)

    @jax.jit
    def step(p, s, key):
        def loss_fn(p):
            pred = model.apply({"params": p}, context, cal, fut, H, False, rngs={"dropout": key})[..., median]
            return jnp.mean(jnp.abs(pred - target))

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss, grads["adapter"]

    _, _, loss_a, grads = step(plain, opt_state, jax.random.key(100))
    _, _, loss_b, _ = step(plain, opt_state, jax.random.key(101))
    assert float(loss_a) != float(loss_b)
    for path in (("prompt_gate",), ("st_context", "stmf_kernel"), ("cpr", "time_of_day_out", "kernel")):
        leaf = grads
        for key in path:
            leaf = leaf[key]
        assert np.abs(np.asarray(leaf)).max() > 0, path

    def eval_loss(p):
        return float(np.mean(np.abs(np.asarray(_apply(acfg, p, context, cal, fut))[..., median] - target)))

    trained = plain
    for i in range(20):
        trained, opt_state, loss, _ = step(trained, opt_state, jax.random.key(i))
        assert np.isfinite(float(loss))
    before, after = eval_loss(plain), eval_loss(trained)
    assert after < 0.9 * before, (before, after)
    for key in ("token_embed", "reg_token", "stack", "head"):
        for a, b in zip(jax.tree.leaves(plain[key]), jax.tree.leaves(trained[key])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
