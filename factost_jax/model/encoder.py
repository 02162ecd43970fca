"""Stage 1 of FactoST-v2: the universal temporal encoder (spec §2.2, sizes §2.5).

context -> truncate -> InstanceNorm -> patches [values || mask] -> TokenEmbedding ->
[ctx_1..ctx_P, REG, fut_1..fut_F] -> scanned EncoderStack (bidirectional, p-RoPE) ->
QuantileHead on the F future tokens -> inverse InstanceNorm.

The parameter tree is exactly {token_embed, reg_token, stack, head}. The stage-2 adapter reuses the
same submodule classes under the same attribute names, so weight transfer is a pytree graft.

Quantile order: the head's raw output is NOT sorted along Q (the reference code trains the raw
outputs with pinball loss and never sorts). `rollout.forecast_quantiles` sorts along Q before
returning, so everything built on it sees monotone quantiles.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from factost_jax.model.config import ModelConfig
from factost_jax.model.layers import (
    ACTIVATION_AXES,
    EncoderLayer,
    GatedMLP,
    compute_dtype_of,
    rope_tables,
)
from factost_jax.trees import key_path_str, unbox  # noqa: F401  (unbox: re-exported for callers)

Params = Any  # a nested dict of arrays, optionally boxed in nn.LogicallyPartitioned


def instance_norm(
    x: jax.Array, mask: jax.Array, eps: float = 1e-5
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-series standardisation over the observed points, in float32 (spec §2.2 step 2).

    loc = nanmean(x) (0 when nothing is observed); scale = sqrt(nanmean((x - loc)^2)) (1 when
    nothing is observed, `eps` when it is 0). No affine part.

    Args:
      x: [B, L] values; entries where `mask` is False are ignored (they may be NaN).
      mask: [B, L] bool, True where observed.
    Returns:
      x_norm [B, L] float32 (0 where `mask` is False), loc [B, 1], scale [B, 1].
    """
    x = jnp.asarray(x, jnp.float32)
    observed = jnp.asarray(mask, bool)
    count = jnp.sum(observed, axis=-1, keepdims=True).astype(jnp.float32)
    has_data = count > 0
    safe_count = jnp.where(has_data, count, 1.0)
    x_observed = jnp.where(observed, x, 0.0)
    loc = jnp.where(has_data, jnp.sum(x_observed, axis=-1, keepdims=True) / safe_count, 0.0)
    centred = jnp.where(observed, x - loc, 0.0)
    scale = jnp.sqrt(jnp.sum(jnp.square(centred), axis=-1, keepdims=True) / safe_count)
    scale = jnp.where(has_data, scale, 1.0)
    scale = jnp.where(scale == 0, eps, scale)
    return jnp.where(observed, (x - loc) / scale, 0.0), loc, scale


def patchify(x: jax.Array, mask: jax.Array, patch_size: int) -> tuple[jax.Array, jax.Array]:
    """Right-aligned non-overlapping patches of `[values || mask]` (spec §2.2 step 3).

    The series is left-padded (as unobserved) to a multiple of `patch_size`, so the last patch
    always ends at the last time step. Unobserved values become 0.

    Args:
      x: [B, L] values (NaN allowed where `mask` is False).
      mask: [B, L] bool.
    Returns:
      patches [B, P, 2 * patch_size] float32 with P = ceil(L / patch_size), and
      patch_valid [B, P] bool (any observed point in the patch).
    """
    batch, length = x.shape
    pad = (-length) % patch_size
    observed = jnp.pad(jnp.asarray(mask, bool), ((0, 0), (pad, 0)), constant_values=False)
    values = jnp.pad(jnp.asarray(x, jnp.float32), ((0, 0), (pad, 0)))
    values = jnp.where(observed, values, 0.0)
    num_patches = (length + pad) // patch_size
    values = values.reshape(batch, num_patches, patch_size)
    observed = observed.reshape(batch, num_patches, patch_size)
    patches = jnp.concatenate([values, observed.astype(jnp.float32)], axis=-1)
    return patches, jnp.any(observed, axis=-1)


