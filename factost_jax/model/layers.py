"""Building blocks of the FactoST-v2 encoder (spec §2.2 steps 5, 8-11), in flax.linen.

Every parameter is created through `nn.with_logical_partitioning` with names from this vocabulary
(mapped to mesh axes by the rules table in train/mesh.py):
  "embed" d_model, "mlp" ffn, "heads" attention heads, "kv" head_dim, "patch_in" the 2*patch token
  input, "quantile_out" Q*patch head output, "layers" the scanned layer axis (added by nn.scan).
Initialisation follows the reference code: xavier_uniform kernels (fans of the equivalent 2-D
torch Linear), zero biases, RMSNorm scale 1.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from factost_jax.model.config import ModelConfig

ACTIVATION_AXES = ("batch", "length", "embed")
HIDDEN_AXES = ("batch", "length", "mlp")
HEAD_AXES = ("batch", "length", "heads", "kv")


def compute_dtype_of(config: ModelConfig) -> jnp.dtype:
    return jnp.dtype(config.compute_dtype)


class Linear(nn.Module):
    """x @ kernel (+ bias), contracting the last `in_ndim` axes of x; kernel in float32.

    The kernel has shape x.shape[-in_ndim:] + features and is created at its full rank with
    xavier_uniform over (all input axes, all output axes), i.e. the fans of torch's
    Linear(prod(in), prod(features)). Creating it at full rank (rather than flat, then
    reshaped) keeps its logical names valid when a global mesh is set.

    Shapes: x [..., *in] -> [..., *features].
    """

    features: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    in_ndim: int = 1
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[-self.in_ndim :]
        in_axes = tuple(range(self.in_ndim))
        out_axes = tuple(range(self.in_ndim, self.in_ndim + len(self.features)))
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                nn.initializers.xavier_uniform(in_axis=in_axes, out_axis=out_axes), self.kernel_axes
            ),
            (*in_shape, *self.features),
            jnp.float32,
        )
        # One 2-D dot on flattened rows instead of tensordot on the N-D array: XLA:CPU then gives
        # the backward weight-gradient dots transposed-operand flags instead of separate transposing
        # fusions (1.1-1.4x faster training steps, docs/performance.md).
        lead_shape = x.shape[: x.ndim - self.in_ndim]
        rows = x.astype(self.dtype).reshape(-1, math.prod(in_shape))
        flat_kernel = kernel.astype(self.dtype).reshape(math.prod(in_shape), math.prod(self.features))
        y = (rows @ flat_kernel).reshape(*lead_shape, *self.features)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), self.kernel_axes[self.in_ndim :]),
                tuple(self.features),
                jnp.float32,
            )
            y = y + bias.astype(self.dtype)
        return y


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale over the last axis, computed in float32.

    `axis_name` is the logical name of the normalised axis ("embed" or "kv").
    """

    eps: float = 1e-6
    axis_name: str = "embed"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)),
            (x.shape[-1],),
            jnp.float32,
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (normed * scale).astype(self.dtype)


