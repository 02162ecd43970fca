"""Stage-1 encoder: config, layers, parameter counts, forward-pass invariances."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factost_jax.model import encoder as enc
from factost_jax.model import layers
from factost_jax.model.config import MODEL_SIZES, ModelConfig, model_config

LOGICAL_AXES = {"embed", "mlp", "heads", "kv", "patch_in", "quantile_out", "layers"}


@pytest.fixture(scope="module")
def debug_config() -> ModelConfig:
    return model_config("debug")


@pytest.fixture(scope="module")
def boxed_params(debug_config):
    return enc.init_params(debug_config, jax.random.key(0))


@pytest.fixture(scope="module")
def params(boxed_params):
    return enc.unbox(boxed_params)


def _random_context(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    context = (rng.standard_normal((batch, length)) * 3.0 + 10.0).astype(np.float32)
    context[rng.random((batch, length)) < 0.2] = np.nan
    return context


# ----------------------------------------------------------------------------- config


def test_config_json_round_trip(debug_config):
    as_json = json.dumps(debug_config.to_dict())
    assert ModelConfig.from_dict(json.loads(as_json)) == debug_config
    assert hash(ModelConfig.from_dict(json.loads(as_json))) == hash(debug_config)


def test_config_rejects_unknown_and_missing_keys(debug_config):
    values = debug_config.to_dict() | {"d_modle": 3, "zzz": 1}
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['d_modle', 'zzz'\]"):
        ModelConfig.from_dict(values)
    values = debug_config.to_dict()
    del values["num_heads"]
    with pytest.raises(ValueError, match="missing required keys.*num_heads"):
        ModelConfig.from_dict(values)
    with pytest.raises(ValueError, match="unknown override keys"):
        model_config("tiny", width=3)
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        model_config("huge")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_heads": 3}, "divisible by num_heads"),
        ({"d_model": 30, "num_heads": 2}, "must be even"),
        ({"quantile_levels": (0.1, 0.9)}, "must contain 0.5"),
        ({"quantile_levels": (0.5, 0.1)}, "strictly increasing"),
        ({"quantile_levels": (0.0, 0.5)}, "strictly inside"),
        ({"d_model": 0}, "d_model must be a positive int"),
        ({"dropout": 1.0}, "dropout"),
        ({"compute_dtype": "float16"}, "compute_dtype"),
        ({"rope_unrotated_fraction": 1.5}, "rope_unrotated_fraction"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        model_config("debug", **overrides)


def test_named_sizes_match_the_spec():
    expected = {"minuscule": (192, 768, 3, 3), "tiny": (256, 1024, 3, 4), "small": (384, 1536, 4, 6),
                "base": (512, 2048, 6, 8)}
    for name, (d, ffn, num_layers, heads) in expected.items():
        cfg = MODEL_SIZES[name]
        assert (cfg.d_model, cfg.ffn_dim, cfg.num_layers, cfg.num_heads) == (d, ffn, num_layers, heads)
        assert (cfg.patch_size, cfg.max_context_patches, cfg.max_output_patches) == (16, 128, 16)
    assert model_config("tiny", dropout=0.2).dropout == 0.2


# ----------------------------------------------------------------------------- params


def test_exact_parameter_counts():
    expected = {"minuscule": 2_510_192, "tiny": 4_378_928, "small": 12_172_336, "base": 30_387_632}
    for name, count in expected.items():
        assert enc.count_params(enc.abstract_params(MODEL_SIZES[name])) == count, name


def test_param_tree_and_logical_axis_names(boxed_params, debug_config):
    assert set(boxed_params) == {"token_embed", "reg_token", "stack", "head"}
    boxed_leaves = jax.tree.leaves_with_path(boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert len(boxed_leaves) == len(jax.tree.leaves(enc.unbox(boxed_params)))
    for path, leaf in boxed_leaves:
        name = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), name
        assert len(leaf.names) == leaf.value.ndim, name
        named = {axis for axis in leaf.names if axis is not None}
        assert named and named <= LOGICAL_AXES, (name, leaf.names)
        if name.startswith("['stack']"):
            assert leaf.names[0] == "layers" and leaf.value.shape[0] == debug_config.num_layers, name
        assert leaf.value.dtype == jnp.float32, name


def test_initialisation(params, debug_config):
    stack = params["stack"]["layers"]
    np.testing.assert_array_equal(stack["attn_norm"]["scale"], 1.0)
    np.testing.assert_array_equal(stack["attn"]["q_norm"]["scale"], 1.0)
    np.testing.assert_array_equal(params["head"]["mlp"]["down_proj"]["bias"], 0.0)
    # xavier_uniform bound for the q projection d -> 2*H*hd.
    q_kernel = stack["attn"]["q_proj"]["kernel"]
    d = debug_config.d_model
    bound = np.sqrt(6.0 / (d + 2 * d))
    assert np.abs(q_kernel).max() <= bound and np.abs(q_kernel).max() > 0.8 * bound
    o_kernel = stack["attn"]["o_proj"]["kernel"]  # [layers, H, hd, d]: fans H*hd and d
    o_bound = np.sqrt(6.0 / (2 * d))
    assert np.abs(o_kernel).max() <= o_bound and np.abs(o_kernel).max() > 0.8 * o_bound
    # separate layers get separate initial weights under nn.scan
    assert not np.allclose(q_kernel[0], q_kernel[1])
    assert 0.3 < float(np.std(params["reg_token"])) < 3.0


def test_unrolled_stack_computes_what_the_scan_computes(params, debug_config):
    """EncoderStack.unroll (the CPU default) over the same stacked params: same output and parameter
    gradient as nn.scan; same output with stage-2 prefix tokens."""
    rng = np.random.default_rng(5)
    h = jnp.asarray(rng.standard_normal((2, 7, debug_config.d_model)), jnp.float32)
    valid = jnp.ones((2, 7), bool).at[0, :2].set(False)
    positions = jnp.arange(7)
    gates = jnp.asarray(rng.uniform(size=(debug_config.num_layers, debug_config.num_heads)), jnp.float32)

    def run(stack_params, unroll, num_prefix):
        stack = enc.EncoderStack(debug_config, unroll=unroll)
        out = stack.apply({"params": stack_params}, h, valid, positions, True, num_prefix,
                          gates if num_prefix else None)
        return jnp.sum(out * out), out

    loss_and_grad = jax.jit(jax.value_and_grad(run, has_aux=True), static_argnums=(1, 2))
    (_, scanned), scanned_grad = loss_and_grad(params["stack"], False, 0)
    (_, unrolled), unrolled_grad = loss_and_grad(params["stack"], True, 0)
    np.testing.assert_allclose(unrolled, scanned, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), unrolled_grad, scanned_grad)
    np.testing.assert_allclose(run(params["stack"], True, 2)[1], run(params["stack"], False, 2)[1], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- pure pieces


def test_instance_norm_statistics():
    x = jnp.array([[1.0, np.nan, 3.0, 5.0], [np.nan] * 4, [2.0, 2.0, np.nan, 2.0]])
    mask = jnp.isfinite(x)
    normed, loc, scale = enc.instance_norm(x, mask, eps=1e-5)
    np.testing.assert_allclose(loc[:, 0], [3.0, 0.0, 2.0])
    np.testing.assert_allclose(scale[:, 0], [np.sqrt(8.0 / 3.0), 1.0, 1e-5], rtol=1e-6)
    np.testing.assert_allclose(normed[0], [-2 / np.sqrt(8 / 3), 0.0, 0.0, 2 / np.sqrt(8 / 3)], rtol=1e-6)
    assert np.isfinite(normed).all()


def test_patchify_left_pads_and_stacks_values_and_mask():
    x = jnp.arange(1.0, 21.0)[None]  # 20 steps, patch 8 -> 4 padded steps on the left
    mask = jnp.ones_like(x, bool).at[0, 19].set(False)
    patches, valid = enc.patchify(x, mask, 8)
    assert patches.shape == (1, 3, 16)
    np.testing.assert_array_equal(patches[0, 0, :8], [0, 0, 0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(patches[0, 0, 8:], [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(patches[0, 2, :8], [13, 14, 15, 16, 17, 18, 19, 0])
    np.testing.assert_array_equal(patches[0, 2, 8:], [1, 1, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(valid, [[True, True, True]])
    _, valid = enc.patchify(jnp.zeros((1, 16)), jnp.zeros((1, 16), bool).at[0, 15].set(True), 8)
    np.testing.assert_array_equal(valid, [[False, True]])


def test_p_rope_leaves_lowest_frequency_quarter_unrotated():
    head_dim, positions = 64, jnp.arange(7)
    cos, sin = layers.rope_tables(positions, head_dim, 10000.0, 0.25)
    assert cos.shape == sin.shape == (7, head_dim)
    half, keep = head_dim // 2, int(head_dim // 2 * 0.75)
    inv_freq = 10000.0 ** (-2.0 * np.arange(half) / head_dim)
    angles = np.arange(7)[:, None] * inv_freq
    for start in (0, half):  # both halves of the rotate-half layout
        np.testing.assert_allclose(cos[:, start : start + keep], np.cos(angles[:, :keep]), atol=1e-5)
        np.testing.assert_allclose(sin[:, start : start + keep], np.sin(angles[:, :keep]), atol=1e-5)
        np.testing.assert_array_equal(cos[:, start + keep : start + half], 1.0)
        np.testing.assert_array_equal(sin[:, start + keep : start + half], 0.0)
    assert keep == 24 and not np.allclose(cos[1:, keep - 1], 1.0)
    # batched positions give per-row tables
    cos_b, _ = layers.rope_tables(jnp.stack([positions, positions + 3]), head_dim)
    np.testing.assert_allclose(cos_b[1, 0], cos[3], atol=1e-6)


def test_rope_depends_only_on_relative_position():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, 1, 2, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, 2, 16)), jnp.float32)

    def score(pos_q, pos_k):
        cq, sq = layers.rope_tables(jnp.array([pos_q]), 16)
        ck, sk = layers.rope_tables(jnp.array([pos_k]), 16)
        return jnp.sum(layers.apply_rope(q, cq, sq) * layers.apply_rope(k, ck, sk), axis=-1)

    np.testing.assert_allclose(score(5, 2), score(45, 42), atol=1e-4)
    assert not np.allclose(score(5, 2), score(5, 4), atol=1e-3)


def test_masked_softmax_is_zero_on_fully_masked_rows_and_has_finite_gradients():
    logits = jnp.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    mask = jnp.array([[True, False, True], [False, False, False]])
    probs = layers.masked_softmax(logits, mask)
    np.testing.assert_allclose(probs[0], jax.nn.softmax(jnp.array([1.0, -jnp.inf, 3.0])), atol=1e-7)
    np.testing.assert_array_equal(probs[1], 0.0)
    grad = jax.grad(lambda z: jnp.sum(layers.masked_softmax(z, mask) * jnp.arange(3.0)))(logits)
    assert np.isfinite(grad).all()


def test_attention_outputs_zero_for_padded_queries(debug_config):
    attention = layers.GatedAttention(debug_config)
    x = jax.random.normal(jax.random.key(1), (2, 5, debug_config.d_model))
    valid = jnp.array([[False, False, True, True, True], [False] * 5])
    cos, sin = layers.rope_tables(jnp.arange(5), debug_config.head_dim)
    variables = attention.init(jax.random.key(2), x, valid, cos, sin)
    apply = jax.jit(attention.apply)
    out = apply(variables, x, valid, cos, sin)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0, :2], 0.0)
    np.testing.assert_array_equal(out[1], 0.0)
    assert np.abs(out[0, 2:]).min() > 0
    # a masked key cannot influence valid queries
    x_changed = x.at[0, 0].set(100.0)
    np.testing.assert_allclose(apply(variables, x_changed, valid, cos, sin)[0, 2:], out[0, 2:], atol=1e-6)


def test_future_placeholders_embed_to_exact_zero(params, debug_config):
    zeros = jnp.zeros((2, 3, 2 * debug_config.patch_size))
    embedded = enc.TokenEmbedding(debug_config).apply({"params": params["token_embed"]}, zeros)
    np.testing.assert_array_equal(embedded, 0.0)


def test_quantile_head_layout_is_position_major(params, debug_config):
    h = jax.random.normal(jax.random.key(3), (2, 3, debug_config.d_model))
    out = enc.QuantileHead(debug_config).apply({"params": params["head"]}, h)
    q, patch = debug_config.num_quantiles, debug_config.patch_size
    raw = layers.GatedMLP(debug_config.ffn_dim, patch * q, use_bias=True, out_axis="quantile_out").apply(
        {"params": params["head"]["mlp"]}, h
    )
    assert out.shape == (2, 3 * patch, q)
    for f, t, level in [(0, 0, 0), (1, 5, 3), (2, 15, q - 1)]:
        np.testing.assert_allclose(out[1, f * patch + t, level], raw[1, f, t * q + level], rtol=1e-6)


# ----------------------------------------------------------------------------- forward pass


@pytest.mark.parametrize("length, num_output_patches", [(1, 1), (50, 2), (200, 4)])
def test_output_shapes(params, debug_config, length, num_output_patches):
    context = _random_context(np.random.default_rng(length), 3, length)
    out = enc.predict(params, debug_config, context, None, num_output_patches)
    assert out.shape == (3, num_output_patches * 16, debug_config.num_quantiles)
    assert out.dtype == jnp.float32 and np.isfinite(out).all()


def test_num_output_patches_is_checked(params, debug_config):
    for bad in (0, debug_config.max_output_patches + 1, 2.0):
        with pytest.raises(ValueError, match="num_output_patches"):
            enc.predict(params, debug_config, np.zeros((1, 16), np.float32), None, bad)
    with pytest.raises(ValueError, match="context_mask shape"):
        enc.predict(params, debug_config, np.zeros((1, 16), np.float32), np.ones((1, 15), bool), 1)


def test_extra_left_nan_padding_never_changes_the_prediction(params, debug_config):
    context = _random_context(np.random.default_rng(0), 4, 37)
    reference = enc.predict(params, debug_config, context, None, 2)
    for pad in (16, 59):  # one whole patch; a misaligned shift over several
        padded = np.concatenate([np.full((4, pad), np.nan, np.float32), context], axis=1)
        np.testing.assert_allclose(enc.predict(params, debug_config, padded, None, 2), reference, atol=2e-5)


def test_context_mask_and_truncation(params, debug_config):
    rng = np.random.default_rng(1)
    context = _random_context(rng, 2, 300)
    reference = enc.predict(params, debug_config, context, None, 1)
    # points the mask hides are ignored, whatever their value
    hidden = np.where(np.isnan(context), 1e6, context).astype(np.float32)
    np.testing.assert_allclose(enc.predict(params, debug_config, hidden, ~np.isnan(context), 1), reference, atol=1e-5)
    # only the last max_context_patches * patch points matter
    tail = context[:, -debug_config.max_context_length :]
    np.testing.assert_allclose(enc.predict(params, debug_config, tail, None, 1), reference, atol=1e-6)


def test_instance_norm_equivariance(params, debug_config):
    context = _random_context(np.random.default_rng(2), 3, 70)
    reference = enc.predict(params, debug_config, context, None, 3)
    for a, b in [(2.5, -7.0), (0.01, 100.0)]:
        out = enc.predict(params, debug_config, a * context + b, None, 3)
        np.testing.assert_allclose(out, a * reference + b, rtol=1e-4, atol=1e-4 * (abs(b) + a))


def test_fully_missing_contexts_give_finite_forecasts(params, debug_config):
    context = _random_context(np.random.default_rng(3), 3, 40)
    context[1] = np.nan
    context[2, :-1] = np.nan  # a single observed point: scale 0 -> eps
    out = enc.predict(params, debug_config, context, None, 2)
    assert np.isfinite(out).all()

    @jax.jit
    def loss_grad(p):
        return jax.grad(lambda q: jnp.mean(enc.Encoder(debug_config).apply({"params": q}, context, None, 2) ** 2))(p)

    assert all(np.isfinite(g).all() for g in jax.tree.leaves(loss_grad(params)))


def test_dropout_is_active_only_when_not_deterministic(params, debug_config):
    model = enc.Encoder(debug_config)
    context = _random_context(np.random.default_rng(4), 2, 48)
    deterministic = enc.predict(params, debug_config, context, None, 1)
    with_dropout = jax.jit(lambda p, key: model.apply({"params": p}, context, None, 1, False, rngs={"dropout": key}))
    drop_a, drop_b = with_dropout(params, jax.random.key(0)), with_dropout(params, jax.random.key(1))
    assert not np.allclose(drop_a, deterministic) and not np.allclose(drop_a, drop_b)
    np.testing.assert_allclose(enc.predict(params, debug_config, context, None, 1), deterministic)


def test_remat_and_bfloat16_variants(params, debug_config):
    context = _random_context(np.random.default_rng(5), 2, 48)
    reference = enc.predict(params, debug_config, context, None, 1)
    remat_config = dataclasses.replace(debug_config, remat=True)
    np.testing.assert_allclose(enc.predict(params, remat_config, context, None, 1), reference, atol=1e-5)
    bf16_config = dataclasses.replace(debug_config, compute_dtype="bfloat16")
    bf16_params = enc.abstract_params(bf16_config)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(enc.unbox(bf16_params)))
    out = enc.predict(params, bf16_config, context, None, 1)
    assert out.dtype == jnp.float32 and np.isfinite(out).all()
    scale = np.abs(reference).max()
    np.testing.assert_allclose(out, reference, atol=0.1 * scale + 0.1)
    assert not np.array_equal(out, reference)


def test_predict_compiles_once_per_shape(params, debug_config):
    forward = enc.jitted_apply(debug_config)
    context = _random_context(np.random.default_rng(6), 2, 33)
    enc.predict(params, debug_config, context, None, 1)
    compiled = forward._cache_size()
    for seed in range(3):
        enc.predict(params, debug_config, _random_context(np.random.default_rng(seed), 2, 33), None, 1)
    assert forward._cache_size() == compiled