def prepare_context(
    context: jax.Array, context_mask: jax.Array | None, config: ModelConfig
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Steps 1-3 of §2.2: truncate, InstanceNorm, patchify.

    Non-finite values count as unobserved whatever the mask says.

    Args:
      context: [B, L] float, NaN where missing.
      context_mask: [B, L] bool or None (then ~isnan(context)).
    Returns:
      patches [B, P, 2*patch], patch_valid [B, P], loc [B, 1], scale [B, 1] with
      P = ceil(min(L, max_context_length) / patch).
    """
    context = jnp.asarray(context, jnp.float32)
    if context.ndim != 2 or context.shape[1] == 0:
        raise ValueError(f"context must have shape [batch, length>0], got {context.shape}")
    observed = jnp.isfinite(context)
    if context_mask is not None:
        context_mask = jnp.asarray(context_mask, bool)
        if context_mask.shape != context.shape:
            raise ValueError(f"context_mask shape {context_mask.shape} must equal context shape {context.shape}")
        observed = observed & context_mask
    keep = config.max_context_length
    context, observed = context[:, -keep:], observed[:, -keep:]
    x_norm, loc, scale = instance_norm(context, observed, config.instance_norm_eps)
    patches, patch_valid = patchify(x_norm, observed, config.patch_size)
    return patches, patch_valid, loc, scale


def _reg_token_init():
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), (None, None, "embed"))


def reg_token_param(module: nn.Module, config: ModelConfig) -> jax.Array:
    """Declares the learnable [REG] separator [1, 1, d] ~ N(0, 1) as param "reg_token" of `module`.

    Call from inside a compact method; the stage-2 adapter uses it so the name and init match.
    """
    return module.param("reg_token", _reg_token_init(), (1, 1, config.d_model), jnp.float32)


class TokenEmbedding(nn.Module):
    """Patch tokens: gated MLP 2*patch -> ffn -> d without biases, then dropout (§2.2 step 5).

    Shapes: patches [B, S, 2*patch] -> [B, S, d]. An all-zero placeholder embeds to exactly 0.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, patches: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        dtype = compute_dtype_of(cfg)
        h = GatedMLP(cfg.ffn_dim, cfg.d_model, use_bias=False, in_axis="patch_in", dtype=dtype, name="mlp")(
            patches.astype(dtype)
        )
        h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
        return nn.with_logical_constraint(h, ACTIVATION_AXES)


class EncoderStack(nn.Module):
    """`num_layers` EncoderLayers, params stacked on a leading "layers" axis (created under nn.scan).

    No final norm. `__call__(h [B, S, d], valid [B, S] bool, positions [S] or [B, S] int,
    deterministic, num_prefix=0, prefix_gates=None) -> [B, S, d]`.
    Stage 2 passes `num_prefix` > 0 (its prompts are the first tokens) with `prefix_gates`
    [num_layers, num_heads] (the adapter's own weights, one row per layer): see GatedAttention.
    The stack's parameters are the same with or without a prefix.

    `unroll`: apply the layers as straight-line code over the same stacked parameters instead of
    nn.scan (None: unrolled on the CPU backend, scanned elsewhere). On XLA:CPU a scanned backward
    reads each layer's saved activations back through dynamic slices of the stacked buffers, with
    transposing fusions XLA:CPU emits slowly; unrolled, every layer's residuals are buffers of their
    own: the tiny training step is 1.05x (batch 64) to 1.17x (batch 16) faster, the forward unchanged
    (docs/performance.md). Compile time grows with depth when unrolled, so accelerators keep the
    scan. Parameters, forecasts (to float rounding) and the init are the same either way; dropout
    draws each layer's key as fold_in(key, layer) unrolled, from nn.scan's split when scanned.
    """

    config: ModelConfig
    unroll: bool | None = None

    @nn.compact
    def __call__(
        self,
        h: jax.Array,
        valid: jax.Array,
        positions: jax.Array,
        deterministic: bool = True,
        num_prefix: int = 0,
        prefix_gates: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        gate_args: tuple[jax.Array, ...] = ()
        if num_prefix:
            if prefix_gates is None or tuple(prefix_gates.shape) != (cfg.num_layers, cfg.num_heads):
                shape = None if prefix_gates is None else tuple(prefix_gates.shape)
                raise ValueError(
                    f"EncoderStack: num_prefix={num_prefix} needs prefix_gates of shape "
                    f"({cfg.num_layers}, {cfg.num_heads}), got {shape}"
                )
            gate_args = (jnp.asarray(prefix_gates, jnp.float32),)
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, cfg.rope_unrotated_fraction)
        h, valid = h.astype(compute_dtype_of(cfg)), jnp.asarray(valid, bool)
        unroll = jax.default_backend() == "cpu" if self.unroll is None else self.unroll
        if unroll and not self.is_initializing():  # init always scans: it creates the stacked params
            return self._unrolled(h, valid, cos, sin, deterministic, int(num_prefix), gate_args)
        layer_cls = nn.remat(EncoderLayer, prevent_cse=False) if cfg.remat else EncoderLayer
        scanned = nn.scan(
            layer_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast) + (0,) * len(gate_args),
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        h, _ = scanned(cfg, deterministic, int(num_prefix), name="layers")(h, valid, cos, sin, *gate_args)
        return h

    def _unrolled(
        self,
        h: jax.Array,
        valid: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        deterministic: bool,
        num_prefix: int,
        gate_args: tuple[jax.Array, ...],
    ) -> jax.Array:
        """The layers one after the other, layer i on params["layers"][..][i] (static slices)."""
        cfg = self.config
        stacked = unbox(self.variables["params"]["layers"])
        layer = EncoderLayer(cfg, deterministic, num_prefix)

        def apply_layer(params: Params, h: jax.Array, rngs: dict[str, jax.Array] | None, *gates: jax.Array):
            return layer.apply({"params": params}, h, valid, cos, sin, *gates, rngs=rngs)[0]

        if cfg.remat:
            apply_layer = jax.checkpoint(apply_layer)
        dropout_key = None if deterministic else self.make_rng("dropout")
        for index in range(cfg.num_layers):
            params = jax.tree.map(lambda leaf: leaf[index], stacked)
            rngs = None if dropout_key is None else {"dropout": jax.random.fold_in(dropout_key, index)}
            h = apply_layer(params, h, rngs, *(gates[index] for gates in gate_args))
        return h


class QuantileHead(nn.Module):
    """Gated MLP with biases d -> ffn -> Q*patch on the future tokens (§2.2 step 11).

    Shapes: h [B, F, d] -> [B, F*patch, Q] float32 in normalised units. The last-axis layout of
    the MLP output is position-major (index t*Q + q), so a reshape (B, F, patch, Q) recovers it.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        cfg = self.config
        out = GatedMLP(
            cfg.ffn_dim,
            cfg.patch_size * cfg.num_quantiles,
            use_bias=True,
            out_axis="quantile_out",
            dtype=compute_dtype_of(cfg),
            name="mlp",
        )(h)
        batch, num_future, _ = out.shape
        return out.astype(jnp.float32).reshape(batch, num_future * cfg.patch_size, cfg.num_quantiles)


def assemble_tokens(
    context_tokens: jax.Array, reg_token: jax.Array, future_tokens: jax.Array, patch_valid: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """[ctx_1..ctx_P, REG, fut_1..fut_F] and its validity (REG and future always valid).

    Shapes: context_tokens [B, P, d], reg_token [1, 1, d], future_tokens [B, F, d],
    patch_valid [B, P] -> tokens [B, P+1+F, d], valid [B, P+1+F].
    """
    batch = context_tokens.shape[0]
    num_future = future_tokens.shape[1]
    reg = jnp.broadcast_to(reg_token.astype(context_tokens.dtype), (batch, 1, context_tokens.shape[-1]))
    tokens = jnp.concatenate([context_tokens, reg, future_tokens.astype(context_tokens.dtype)], axis=1)
    valid = jnp.concatenate([patch_valid, jnp.ones((batch, 1 + num_future), bool)], axis=1)
    return tokens, valid


class Encoder(nn.Module):
    """The stage-1 model. Parameter tree: {token_embed, reg_token, stack, head}.

    `__call__(context [B, L] float (NaN = missing), context_mask [B, L] bool or None,
    num_output_patches F (static int, 1..max_output_patches), deterministic=True)
    -> quantiles [B, F*patch, Q]` in the input's units (raw head order, not sorted along Q).
    """

    config: ModelConfig
    unroll: bool | None = None  # EncoderStack.unroll: None = unrolled on CPU, scanned elsewhere

    def setup(self) -> None:
        self.token_embed = TokenEmbedding(self.config)
        self.reg_token = self.param("reg_token", _reg_token_init(), (1, 1, self.config.d_model), jnp.float32)
        self.stack = EncoderStack(self.config, unroll=self.unroll)
        self.head = QuantileHead(self.config)

    def __call__(
        self,
        context: jax.Array,
        context_mask: jax.Array | None,
        num_output_patches: int,
        deterministic: bool = True,
    ) -> jax.Array:
        cfg = self.config
        check_num_output_patches(num_output_patches, cfg)
        patches, patch_valid, loc, scale = prepare_context(context, context_mask, cfg)
        batch, num_context = patch_valid.shape
        placeholders = jnp.zeros((batch, num_output_patches, 2 * cfg.patch_size), jnp.float32)
        embedded = self.token_embed(jnp.concatenate([patches, placeholders], axis=1), deterministic)
        tokens, valid = assemble_tokens(
            embedded[:, :num_context], self.reg_token, embedded[:, num_context:], patch_valid
        )
        positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)
        hidden = self.stack(tokens, valid, positions, deterministic)
        normalised = self.head(hidden[:, -num_output_patches:])
        return normalised * scale[:, :, None] + loc[:, :, None]


def check_num_output_patches(num_output_patches: int, config: ModelConfig) -> None:
    if (
        isinstance(num_output_patches, bool)
        or not isinstance(num_output_patches, int | np.integer)
        or not 1 <= num_output_patches <= config.max_output_patches
    ):
        raise ValueError(
            f"num_output_patches must be a python int in [1, {config.max_output_patches}], got {num_output_patches!r}"
        )


def init_params(
    config: ModelConfig, rng: jax.Array, batch_size: int = 2, context_len: int | None = None
) -> Params:
    """Fresh parameters {token_embed, reg_token, stack, head}, boxed in nn.LogicallyPartitioned.

    Pure and jittable (e.g. `jax.jit(functools.partial(init_params, config), out_shardings=...)`).
    Shapes of the parameters do not depend on `batch_size` / `context_len` (default: 2 patches).
    """
    context_len = 2 * config.patch_size if context_len is None else context_len
    context = jnp.zeros((batch_size, context_len), jnp.float32)
    variables = Encoder(config).init({"params": rng}, context, None, 1, True)
    return variables["params"]


def abstract_params(config: ModelConfig) -> Params:
    """Boxed parameter tree of jax.ShapeDtypeStruct (no allocation), e.g. for shardings or counting."""
    return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))


def host_random_params(abstract_tree: Any, seed: int = 0, std: float = 0.02) -> Any:
    """Host float32 arrays shaped like a plain (unboxed) abstract tree: leaves named *scale 1, *bias 0,
    the rest N(0, std^2). Drawn in numpy, so no init program compiles: for tests and benchmarks
    whose weights' values do not matter."""
    rng = np.random.default_rng(seed)
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_tree)
    leaves = []
    for key_path, leaf in flat:
        name = key_path_str(key_path)
        if name.endswith("scale"):
            leaves.append(np.ones(leaf.shape, np.float32))
        elif name.endswith("bias"):
            leaves.append(np.zeros(leaf.shape, np.float32))
        else:
            leaves.append(rng.normal(0.0, std, leaf.shape).astype(np.float32))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def count_params(params: Params) -> int:
    """Number of scalars in a (boxed or plain, concrete or abstract) parameter tree."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(unbox(params))))


# An empty fusion-type list turns YNNPACK fusion off (the enum's INVALID value does too, but logs an error line).
CPU_INFERENCE_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.lru_cache(maxsize=32)
def jitted_apply(config: ModelConfig):
    """The compiled deterministic forward for `config`, cached so each config is jitted once.

    `fn(params (plain), context [B, L], context_mask [B, L], num_output_patches) -> [B, F*patch, Q]`;
    its `_cache_size()` counts the programs compiled so far.
    """
    model = Encoder(config)

    def forward(params: Params, context: jax.Array, context_mask: jax.Array, num_output_patches: int) -> jax.Array:
        return model.apply({"params": params}, context, context_mask, num_output_patches, True)

    # On CPU, inference runs 11-16 % faster without XLA's YNNPACK fusions (docs/performance.md);
    # training keeps them (they are 25 % faster there), so this is set per program, not process-wide.
    options = CPU_INFERENCE_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(forward, static_argnames="num_output_patches", compiler_options=options)


def predict(
    params: Params,
    config: ModelConfig,
    context: jax.Array,
    context_mask: jax.Array | None,
    num_output_patches: int,
) -> jax.Array:
    """Deterministic forward pass (no dropout): quantiles [B, F*patch, Q] in the input's units.

    Args:
      params: boxed or plain parameter tree.
      context: [B, L] float, NaN where missing.
      context_mask: [B, L] bool or None (then ~isnan(context)).
      num_output_patches: F, a python int in [1, max_output_patches].
    """
    check_num_output_patches(num_output_patches, config)
    context = jnp.asarray(context, jnp.float32)
    if context_mask is None:
        context_mask = jnp.isfinite(context)
    return jitted_apply(config)(unbox(params), context, jnp.asarray(context_mask, bool), int(num_output_patches))
