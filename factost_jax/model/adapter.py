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

Files: `adapter_config.py` (AdapterConfig), `adapter_modules.py` (CPR, STMF/STF, DSPA: the "adapter"
subtree), `adapter_params.py` (grafting, trainable masks); this one holds the model, its input
helpers and the compiled init / forecast. Their public names are re-exported here.
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

from factost_jax.model.adapter_config import PROMPT_ATTENTION_CHOICES, AdapterConfig
from factost_jax.model.adapter_modules import (
    NODE_AXES,
    CyclicPrototypeRefinement,
    DomainPrompts,
    SpatioTemporalContext,
    STAdapter,
)
from factost_jax.model.adapter_params import ADAPTER_KEY, STAGE1_KEYS, graft_stage1_params, trainable_mask
from factost_jax.model.config import ModelConfig
from factost_jax.model.encoder import (
    EncoderStack,
    QuantileHead,
    TokenEmbedding,
    assemble_tokens,
    prepare_context,
    reg_token_param,
    unbox,
)

__all__ = ["ADAPTER_KEY", "NODE_AXES", "PROMPT_ATTENTION_CHOICES", "REVIN_EPS", "STAGE1_KEYS", "AdapterConfig",
           "CyclicPrototypeRefinement", "DomainPrompts", "STAdapter", "STAdapterModel", "SpatioTemporalContext",
           "adapter_predict", "calendar_slots", "check_adapter_inputs", "graft_stage1_params", "init_adapter_params",
           "jitted_adapter_apply", "patch_calendar", "revin", "trainable_mask"]

Params = Any

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


def _backbone_config(model_config: ModelConfig, adapter_config: AdapterConfig) -> ModelConfig:
    # Stage 2 runs the backbone's dropout sites at the adapter's rate; parameters are unaffected.
    return dataclasses.replace(model_config, dropout=float(adapter_config.dropout))


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


# --------------------------------------------------------------------------- compiled init and forecast


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
