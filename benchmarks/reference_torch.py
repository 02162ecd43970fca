"""An independent PyTorch implementation of the stage-1 FactoST-v2 encoder, for speed comparisons only.

Written from `../shared/spec/factost_v2.md` §2.2 (not from the JAX code) so that the benchmark compares
equal work: with `load_jax_params` the two frameworks compute the same quantiles to float tolerance
(tests/test_reference_torch.py). torch is the `bench` extra of pyproject, never a runtime dependency.

context [B, L] -> truncate to the last max_context_patches*patch points -> InstanceNorm over observed
points -> left-padded patches [values(16) || mask(16)] -> bias-free gated-MLP token embedding ->
[ctx_1..ctx_P, REG, fut_1..fut_F] -> pre-norm layers (RMSNorm; gated attention with QK-norm and
partial RoPE; sigmoid-gated MLP), no final norm -> quantile head on the F future tokens ->
inverse InstanceNorm -> [B, F*patch, Q].

The hyper-parameters come from any object with the attributes of
`factost_jax.model.config.ModelConfig` (d_model, num_layers, num_heads, ffn_dim, patch_size,
max_context_patches, max_output_patches, quantile_levels, rope_theta, rope_unrotated_fraction,
dropout, norm_eps, instance_norm_eps, gated_attention, qk_norm), so both models share named sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _linear(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """nn.Linear with the spec's init: xavier_uniform weight, zero bias."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.xavier_uniform_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis, in float32, cast back to x's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight, self.eps).to(x.dtype)


