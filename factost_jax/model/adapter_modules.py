"""The stage-2 adapter's sub-modules (spec §3.2): CPR, STMF + STF, DSPA prompts, and `STAdapter`, which
holds them as the "adapter" subtree of `STAdapterModel` (model/adapter.py).

Module, attribute and parameter names here are checkpoint paths (adapter/cpr/time_of_day_value/kernel,
adapter/st_context/node_embed, ...): renaming one breaks every stage-2 checkpoint. Every op is per
node or per (node, patch), so cost and memory are linear in N.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from factost_jax.model.adapter_config import AdapterConfig
from factost_jax.model.config import ModelConfig

# Logical axes of the per-node activations [B, N, S, d]: "nodes" is what stage 2 may shard
# (train/mesh.py's rules, mesh.nodes_axis).
NODE_AXES = ("batch", "nodes", "length", "embed")


def _shift_patches(x: jax.Array, lag: int) -> jax.Array:
    """x^{(-lag)}: x delayed by `lag` patches along axis 2 of [B, N, S, d], zeros shifted in."""
    return jnp.pad(x, ((0, 0), (0, 0), (lag, 0), (0, 0)))[:, :, : x.shape[2]]


def _init(init_fn, names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(init_fn, names)


def _dense(features: int, in_name: str, out_name: str, name: str, zero: bool = False) -> nn.Dense:
    kernel_init = nn.initializers.zeros_init() if zero else nn.initializers.xavier_uniform()
    return nn.Dense(
        features,
        kernel_init=_init(kernel_init, (in_name, out_name)),
        bias_init=_init(nn.initializers.zeros_init(), (out_name,)),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        name=name,
    )


class CyclicPrototypeRefinement(nn.Module):
    """CPR in its effective form: z <- z + W_o(Dropout(W_v z + b_v)) + b_o, once per calendar feature.

    The reference runs, per feature f, a 4-head MHA whose query is a learnable table Q_f[slot] and
    whose key/value set is the single token z itself. A softmax over one key is identically 1, so
    the query table Q_f and the W_q/W_k projections have no effect on the output or on any gradient;
    they are omitted. What remains is W_v, W_o with biases (2d^2 + 2d per feature: 263,168 for the
    tiny size with tod + dow, instead of ~534k in spec §3.3). Attention-probability dropout on the
    single weight drops (or rescales) W_v z per head. W_o and b_o start at 0, so CPR starts as the
    identity and W_o receives the gradient (W_v z + b_v) at step 0.

    Shapes: z [B, N, S, d] -> [B, N, S, d].
    """

    feature_names: tuple[str, ...]
    num_heads: int
    dropout: float

    @nn.compact
    def __call__(self, z: jax.Array, deterministic: bool) -> jax.Array:
        d_model = z.shape[-1]
        if d_model % self.num_heads:
            raise ValueError(
                f"CPR: d_model {d_model} must be divisible by AdapterConfig.cpr_num_heads {self.num_heads}"
            )
        for name in self.feature_names:
            value = _dense(d_model, "embed", "cpr_hidden", f"{name}_value")(z)
            value = value.reshape(*value.shape[:-1], self.num_heads, d_model // self.num_heads)
            value = nn.Dropout(self.dropout, broadcast_dims=(value.ndim - 1,))(value, deterministic=deterministic)
            value = value.reshape(*value.shape[:-2], d_model)
            z = z + _dense(d_model, "cpr_hidden", "embed", f"{name}_out", zero=True)(value)
            z = nn.with_logical_constraint(z, NODE_AXES)
        return z


class SpatioTemporalContext(nn.Module):
    """STMF (+ STF): the per-(node, patch) metadata context I_st added to every token.

    STMF: I_st[b, n, p] = Linear_{(1+n_feat)*E -> d}(concat[E_node[n], E_f[slot_f[b, p]] ...]),
    evaluated as W_node E_node[n] + sum_f W_f E_f[slot] + b (the same Linear, split by input block,
    so nothing of size N x patches x (1+n_feat)*E is built). The reference averages over the patch
    length, but the slot is constant inside a patch, so the mean is the value itself. The Linear is
    zero-initialised, so I_st = 0 at init.

    STF (when `use_filtering`):
      S_s = <I_st, node_proj(E_node[n])>,  S_t = <I_st, temporal_proj(sum_f E_f[slot_f])>,
      S_d = sum_k softplus(gamma_k) <I_st, softmax(I_st^{(-k)} M^T) M>,  k = 1..K,
    with I_st^{(-k)} delayed by k patches (zeros shifted in) and prototypes M [n_proto, d];
    w = softmax([a_s, a_t, a_d]) (a = 0 at init); I_st <- I_st * sigmoid(w_s S_s + w_t S_t + w_d S_d).
    gamma starts at 1 (the reference's later uniform re-init is not recoverable; see spec §3.2).

    Shapes: slots {name: [B, S] int (already mod cycle)}, batch B, num_tokens S -> I_st [B, N, S, d].
    """

    num_nodes: int
    calendar_features: tuple[tuple[str, int], ...]
    embedding_dim: int
    d_model: int
    max_delay: int
    num_prototypes: int
    use_filtering: bool

    @nn.compact
    def __call__(self, slots: Mapping[str, jax.Array], batch: int, num_tokens: int) -> jax.Array:
        width, d_model = self.embedding_dim, self.d_model
        num_features = len(self.calendar_features)
        node_table = self.param("node_embed", _init(nn.initializers.xavier_uniform(), ("nodes", "adapter_embed")),
                                (self.num_nodes, width), jnp.float32)
        calendar_embeds = [
            self.param(f"{name}_embed", _init(nn.initializers.xavier_uniform(), ("calendar", "adapter_embed")),
                       (cycle, width), jnp.float32)[slots[name]]
            for name, cycle in self.calendar_features
        ]  # each [B, S, E]
        kernel = self.param("stmf_kernel", _init(nn.initializers.zeros_init(), ("adapter_in", "embed")),
                            ((1 + num_features) * width, d_model), jnp.float32)
        bias = self.param("stmf_bias", _init(nn.initializers.zeros_init(), ("embed",)), (d_model,), jnp.float32)
        node_part = node_table @ kernel[:width]  # [N, d]
        calendar_part = jnp.broadcast_to(bias, (batch, num_tokens, d_model))
        for i, embed in enumerate(calendar_embeds):
            calendar_part = calendar_part + embed @ kernel[(1 + i) * width:(2 + i) * width]  # [B, S, d]
        context = node_part[None, :, None, :] + calendar_part[:, None]  # [B, N, S, d]
        context = nn.with_logical_constraint(context, NODE_AXES)
        if not self.use_filtering:
            return context

        node_key = _dense(d_model, "adapter_embed", "embed", "node_proj")(node_table)  # [N, d]
        spatial = jnp.einsum("bnsd,nd->bns", context, node_key)
        calendar_sum = sum(calendar_embeds) if calendar_embeds else jnp.zeros((batch, num_tokens, width), jnp.float32)
        temporal_key = _dense(d_model, "adapter_embed", "embed", "temporal_proj")(calendar_sum)  # [B, S, d]
        temporal = jnp.einsum("bnsd,bsd->bns", context, temporal_key)
        prototypes = self.param("prototypes", _init(nn.initializers.xavier_uniform(), ("prototypes", "embed")),
                                (self.num_prototypes, d_model), jnp.float32)
        delay_logits = self.param("delay_weights", _init(nn.initializers.ones_init(), ("delays",)),
                                  (self.max_delay,), jnp.float32)
        delay_weights = nn.softplus(delay_logits)
        delayed = 0.0
        for lag in range(1, self.max_delay + 1):
            lagged = _shift_patches(context, lag)
            assignment = jax.nn.softmax(jnp.einsum("bnsd,md->bnsm", lagged, prototypes), axis=-1)
            summary = jnp.einsum("bnsm,md->bnsd", assignment, prototypes)
            delayed = delayed + delay_weights[lag - 1] * jnp.sum(context * summary, axis=-1)
        filter_logits = self.param("filter_logits", _init(nn.initializers.zeros_init(), ("filters",)),
                                   (3,), jnp.float32)
        w_s, w_t, w_d = jax.nn.softmax(filter_logits)
        gate = nn.sigmoid(w_s * spatial + w_t * temporal + w_d * delayed)  # [B, N, S]
        return nn.with_logical_constraint(context * gate[..., None], NODE_AXES)


class DomainPrompts(nn.Module):
    """DSPA: rank-1 prompts P = domain_adapter(u v), u [n_tok, 1], v [1, d], Linear(d, d) (xavier, 0 bias).

    `zero_init_u`: the spec's u = 0 (prompts exactly 0 at init), used by prompt_attention="joint".
    Otherwise u ~ N(0, 0.02) so the zero-initialised prompt gate receives a gradient at step 0.
    Returns [n_tok, d].
    """

    num_tokens: int
    d_model: int
    zero_init_u: bool

    @nn.compact
    def __call__(self) -> jax.Array:
        u_init = nn.initializers.zeros_init() if self.zero_init_u else nn.initializers.normal(stddev=0.02)
        u = self.param("u", _init(u_init, ("prompts", "prompt_rank")), (self.num_tokens, 1), jnp.float32)
        v = self.param("v", _init(nn.initializers.uniform(scale=1.0), ("prompt_rank", "embed")),
                       (1, self.d_model), jnp.float32)
        return _dense(self.d_model, "prompt_hidden", "embed", "domain_adapter")(u @ v)


class STAdapter(nn.Module):
    """Every stage-2 weight (the "adapter" subtree): CPR, STMF/STF, DSPA prompts and prompt gates."""

    model_config: ModelConfig
    adapter_config: AdapterConfig

    def setup(self) -> None:
        mcfg, acfg = self.model_config, self.adapter_config
        if acfg.use_cpr:
            self.cpr = CyclicPrototypeRefinement(acfg.feature_names, acfg.cpr_num_heads, acfg.cpr_dropout)
        if acfg.use_st_metadata:
            self.st_context = SpatioTemporalContext(
                acfg.num_nodes, acfg.calendar_features, acfg.embedding_dim, mcfg.d_model, acfg.max_delay,
                acfg.num_prototypes, acfg.use_st_filtering,
            )
        if acfg.use_prompts:
            self.prompts = DomainPrompts(acfg.num_prompt_tokens, mcfg.d_model,
                                         zero_init_u=acfg.prompt_attention == "joint")
            if acfg.prompt_attention == "zero_gated":
                self.prompt_gate = self.param(
                    "prompt_gate", _init(nn.initializers.zeros_init(), ("layers", "heads")),
                    (mcfg.num_layers, mcfg.num_heads), jnp.float32,
                )

    def refine_tokens(self, z: jax.Array, slots: Mapping[str, jax.Array], deterministic: bool) -> jax.Array:
        """CPR(z) + I_st for context and future tokens. z [B, N, S, d] -> [B, N, S, d] float32."""
        acfg = self.adapter_config
        z = z.astype(jnp.float32)
        if acfg.use_cpr:
            z = self.cpr(z, deterministic)
        if acfg.use_st_metadata:
            z = z + self.st_context(slots, z.shape[0], z.shape[2])
        return z

    def prompt_tokens(self) -> jax.Array:
        """[n_tok, d] prompt tokens."""
        return self.prompts()

    def prompt_gates(self) -> jax.Array:
        """[num_layers, num_heads] zero-init gates of the prompt attention branch."""
        return self.prompt_gate
