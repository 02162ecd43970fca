"""Stage 2 of FactoST-v2: the spatio-temporal adapter around the stage-1 encoder (spec §3).

Forward (`STAdapterModel`, spec §3.2), for values [B, T, N] with NaN where missing:

  outer RevIN per (b, n)  ->  channel independence [B*N, T]  ->  truncate, InstanceNorm, patchify
  ->  token_embed([ctx patches ; F zero placeholders])                       z  [B, N, P+F, d]
  ->  CPR:   z <- z + W_o^f(W_v^f z + b_v^f) + b_o^f   for each calendar feature f
  ->  STMF:  I_st = Linear_{(1+n_feat)*E -> d}(concat[E_node(n), E_f(slot_f(p)) ...])
  ->  STF:   I_st <- I_st * sigmoid(w_s S_s + w_t S_t + w_d S_d)        (one scalar per b, n, patch)
  ->  fusion z + I_st, [REG] between context and future, DSPA prompts prepended
  ->  stage-1 EncoderStack, QuantileHead on the last F tokens, [:H]
  ->  inverse InstanceNorm, inverse RevIN                                quantiles [B, H, N, Q]

The stage-1 submodules are reused under the SAME attribute names (token_embed, reg_token, stack,
head), so a stage-1 checkpoint grafts onto them 1:1 (`graft_stage1_params`); every adapter weight
lives under "adapter". Every op is per node or per (node, patch): no [N, N] tensor exists, so cost
and memory are linear in N.

Step-0 equivalence. With fresh adapter weights and grafted stage-1 weights the adapted forecast
equals the stage-1 zero-shot forecast of each node's series (F = ceil(H / patch)), because:
  * CPR's output projection (W_o, b_o) is zero-initialised, so CPR is the identity;
  * STMF's final Linear is zero-initialised (LoRA-style), so I_st = 0 and the STF gate acts on 0;
  * with prompt_attention="zero_gated" (default) the prompt keys get their own softmax whose output
    is scaled by a per-layer, per-head gate initialised to 0 (LLaMA-Adapter's zero-init attention),
    so the regular tokens' attention is exactly stage 1's;
  * RevIN followed by InstanceNorm is InstanceNorm (affine invariance), and the inverses compose;
  * RoPE is relative, so shifting every position by the number of prompts changes nothing.
None of this limits what the adapter can learn: each zero factor receives a gradient at step 0
(W_o from W_v z, the STMF Linear from the embeddings, the prompt gate from the prompt branch).
prompt_attention="joint" is the spec-literal variant (u = 0, prompts inside the one softmax): the
zero prompt tokens then take attention mass, so step-0 equivalence does not hold there.

Size (tiny backbone, PEMS04: N = 307, tod 24 + dow 7): STMF + STF 60,742, DSPA 66,051, prompt
gates 12, CPR 263,168 (the effective form; spec §3.3's ~534k counts CPR's query tables and W_q, W_k,
which cannot affect the output) -> 389,973 adapter parameters on top of the 4,378,928 backbone.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from factost_jax.model.config import TRAINABLE_CHOICES, ModelConfig
from factost_jax.model.encoder import (
    EncoderStack,
    QuantileHead,
    TokenEmbedding,
    assemble_tokens,
    prepare_context,
    reg_token_param,
    unbox,
)

Params = Any

STAGE1_KEYS: tuple[str, ...] = ("token_embed", "reg_token", "stack", "head")
ADAPTER_KEY = "adapter"
PROMPT_ATTENTION_CHOICES: tuple[str, ...] = ("zero_gated", "joint")
NODE_AXES = ("batch", "nodes", "length", "embed")
REVIN_EPS = 1e-5


def calendar_slots(time_of_day_slot, steps_per_day: int, cycle: int = 24):
    """Maps a time-of-day slot to one of `cycle` equal bins of the day.

    The data gives `time_of_day` as the step's slot in its day (0..steps_per_day-1, e.g. 0..287 for
    5-minute data); the adapter's time-of-day table has `cycle` rows (24 = hour of day, what the
    reference code uses). Bin = floor(slot * cycle / steps_per_day): for 5-minute data slots 0..11
    are hour 0; for hourly data with cycle 24 it is the identity.

    Args:
      time_of_day_slot: int array (numpy or jax) of any shape, values in [0, steps_per_day).
      steps_per_day: steps in one day of the data (>= 1).
      cycle: number of bins (>= 1).
    Returns:
      int32 array of the same shape with values in [0, cycle).
    """
    if steps_per_day < 1 or cycle < 1:
        raise ValueError(f"calendar_slots: steps_per_day and cycle must be >= 1, got {steps_per_day}, {cycle}")
    xp = jnp if isinstance(time_of_day_slot, jax.Array) else np
    slot = xp.asarray(time_of_day_slot).astype(xp.int64 if xp is np else xp.int32)
    return ((slot % steps_per_day) * cycle // steps_per_day % cycle).astype(xp.int32)


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Hyper-parameters of the spatio-temporal adapter (spec §3.3, tiny_4sta profile defaults).

    Attributes:
      num_nodes: N, rows of the node-embedding table; the data must have exactly N nodes.
      calendar_features: (name, cycle) pairs; the slot the data gives for `name` is taken mod
        `cycle`. Names are keys of the calendar dicts passed to the model (see `calendar_slots`
        for mapping 5-minute time-of-day slots to hours).
      embedding_dim: E, width of the node and calendar embeddings (32).
      num_prompt_tokens: DSPA prompt tokens prepended to every sequence (3).
      max_delay: K, time lags (in patches) of the delayed affinity S_d (3).
      num_prototypes: M, latent prototypes of S_d (32).
      use_st_metadata: STMF (node + calendar context I_st); STF needs it.
      use_cpr: the per-feature residual refinement (CPR).
      use_st_filtering: STF gating of I_st.
      use_prompts: DSPA prompts.
      outer_revin: non-affine RevIN per (batch, node) around the whole model (eps 1e-5).
      dropout: dropout rate of the adapted model: the backbone's dropout sites run at this rate in
        stage 2 instead of ModelConfig.dropout (the tiny_4sta profile's "dropout 0.2"; params are
        unaffected, so grafting is unchanged).
      cpr_num_heads / cpr_dropout: CPR's attention heads and attention-probability dropout (4, 0.5).
        With a single key the probability is 1, so dropout zeroes (or doubles) W_v z per head.
      prompt_attention: "zero_gated" (default; step-0 equivalent, see module docstring) or "joint"
        (spec-literal: prompts inside the same softmax, u initialised to 0).
    """

    num_nodes: int
    calendar_features: tuple[tuple[str, int], ...] = (("time_of_day", 24), ("day_of_week", 7))
    embedding_dim: int = 32
    num_prompt_tokens: int = 3
    max_delay: int = 3
    num_prototypes: int = 32
    use_st_metadata: bool = True
    use_cpr: bool = True
    use_st_filtering: bool = True
    use_prompts: bool = True
    outer_revin: bool = True
    dropout: float = 0.2
    cpr_num_heads: int = 4
    cpr_dropout: float = 0.5
    prompt_attention: str = "zero_gated"

    def __post_init__(self) -> None:
        # JSON hands back lists; tuples keep the config hashable (it is a static module field).
        features = self.calendar_features
        if isinstance(features, Mapping):
            features = tuple(features.items())
        if isinstance(features, list | tuple):
            features = tuple(tuple(pair) if isinstance(pair, list | tuple) else pair for pair in features)
        object.__setattr__(self, "calendar_features", features)
        self.validate()

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.calendar_features)

    def validate(self) -> None:
        """Raises ValueError naming the first field that is out of range."""
        for name in ("num_nodes", "embedding_dim", "num_prompt_tokens", "max_delay", "num_prototypes",
                     "cpr_num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"AdapterConfig.{name} must be a positive int, got {value!r}")
        for name in ("use_st_metadata", "use_cpr", "use_st_filtering", "use_prompts", "outer_revin"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"AdapterConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("dropout", "cpr_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ValueError(f"AdapterConfig.{name} must be in [0, 1), got {value!r}")
        if self.prompt_attention not in PROMPT_ATTENTION_CHOICES:
            raise ValueError(
                f"AdapterConfig.prompt_attention must be one of {PROMPT_ATTENTION_CHOICES}, "
                f"got {self.prompt_attention!r}"
            )
        if not isinstance(self.calendar_features, tuple):
            raise ValueError(
                f"AdapterConfig.calendar_features must be (name, cycle) pairs, got {self.calendar_features!r}"
            )
        for pair in self.calendar_features:
            if (not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[0], str) or not pair[0]
                    or isinstance(pair[1], bool) or not isinstance(pair[1], int | np.integer) or pair[1] < 1):
                raise ValueError(
                    f"AdapterConfig.calendar_features entries must be (name: str, cycle: int >= 1), got {pair!r}"
                )
        names = self.feature_names
        if len(set(names)) != len(names):
            raise ValueError(f"AdapterConfig.calendar_features has duplicate names: {names}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict that `from_dict` turns back into an equal config."""
        out = dataclasses.asdict(self)
        out["calendar_features"] = [[name, int(cycle)] for name, cycle in self.calendar_features]
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AdapterConfig:
        """Builds a validated config; unknown or missing required keys raise ValueError naming them."""
        if not isinstance(values, Mapping):
            raise ValueError(f"AdapterConfig.from_dict expects a dict, got {type(values).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"AdapterConfig got unknown keys {unknown}; known keys are {sorted(known)}")
        if "num_nodes" not in values:
            raise ValueError("AdapterConfig is missing required key 'num_nodes'")
        return cls(**values)


def _backbone_config(model_config: ModelConfig, adapter_config: AdapterConfig) -> ModelConfig:
    return dataclasses.replace(model_config, dropout=float(adapter_config.dropout))


# --------------------------------------------------------------------------- pure helpers


def revin(values: jax.Array, observed: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Non-affine RevIN over time per (batch, node), on observed points only.

    Args:
      values: [B, T, N] float32 (entries where `observed` is False may be NaN; they stay as given).
      observed: [B, T, N] bool.
    Returns:
      normalised [B, T, N], loc [B, 1, N], scale [B, 1, N] with scale = sqrt(var + 1e-5);
      a series with no observed point gets loc 0 and scale 1 (the identity), so that RevIN then
      InstanceNorm stays exactly InstanceNorm for it too.
    """
    count = jnp.sum(observed, axis=1, keepdims=True).astype(jnp.float32)
    safe_count = jnp.maximum(count, 1.0)
    loc = jnp.sum(jnp.where(observed, values, 0.0), axis=1, keepdims=True) / safe_count
    var = jnp.sum(jnp.where(observed, jnp.square(values - loc), 0.0), axis=1, keepdims=True) / safe_count
    scale = jnp.where(count > 0, jnp.sqrt(var + REVIN_EPS), 1.0)
    return (values - loc) / scale, loc, scale


def patch_calendar(context_slots: jax.Array, future_slots: jax.Array, patch_size: int,
                   num_future_patches: int) -> jax.Array:
    """One calendar slot per token: the first step of each patch (spec §3.2 step 2).

    The context is right-aligned and left-padded to a multiple of `patch_size` (as `patchify` does).
    A left-padded first patch starts before the window, where the calendar is unknown; it takes the
    slot of the window's first real step (slots are not uniformly spaced after `calendar_slots`,
    so extrapolating backwards would be wrong for hour bins and days).

    Args:
      context_slots: [B, L] int, one slot per context step.
      future_slots: [B, H'] int with H' >= (num_future_patches - 1) * patch_size + 1.
    Returns:
      [B, P + F] int32 with P = ceil(L / patch_size), F = num_future_patches.
    """
    pad = (-context_slots.shape[1]) % patch_size
    padded = jnp.pad(context_slots, ((0, 0), (pad, 0)), mode="edge")
    context_patch_slots = padded[:, ::patch_size]
    future_patch_slots = future_slots[:, : num_future_patches * patch_size : patch_size]
    return jnp.concatenate([context_patch_slots, future_patch_slots], axis=1).astype(jnp.int32)


def _shift_patches(x: jax.Array, lag: int) -> jax.Array:
    """x^{(-lag)}: x delayed by `lag` patches along axis 2 of [B, N, S, d], zeros shifted in."""
    return jnp.pad(x, ((0, 0), (0, 0), (lag, 0), (0, 0)))[:, :, : x.shape[2]]


# --------------------------------------------------------------------------- adapter modules


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


# --------------------------------------------------------------------------- the adapted model


class STAdapterModel(nn.Module):
    """FactoST-v2 stage 2. Parameter tree: {token_embed, reg_token, stack, head, adapter}.

    `__call__(values [B, T, N] float (NaN = missing), context_calendar {name: [B, T] int},
    future_calendar {name: [B, >=H] int}, horizon: int (static), deterministic=True)
    -> quantiles [B, H, N, Q]` in the input's units; the 0.5 level is the point forecast
    (raw head order along Q, as in stage 1). Every name of `adapter_config.calendar_features` must
    be a key of both calendar dicts (other keys are ignored); slots are taken mod the feature's cycle.
    """

    model_config: ModelConfig
    adapter_config: AdapterConfig

    def setup(self) -> None:
        cfg = _backbone_config(self.model_config, self.adapter_config)
        self.token_embed = TokenEmbedding(cfg)
        self.reg_token = reg_token_param(self, cfg)
        self.stack = EncoderStack(cfg)
        self.head = QuantileHead(cfg)
        self.adapter = STAdapter(cfg, self.adapter_config)

    def __call__(
        self,
        values: jax.Array,
        context_calendar: Mapping[str, jax.Array],
        future_calendar: Mapping[str, jax.Array],
        horizon: int,
        deterministic: bool = True,
    ) -> jax.Array:
        cfg, acfg = self.model_config, self.adapter_config
        values = jnp.asarray(values, jnp.float32)
        num_future = check_adapter_inputs(values, context_calendar, future_calendar, horizon, cfg, acfg)
        batch, _, num_nodes = values.shape
        keep = cfg.max_context_length
        values = values[:, -keep:]
        observed = jnp.isfinite(values)
        if acfg.outer_revin:
            values, revin_loc, revin_scale = revin(values, observed)

        # channel independence: one univariate series per (b, n), node-major inside each batch row
        series = jnp.swapaxes(values, 1, 2).reshape(batch * num_nodes, -1)
        series_observed = jnp.swapaxes(observed, 1, 2).reshape(batch * num_nodes, -1)
        patches, patch_valid, loc, scale = prepare_context(series, series_observed, cfg)
        num_context = patch_valid.shape[1]
        placeholders = jnp.zeros((batch * num_nodes, num_future, 2 * cfg.patch_size), jnp.float32)
        embedded = self.token_embed(jnp.concatenate([patches, placeholders], axis=1), deterministic)
        tokens_dtype = embedded.dtype
        z = nn.with_logical_constraint(embedded.reshape(batch, num_nodes, num_context + num_future, -1), NODE_AXES)

        slots = {
            name: patch_calendar(jnp.asarray(context_calendar[name])[:, -keep:], jnp.asarray(future_calendar[name]),
                                 cfg.patch_size, num_future) % cycle
            for name, cycle in acfg.calendar_features
        }
        z = self.adapter.refine_tokens(z, slots, deterministic).astype(tokens_dtype)
        z = z.reshape(batch * num_nodes, num_context + num_future, -1)
        tokens, valid = assemble_tokens(z[:, :num_context], self.reg_token, z[:, num_context:], patch_valid)

        stack_kwargs = {}
        if acfg.use_prompts:
            prompts = self.adapter.prompt_tokens().astype(tokens.dtype)
            prompts = jnp.broadcast_to(prompts[None], (tokens.shape[0], *prompts.shape))
            tokens = jnp.concatenate([prompts, tokens], axis=1)
            valid = jnp.concatenate([jnp.ones(prompts.shape[:2], bool), valid], axis=1)
            if acfg.prompt_attention == "zero_gated":
                stack_kwargs = {"num_prefix": acfg.num_prompt_tokens, "prefix_gates": self.adapter.prompt_gates()}
        positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)
        hidden = self.stack(tokens, valid, positions, deterministic, **stack_kwargs)
        normalised = self.head(hidden[:, -num_future:])[:, :horizon]  # [B*N, H, Q]
        out = normalised * scale[:, :, None] + loc[:, :, None]
        out = jnp.transpose(out.reshape(batch, num_nodes, horizon, -1), (0, 2, 1, 3))  # [B, H, N, Q]
        if acfg.outer_revin:
            out = out * revin_scale[..., None] + revin_loc[..., None]
        return out


def check_adapter_inputs(
    values: jax.Array,
    context_calendar: Mapping[str, jax.Array],
    future_calendar: Mapping[str, jax.Array],
    horizon: int,
    model_config: ModelConfig,
    adapter_config: AdapterConfig,
) -> int:
    """Validates shapes and names at trace time; returns F = ceil(horizon / patch_size)."""
    if values.ndim != 3 or values.shape[1] == 0:
        raise ValueError(f"STAdapterModel: values must be [B, T>0, N], got shape {values.shape}")
    batch, length, num_nodes = values.shape
    if num_nodes != adapter_config.num_nodes:
        raise ValueError(
            f"STAdapterModel: the data has {num_nodes} nodes but the node-embedding table has "
            f"AdapterConfig.num_nodes = {adapter_config.num_nodes}"
        )
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"STAdapterModel: horizon must be a positive python int, got {horizon!r}")
    num_future = math.ceil(horizon / model_config.patch_size)
    if num_future > model_config.max_output_patches:
        raise ValueError(
            f"STAdapterModel: horizon {horizon} needs {num_future} output patches but the model predicts at most "
            f"{model_config.max_output_patches} ({model_config.max_horizon} steps) in one pass"
        )
    for which, calendar, expected in (("context_calendar", context_calendar, length),
                                      ("future_calendar", future_calendar, horizon)):
        if not isinstance(calendar, Mapping):
            raise ValueError(
                f"STAdapterModel: {which} must be a dict {{name: [B, steps] int}}, got {type(calendar).__name__}"
            )
        missing = [name for name in adapter_config.feature_names if name not in calendar]
        if missing:
            raise ValueError(
                f"STAdapterModel: {which} lacks calendar features {missing} required by "
                f"AdapterConfig.calendar_features; it has {sorted(calendar)}"
            )
        for name in adapter_config.feature_names:
            shape = tuple(np.shape(calendar[name]))
            ok = len(shape) == 2 and shape[0] == batch and (shape[1] == length if which == "context_calendar"
                                                           else shape[1] >= expected)
            if not ok:
                need = f"[{batch}, {length}]" if which == "context_calendar" else f"[{batch}, >= {expected}]"
                raise ValueError(f"STAdapterModel: {which}[{name!r}] must be {need}, got {list(shape)}")
    return num_future


# --------------------------------------------------------------------------- parameters


def init_adapter_params(
    model_config: ModelConfig,
    adapter_config: AdapterConfig,
    rng: jax.Array,
    batch_size: int = 1,
    context_len: int | None = None,
    horizon: int | None = None,
) -> Params:
    """Fresh boxed params {token_embed, reg_token, stack, head, adapter} of `STAdapterModel`.

    Parameter shapes do not depend on batch_size / context_len / horizon (defaults: 2 patches of
    context, one patch of horizon). Graft a stage-1 checkpoint on with `graft_stage1_params`.
    """
    context_len = 2 * model_config.patch_size if context_len is None else context_len
    horizon = model_config.patch_size if horizon is None else horizon
    return _jitted_init(model_config, adapter_config, int(batch_size), int(context_len), int(horizon))(rng)


@functools.lru_cache(maxsize=16)
def _jitted_init(model_config: ModelConfig, adapter_config: AdapterConfig, batch_size: int, context_len: int,
                 horizon: int):
    # One compiled program (cached per config) instead of op-by-op dispatch, which takes many
    # seconds on CPU; it still nests inside an outer jit (e.g. one with out_shardings).
    values = jnp.zeros((batch_size, context_len, adapter_config.num_nodes), jnp.float32)
    names = adapter_config.feature_names
    context_calendar = {name: jnp.zeros((batch_size, context_len), jnp.int32) for name in names}
    future_calendar = {name: jnp.zeros((batch_size, horizon), jnp.int32) for name in names}
    model = STAdapterModel(model_config, adapter_config)

    def init(key: jax.Array) -> Params:
        return model.init({"params": key}, values, context_calendar, future_calendar, horizon, True)["params"]

    return jax.jit(init)


@functools.lru_cache(maxsize=32)
def jitted_adapter_apply(model_config: ModelConfig, adapter_config: AdapterConfig):
    """The compiled deterministic forward for a config pair, cached so each pair is jitted once.

    `fn(params (plain), values [B, T, N], context_calendar, future_calendar, horizon) -> [B, H, N, Q]`
    with `horizon` static.
    """
    model = STAdapterModel(model_config, adapter_config)

    def forward(params: Params, values: jax.Array, context_calendar: Mapping[str, jax.Array],
                future_calendar: Mapping[str, jax.Array], horizon: int) -> jax.Array:
        return model.apply({"params": params}, values, context_calendar, future_calendar, horizon, True)

    return jax.jit(forward, static_argnames="horizon")


def adapter_predict(
    params: Params,
    model_config: ModelConfig,
    adapter_config: AdapterConfig,
    values: jax.Array,
    context_calendar: Mapping[str, jax.Array],
    future_calendar: Mapping[str, jax.Array],
    horizon: int,
) -> jax.Array:
    """Deterministic stage-2 forecast (no dropout): quantiles [B, H, N, Q] in the input's units.

    Args:
      params: boxed or plain stage-2 tree {token_embed, reg_token, stack, head, adapter}.
      values: [B, T, N] float, NaN where missing.
      context_calendar / future_calendar: {name: [B, T] / [B, >= H] int} for every calendar feature.
      horizon: H, a python int with ceil(H / patch) <= max_output_patches.
    """
    context_calendar = {name: jnp.asarray(context_calendar[name]) for name in adapter_config.feature_names
                        if name in context_calendar}
    future_calendar = {name: jnp.asarray(future_calendar[name]) for name in adapter_config.feature_names
                       if name in future_calendar}
    check_adapter_inputs(jnp.asarray(values), context_calendar, future_calendar, horizon, model_config, adapter_config)
    return jitted_adapter_apply(model_config, adapter_config)(
        unbox(params), jnp.asarray(values, jnp.float32), context_calendar, future_calendar, int(horizon)
    )


def _path_str(path: tuple[str, ...]) -> str:
    return "/".join(path)


def graft_stage1_params(stage2_params: Params, stage1_params: Params) -> Params:
    """Copies every stage-1 leaf (token_embed, reg_token, stack, head) into a stage-2 tree.

    Boxes (nn.LogicallyPartitioned) of `stage2_params` are kept; stage-1 params may be boxed or
    plain. The adapter subtree is untouched. Pure: returns a new tree.

    Raises:
      ValueError: stage-1 top-level keys are not exactly the four above, a stage-1 path is missing
        in the stage-2 tree, or a leaf's shape differs (the message names the first such path, e.g.
        a checkpoint of another model size).
    """
    source = unbox(stage1_params)
    if not isinstance(source, Mapping) or set(source) != set(STAGE1_KEYS):
        keys = sorted(source) if isinstance(source, Mapping) else type(source).__name__
        raise ValueError(
            f"graft_stage1_params: stage-1 params must have exactly the keys {list(STAGE1_KEYS)}, got {keys}"
        )
    if not isinstance(stage2_params, Mapping):
        raise ValueError(f"graft_stage1_params: stage-2 params must be a dict, got {type(stage2_params).__name__}")

    def graft(target: Any, src: Any, path: tuple[str, ...]) -> Any:
        if isinstance(src, Mapping):
            if not isinstance(target, Mapping):
                raise ValueError(
                    f"graft_stage1_params: {_path_str(path)} is a subtree in stage 1 but a leaf in stage 2"
                )
            for key in src:
                if key not in target:
                    raise ValueError(
                        f"graft_stage1_params: stage-1 path {_path_str(path + (key,))} has no stage-2 counterpart"
                    )
            return {key: graft(target[key], src[key], path + (key,)) if key in src else target[key] for key in target}
        if isinstance(target, Mapping):
            raise ValueError(f"graft_stage1_params: {_path_str(path)} is a leaf in stage 1 but a subtree in stage 2")
        boxed = isinstance(target, nn.meta.AxisMetadata)
        target_value = target.unbox(apply_constraint=False) if boxed else target
        if tuple(np.shape(src)) != tuple(target_value.shape):
            raise ValueError(
                f"graft_stage1_params: shape mismatch at {_path_str(path)}: stage-1 {tuple(np.shape(src))} vs "
                f"stage-2 {tuple(target_value.shape)} (is the checkpoint of another model size?)"
            )
        value = jnp.asarray(src, dtype=target_value.dtype)
        return target.replace_boxed(value) if boxed else value

    grafted = dict(stage2_params)
    for key in STAGE1_KEYS:
        if key not in stage2_params:
            raise ValueError(f"graft_stage1_params: stage-2 params lack the stage-1 subtree {key!r}")
        grafted[key] = graft(stage2_params[key], source[key], (key,))
    return grafted


def trainable_mask(params: Params, trainable: str) -> Params:
    """Bool pytree (same structure as `params`, boxed or plain) of the leaves to train.

    "adapter": only the adapter subtree; "adapter+head": adapter and quantile head; "all": every leaf.
    """
    if trainable not in TRAINABLE_CHOICES:
        raise ValueError(f"trainable must be one of {TRAINABLE_CHOICES}, got {trainable!r}")
    if not isinstance(params, Mapping) or ADAPTER_KEY not in params:
        keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"trainable_mask: params have no {ADAPTER_KEY!r} subtree (top-level keys {keys})")
    selected = {"adapter": {ADAPTER_KEY}, "adapter+head": {ADAPTER_KEY, "head"}, "all": set(params)}[trainable]

    def is_trainable(path, _leaf) -> bool:
        return path[0].key in selected

    return jax.tree_util.tree_map_with_path(is_trainable, params)