class GatedMLP(nn.Module):
    """down(sigmoid(gate(x)) * up(x)). Shapes: [..., in_dim] -> [..., out_dim]."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, bias: bool):
        super().__init__()
        self.gate_proj = _linear(in_dim, hidden_dim, bias)
        self.up_proj = _linear(in_dim, hidden_dim, bias)
        self.down_proj = _linear(hidden_dim, out_dim, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.sigmoid(self.gate_proj(x)) * self.up_proj(x))


def rope_tables(
    num_positions: int, head_dim: int, theta: float, unrotated_fraction: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [S, head_dim] of partial rotate-half RoPE for positions 0..S-1.

    Band i (of head_dim/2) has frequency theta^(-2i/head_dim); bands i >= int(head_dim/2 * (1 -
    unrotated_fraction)), the lowest frequencies, are left unrotated (cos 1, sin 0) in both halves.
    """
    half = head_dim // 2
    rotated_bands = int(half * (1.0 - unrotated_fraction))
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    angles = np.arange(num_positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos = np.cos(angles)
    sin = np.sin(angles)
    cos[:, rotated_bands:] = 1.0
    sin[:, rotated_bands:] = 0.0
    cos_full = torch.tensor(np.concatenate([cos, cos], axis=-1), dtype=torch.float32, device=device)
    sin_full = torch.tensor(np.concatenate([sin, sin], axis=-1), dtype=torch.float32, device=device)
    return cos_full, sin_full


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x [B, S, H, hd] with cos/sin [S, hd]."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated_half = torch.cat([-x2, x1], dim=-1)
    return x * cos[:, None, :] + rotated_half * sin[:, None, :]


class GatedAttention(nn.Module):
    """Bidirectional attention: q_proj d -> H*(2*hd) split per head into q | gate; k, v d -> H*hd.

    QK-norm (RMSNorm over hd) before RoPE; output SDPA(q, k, v) * sigmoid(gate), then o_proj. A
    padded query would attend to nothing; its output is set to exactly 0 (the spec's safe softmax).
    Masking only the keys and zeroing padded query rows afterwards is the same function, and it
    keeps every row of SDPA's mask non-empty so no backend produces NaN.
    """

    def __init__(self, config: Any):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.d_model // config.num_heads
        self.gated = config.gated_attention
        self.dropout = config.dropout
        width = self.num_heads * self.head_dim
        self.q_proj = _linear(config.d_model, width * (2 if self.gated else 1), bias=False)
        self.k_proj = _linear(config.d_model, width, bias=False)
        self.v_proj = _linear(config.d_model, width, bias=False)
        self.o_proj = _linear(width, config.d_model, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None

    def forward(self, x: torch.Tensor, valid: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, S, d], valid [B, S] bool, cos/sin [S, hd] -> [B, S, d]."""
        batch, length, _ = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        q_and_gate = self.q_proj(x).view(batch, length, heads, -1)
        q = q_and_gate[..., :head_dim]
        k = self.k_proj(x).view(batch, length, heads, head_dim)
        v = self.v_proj(x).view(batch, length, heads, head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q.float())
            k = self.k_norm(k.float())
        q = apply_rope(q.float(), cos, sin).to(x.dtype)
        k = apply_rope(k.float(), cos, sin).to(x.dtype)
        key_mask = valid[:, None, None, :]  # [B, 1, 1, S]: broadcast over heads and queries
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=key_mask,
            dropout_p=self.dropout if self.training else 0.0,
        ).transpose(1, 2)  # [B, S, H, hd]
        out = out * valid[:, :, None, None].to(out.dtype)
        if self.gated:
            out = out * torch.sigmoid(q_and_gate[..., head_dim:])
        return self.o_proj(out.reshape(batch, length, heads * head_dim))


class EncoderLayer(nn.Module):
    """h + Drop(Attn(RMSNorm h)); h + Drop(MLP(RMSNorm h))."""

    def __init__(self, config: Any):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = GatedAttention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = GatedMLP(config.d_model, config.ffn_dim, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h: torch.Tensor, valid: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = h + self.dropout(self.attn(self.attn_norm(h), valid, cos, sin))
        return h + self.dropout(self.mlp(self.mlp_norm(h)))


def instance_norm(
    x: torch.Tensor, observed: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-series mean/std over observed points (float32, no affine part).

    x, observed: [B, L] -> normalised [B, L] (0 where unobserved), loc [B, 1], scale [B, 1].
    loc is 0 and scale 1 for a series with nothing observed; a zero scale becomes `eps`.
    """
    count = observed.sum(dim=-1, keepdim=True).float()
    has_data = count > 0
    safe_count = torch.where(has_data, count, torch.ones_like(count))
    zeros = torch.zeros_like(x)
    loc = torch.where(observed, x, zeros).sum(dim=-1, keepdim=True) / safe_count
    loc = torch.where(has_data, loc, torch.zeros_like(loc))
    centred = torch.where(observed, x - loc, zeros)
    scale = torch.sqrt(centred.square().sum(dim=-1, keepdim=True) / safe_count)
    scale = torch.where(has_data, scale, torch.ones_like(scale))
    scale = torch.where(scale == 0, torch.full_like(scale, eps), scale)
    return torch.where(observed, (x - loc) / scale, zeros), loc, scale


def patchify(x: torch.Tensor, observed: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a multiple of `patch_size`, split into patches [values || mask].

    x [B, L] (0 where unobserved), observed [B, L] bool -> patches [B, P, 2*patch], valid [B, P].
    """
    batch, length = x.shape
    pad = (-length) % patch_size
    values = F.pad(x, (pad, 0))
    mask = F.pad(observed, (pad, 0), value=False)
    values = values.view(batch, -1, patch_size)
    mask = mask.view(batch, -1, patch_size)
    return torch.cat([values, mask.float()], dim=-1), mask.any(dim=-1)


class TorchEncoder(nn.Module):
    """The stage-1 encoder. Parameters: token_embed, reg_token, layers[i], head.

    forward(context [B, L] float (NaN = missing), context_mask [B, L] bool or None,
    num_output_patches F) -> quantiles [B, F*patch, Q] in the input's units.
    """

    def __init__(self, config: Any):
        super().__init__()
        self.config = config
        width = 2 * config.patch_size
        self.token_embed = GatedMLP(width, config.ffn_dim, config.d_model, bias=False)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.reg_token = nn.Parameter(torch.randn(1, 1, config.d_model))
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        num_quantiles = len(config.quantile_levels)
        self.head = GatedMLP(config.d_model, config.ffn_dim, config.patch_size * num_quantiles, bias=True)
        # Tables for the longest sequence, sliced per call; not parameters, so not in the state_dict.
        max_tokens = config.max_context_patches + 1 + config.max_output_patches
        cos, sin = rope_tables(
            max_tokens, config.d_model // config.num_heads, config.rope_theta, config.rope_unrotated_fraction, None
        )
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(
        self, context: torch.Tensor, context_mask: torch.Tensor | None, num_output_patches: int
    ) -> torch.Tensor:
        cfg = self.config
        if context.dim() != 2 or context.shape[1] == 0:
            raise ValueError(f"context must have shape [batch, length>0], got {tuple(context.shape)}")
        if not 1 <= num_output_patches <= cfg.max_output_patches:
            raise ValueError(f"num_output_patches must be in [1, {cfg.max_output_patches}], got {num_output_patches}")
        context = context.float()
        observed = torch.isfinite(context)
        if context_mask is not None:
            observed = observed & context_mask.bool()
        keep = cfg.max_context_patches * cfg.patch_size
        context, observed = context[:, -keep:], observed[:, -keep:]
        x_norm, loc, scale = instance_norm(context, observed, cfg.instance_norm_eps)
        patches, patch_valid = patchify(x_norm, observed, cfg.patch_size)
        batch, num_context = patch_valid.shape
        placeholders = patches.new_zeros(batch, num_output_patches, patches.shape[-1])
        embedded = self.embed_dropout(self.token_embed(torch.cat([patches, placeholders], dim=1)))
        reg = self.reg_token.to(embedded.dtype).expand(batch, 1, -1)
        h = torch.cat([embedded[:, :num_context], reg, embedded[:, num_context:]], dim=1)
        valid = torch.cat([patch_valid, patch_valid.new_ones(batch, 1 + num_output_patches)], dim=1)
        cos, sin = self.rope_cos[: h.shape[1]], self.rope_sin[: h.shape[1]]
        for layer in self.layers:
            h = layer(h, valid, cos, sin)
        out = self.head(h[:, -num_output_patches:]).float()
        quantiles = out.reshape(batch, num_output_patches * cfg.patch_size, len(cfg.quantile_levels))
        return quantiles * scale[:, :, None] + loc[:, :, None]


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def pinball_loss(
    quantiles: torch.Tensor, target: torch.Tensor, levels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Masked pinball loss (spec §2.3): sum max((q-1)e, q e) * m / (sum m * Q), e = y - yhat_q.

    quantiles [B, T, Q], target [B, T] (NaN allowed where mask is False), levels [Q], mask [B, T].
    """
    mask = mask & torch.isfinite(target)
    error = torch.where(mask, target, torch.zeros_like(target))[..., None] - quantiles
    loss = torch.maximum((levels - 1.0) * error, levels * error) * mask[..., None]
    return loss.sum() / (mask.sum().clamp(min=1) * levels.shape[0])


def _plain(tree: Any) -> Any:
    """Strips flax's LogicallyPartitioned boxes (anything with `.value`) from a nested dict."""
    if isinstance(tree, Mapping):
        return {key: _plain(value) for key, value in tree.items()}
    return getattr(tree, "value", tree)


def _leaves(tree: Any) -> list[Any]:
    if isinstance(tree, Mapping):
        return [leaf for value in tree.values() for leaf in _leaves(value)]
    return [tree]


def _to_tensor(array: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))


def jax_to_torch_state(jax_params: Mapping[str, Any], config: Any) -> dict[str, torch.Tensor]:
    """JAX Encoder params {token_embed, reg_token, stack, head} -> a TorchEncoder state_dict.

    JAX kernels are [in..., out...] (q/k/v: [d, H, hd'], o: [H, hd, d]); torch weights are
    [out, in], so each is flattened to 2-D and transposed. Scanned layer params carry a leading
    num_layers axis, split into layers.{i}.
    """
    params = _plain(jax_params)
    d = config.d_model
    state: dict[str, torch.Tensor] = {}

    def mlp(prefix: str, tree: Mapping[str, Any], index: int | None = None) -> None:
        for name in ("gate_proj", "up_proj", "down_proj"):
            kernel = np.asarray(tree[name]["kernel"])
            kernel = kernel if index is None else kernel[index]
            state[f"{prefix}.{name}.weight"] = _to_tensor(kernel.T)
            if "bias" in tree[name]:
                bias = np.asarray(tree[name]["bias"])
                state[f"{prefix}.{name}.bias"] = _to_tensor(bias if index is None else bias[index])

    mlp("token_embed", params["token_embed"]["mlp"])
    state["reg_token"] = _to_tensor(params["reg_token"])
    layers = params["stack"]["layers"]
    attn = layers["attn"]
    for i in range(config.num_layers):
        prefix = f"layers.{i}"
        state[f"{prefix}.attn_norm.weight"] = _to_tensor(np.asarray(layers["attn_norm"]["scale"])[i])
        state[f"{prefix}.mlp_norm.weight"] = _to_tensor(np.asarray(layers["mlp_norm"]["scale"])[i])
        for name in ("q_proj", "k_proj", "v_proj"):
            kernel = np.asarray(attn[name]["kernel"])[i]  # [d, H, width]
            state[f"{prefix}.attn.{name}.weight"] = _to_tensor(kernel.reshape(d, -1).T)
        o_kernel = np.asarray(attn["o_proj"]["kernel"])[i]  # [H, hd, d]
        state[f"{prefix}.attn.o_proj.weight"] = _to_tensor(o_kernel.reshape(-1, d).T)
        for name in ("q_norm", "k_norm"):
            if name in attn:
                state[f"{prefix}.attn.{name}.weight"] = _to_tensor(np.asarray(attn[name]["scale"])[i])
        mlp(f"{prefix}.mlp", layers["mlp"], index=i)
    mlp("head", params["head"]["mlp"])
    return state


def load_jax_params(model: TorchEncoder, jax_params: Mapping[str, Any]) -> TorchEncoder:
    """Copies JAX Encoder params (boxed or plain) into `model` in place and returns it.

    Raises:
      ValueError: a torch parameter has no JAX counterpart, a JAX parameter is left over, or a shape differs.
    """
    state = jax_to_torch_state(jax_params, model.config)
    jax_scalars = sum(int(np.size(leaf)) for leaf in _leaves(_plain(jax_params)))
    copied_scalars = sum(tensor.numel() for tensor in state.values())
    if jax_scalars != copied_scalars:
        raise ValueError(
            f"load_jax_params: the JAX tree holds {jax_scalars} scalars but only {copied_scalars} map onto torch params"
        )
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"load_jax_params: torch params without a JAX source {missing}, unused JAX params {unexpected}"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ValueError(
                f"load_jax_params: {name} has JAX shape {tuple(tensor.shape)}, torch expects {tuple(own[name].shape)}"
            )
    model.load_state_dict(state, strict=True)
    return model