class GatedMLP(nn.Module):
    """down(sigmoid(gate(x)) * up(x)): the sigmoid GLU used everywhere in the model.

    Attributes:
      hidden_dim: intermediate width I.
      out_dim: output width.
      use_bias: the quantile head has biases; the token embedding and layer MLPs do not.
      in_axis / hidden_axis / out_axis: logical names of the input, hidden and output widths.
    Shapes: x [..., in] -> [..., out_dim].
    """

    hidden_dim: int
    out_dim: int
    use_bias: bool = False
    in_axis: str = "embed"
    hidden_axis: str = "mlp"
    out_axis: str = "embed"
    dtype: jnp.dtype = jnp.float32

    def _dense(self, features: int, names: tuple[str, str], name: str) -> Linear:
        return Linear((features,), names, use_bias=self.use_bias, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gate = self._dense(self.hidden_dim, (self.in_axis, self.hidden_axis), "gate_proj")(x)
        up = self._dense(self.hidden_dim, (self.in_axis, self.hidden_axis), "up_proj")(x)
        hidden = nn.sigmoid(gate) * up
        if hidden.ndim == 3:
            hidden = nn.with_logical_constraint(hidden, HIDDEN_AXES)
        return self._dense(self.out_dim, (self.hidden_axis, self.out_axis), "down_proj")(hidden)


def rope_tables(
    positions: jax.Array, head_dim: int, theta: float = 10000.0, unrotated_fraction: float = 0.25
) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables of partial (p-)RoPE in LLaMA rotate-half layout.

    Band i < head_dim/2 has inv_freq_i = theta^(-2i/head_dim); bands i >= int(head_dim/2 *
    (1 - unrotated_fraction)), i.e. the lowest frequencies, get cos = 1 and sin = 0 in both halves.

    Args:
      positions: [S] or [B, S] integer positions.
    Returns:
      (cos, sin), each [S, head_dim] or [B, S, head_dim], float32.
    """
    half = head_dim // 2
    rotated_bands = int(half * (1.0 - unrotated_fraction))
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    inv_freq = jnp.asarray(inv_freq, dtype=jnp.float32)
    angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq  # [..., S, half]
    is_rotated = jnp.arange(half) < rotated_bands
    cos = jnp.where(is_rotated, jnp.cos(angles), 1.0)
    sin = jnp.where(is_rotated, jnp.sin(angles), 0.0)
    return jnp.concatenate([cos, cos], axis=-1), jnp.concatenate([sin, sin], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on x [B, S, H, hd] with cos/sin [S, hd] or [B, S, hd]; float32 out."""
    x = x.astype(jnp.float32)
    cos = cos[..., None, :]  # broadcast over heads
    sin = sin[..., None, :]
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated_half = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated_half * sin


def masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis that gives exactly 0 (never NaN) for fully masked rows.

    Args:
      logits: [..., K] float32.
      mask: bool broadcastable to logits; False entries get probability 0.
    """
    very_negative = jnp.finfo(logits.dtype).min
    masked_logits = jnp.where(mask, logits, very_negative)
    row_max = jax.lax.stop_gradient(jnp.max(masked_logits, axis=-1, keepdims=True))
    weights = jnp.where(mask, jnp.exp(masked_logits - row_max), 0.0)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    return weights / jnp.where(total > 0, total, 1.0)


class GatedAttention(nn.Module):
    """Bidirectional multi-head attention with QK-norm, p-RoPE and a head-wise sigmoid output gate.

    q_proj: d -> H*2*hd, split per head into q (first hd) and gate (second hd); k_proj, v_proj:
    d -> H*hd; o_proj: H*hd -> d; no biases. The attention mask is valid_row AND valid_col, so
    padded queries attend to nothing and output exactly 0.

    Prefix tokens (stage-2 prompts, `num_prefix` > 0): the first `num_prefix` keys get their own
    softmax, whose probabilities are scaled per head by `prefix_gate` [H] and added to the regular
    softmax over the remaining keys (LLaMA-Adapter's zero-init attention). A gate of 0 therefore
    leaves every query's attention over the regular keys exactly as without the prefix.

    Shapes: x [B, S, d], valid [B, S] bool, cos/sin [S, hd] or [B, S, hd], prefix_gate [H] or None
    -> [B, S, d].
    """

    config: ModelConfig
    deterministic: bool = True
    num_prefix: int = 0

    @nn.compact
    def __call__(
        self, x: jax.Array, valid: jax.Array, cos: jax.Array, sin: jax.Array, prefix_gate: jax.Array | None = None
    ) -> jax.Array:
        cfg = self.config
        dtype = compute_dtype_of(cfg)
        heads, head_dim = cfg.num_heads, cfg.head_dim

        def projection(width: int, name: str) -> Linear:
            return Linear((heads, width), ("embed", "heads", "kv"), dtype=dtype, name=name)

        q_width = 2 * head_dim if cfg.gated_attention else head_dim
        q_and_gate = projection(q_width, "q_proj")(x)  # [B, S, H, q_width]
        q = q_and_gate[..., :head_dim]
        k = projection(head_dim, "k_proj")(x)
        v = projection(head_dim, "v_proj")(x)
        if cfg.qk_norm:
            q = RMSNorm(cfg.norm_eps, "kv", jnp.float32, name="q_norm")(q)
            k = RMSNorm(cfg.norm_eps, "kv", jnp.float32, name="k_norm")(k)
        q = apply_rope(q, cos, sin).astype(dtype)
        k = apply_rope(k, cos, sin).astype(dtype)
        q = nn.with_logical_constraint(q, HEAD_AXES)
        k = nn.with_logical_constraint(k, HEAD_AXES)

        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits / np.sqrt(head_dim).astype(np.float32)
        pair_mask = valid[:, None, :, None] & valid[:, None, None, :]  # [B, 1, S, S]
        if self.num_prefix:
            is_prefix_key = jnp.arange(logits.shape[-1]) < self.num_prefix
            prefix_probs = masked_softmax(logits, pair_mask & is_prefix_key)
            probs = masked_softmax(logits, pair_mask & ~is_prefix_key)
            probs = probs + prefix_gate.astype(jnp.float32)[None, :, None, None] * prefix_probs
        else:
            probs = masked_softmax(logits, pair_mask)
        probs = nn.Dropout(cfg.dropout)(probs, deterministic=self.deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v)
        if cfg.gated_attention:
            out = out * nn.sigmoid(q_and_gate[..., head_dim:])
        out = nn.with_logical_constraint(out, HEAD_AXES)
        return Linear((cfg.d_model,), ("heads", "kv", "embed"), in_ndim=2, dtype=dtype, name="o_proj")(out)


class EncoderLayer(nn.Module):
    """Pre-norm block: h + Drop(Attn(RMSNorm h)), then h + Drop(MLP(RMSNorm h)); no final norm.

    Written as a scan body: `(h [B, S, d], valid, cos, sin[, prefix_gate [H]]) -> (h, None)`;
    `num_prefix` / `prefix_gate` are passed to GatedAttention (stage-2 prompts).
    """

    config: ModelConfig
    deterministic: bool = True
    num_prefix: int = 0

    @nn.compact
    def __call__(
        self, h: jax.Array, valid: jax.Array, cos: jax.Array, sin: jax.Array, prefix_gate: jax.Array | None = None
    ) -> tuple[jax.Array, None]:
        cfg = self.config
        dtype = compute_dtype_of(cfg)
        h = nn.with_logical_constraint(h, ACTIVATION_AXES)
        attn_in = RMSNorm(cfg.norm_eps, "embed", dtype, name="attn_norm")(h)
        attn_out = GatedAttention(cfg, self.deterministic, self.num_prefix, name="attn")(
            attn_in, valid, cos, sin, prefix_gate
        )
        h = h + nn.Dropout(cfg.dropout)(attn_out, deterministic=self.deterministic)
        mlp_in = RMSNorm(cfg.norm_eps, "embed", dtype, name="mlp_norm")(h)
        mlp_out = GatedMLP(cfg.ffn_dim, cfg.d_model, dtype=dtype, name="mlp")(mlp_in)
        h = h + nn.Dropout(cfg.dropout)(mlp_out, deterministic=self.deterministic)
        return nn.with_logical_constraint(h.astype(dtype), ACTIVATION_AXES), None
