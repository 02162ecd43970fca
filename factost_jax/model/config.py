"""Frozen configuration of the stage-1 FactoST-v2 encoder (spec §2.2, §2.5, §2.6).

Every point the spec marks as unsure is a field here, with the spec's best guess as its default:
the InstanceNorm epsilon (the code moved it from 1 to 1e-5), `max_output_patches` (60 -> 5 -> 16),
the share of unrotated p-RoPE bands and the rollout's path levels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from factost_jax.fields import field_names, reject_unknown_fields

DEFAULT_QUANTILE_LEVELS: tuple[float, ...] = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99)
# Levels at which quantile "paths" are appended to the context during long-horizon rollout (§2.6).
DEFAULT_ROLLOUT_LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
COMPUTE_DTYPES: tuple[str, ...] = ("float32", "bfloat16")
# Stage 2: which weights adaptation trains (model/adapter_params.py::trainable_mask). The default was picked by
# validation MAE on HZMETRO and LOS-LOOP (docs/results.md, "Stage-2 defaults and why").
TRAINABLE_CHOICES: tuple[str, ...] = ("adapter", "adapter+head", "all")
DEFAULT_TRAINABLE = "all"

_POSITIVE_INT_FIELDS = (
    "d_model",
    "num_layers",
    "num_heads",
    "ffn_dim",
    "patch_size",
    "max_context_patches",
    "max_output_patches",
)
_POSITIVE_FLOAT_FIELDS = ("rope_theta", "norm_eps", "instance_norm_eps")
_FRACTION_FIELDS = ("rope_unrotated_fraction",)
_BOOL_FIELDS = ("gated_attention", "qk_norm", "remat")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the stage-1 encoder; parameters are always float32.

    Attributes:
      d_model: token width d.
      num_layers: encoder layers (scanned).
      num_heads: attention heads H; head_dim = d_model / num_heads must be even (RoPE halves).
      ffn_dim: intermediate width I of every gated MLP (token embedding, layers, head).
      patch_size: time steps per token (16).
      max_context_patches: context is truncated to the last `max_context_patches * patch_size` points.
      max_output_patches: the most future patches one forward pass predicts.
      quantile_levels: trained levels Q, strictly increasing in (0, 1), containing 0.5.
      rollout_quantile_levels: path levels appended to the context in long-horizon rollout.
      rope_theta: RoPE base.
      rope_unrotated_fraction: share of the lowest-frequency RoPE bands left unrotated (p-RoPE).
      dropout: rate used after the token embedding, on attention probabilities, after attention and
        after the MLP.
      norm_eps: RMSNorm epsilon (layer norms and QK-norm).
      instance_norm_eps: replaces a zero per-series scale in the input InstanceNorm.
      gated_attention: multiply the attention output by sigmoid(gate) (Qwen3 style). When False
        q_proj has no gate half, so the parameter count drops.
      qk_norm: RMSNorm on per-head q and k before RoPE.
      compute_dtype: "float32" or "bfloat16" activations; softmax, norms and outputs stay float32.
      remat: rematerialise each layer in the backward pass (memory for compute).
    """

    d_model: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    patch_size: int = 16
    max_context_patches: int = 128
    max_output_patches: int = 16
    quantile_levels: tuple[float, ...] = DEFAULT_QUANTILE_LEVELS
    rollout_quantile_levels: tuple[float, ...] = DEFAULT_ROLLOUT_LEVELS
    rope_theta: float = 10000.0
    rope_unrotated_fraction: float = 0.25
    dropout: float = 0.1
    norm_eps: float = 1e-6
    instance_norm_eps: float = 1e-5
    gated_attention: bool = True
    qk_norm: bool = True
    compute_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self) -> None:
        # JSON round trips hand back lists; tuples keep the config hashable (it is a jit static arg).
        for name in ("quantile_levels", "rollout_quantile_levels"):
            value = getattr(self, name)
            if isinstance(value, list | tuple):
                object.__setattr__(self, name, tuple(float(v) for v in value))
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def num_quantiles(self) -> int:
        return len(self.quantile_levels)

    @property
    def max_context_length(self) -> int:
        return self.max_context_patches * self.patch_size

    @property
    def max_horizon(self) -> int:
        """Steps one forward pass can predict."""
        return self.max_output_patches * self.patch_size

    def validate(self) -> None:
        """Raises ValueError naming the first field that is out of range."""
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        for name in _POSITIVE_FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"ModelConfig.{name} must be a positive number, got {value!r}")
        for name in _FRACTION_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"ModelConfig.{name} must be in [0, 1], got {value!r}")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"ModelConfig.d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig head_dim = d_model / num_heads = {self.head_dim} must be even for RoPE")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"ModelConfig.compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        _validate_levels("quantile_levels", self.quantile_levels, require_median=True)
        _validate_levels("rollout_quantile_levels", self.rollout_quantile_levels, require_median=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (levels as lists) that `from_dict` turns back into an equal config."""
        out = dataclasses.asdict(self)
        out["quantile_levels"] = list(self.quantile_levels)
        out["rollout_quantile_levels"] = list(self.rollout_quantile_levels)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Builds a validated config; unknown or missing required keys raise ValueError naming them."""
        if not isinstance(values, dict):
            raise ValueError(f"ModelConfig.from_dict expects a dict, got {type(values).__name__}")
        reject_unknown_fields(values, field_names(cls), "ModelConfig")
        required = [
            field.name
            for field in dataclasses.fields(cls)
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        ]
        missing = [name for name in required if name not in values]
        if missing:
            raise ValueError(f"ModelConfig is missing required keys {missing}")
        return cls(**values)


def _validate_levels(name: str, levels: tuple[float, ...], require_median: bool) -> None:
    if not levels:
        raise ValueError(f"ModelConfig.{name} must not be empty")
    if not all(0.0 < level < 1.0 and math.isfinite(level) for level in levels):
        raise ValueError(f"ModelConfig.{name} must lie strictly inside (0, 1), got {levels}")
    if any(b <= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"ModelConfig.{name} must be strictly increasing, got {levels}")
    if require_median and not any(abs(level - 0.5) < 1e-12 for level in levels):
        raise ValueError(f"ModelConfig.{name} must contain 0.5 (the point forecast), got {levels}")


MODEL_SIZES: dict[str, ModelConfig] = {
    # Seconds-long CPU runs: 2 patches of context per 16 steps keep shapes tiny.
    "debug": ModelConfig(
        d_model=32, num_layers=2, num_heads=2, ffn_dim=128, max_context_patches=8, max_output_patches=4
    ),
    "minuscule": ModelConfig(d_model=192, num_layers=3, num_heads=3, ffn_dim=768),
    "tiny": ModelConfig(d_model=256, num_layers=3, num_heads=4, ffn_dim=1024),
    "small": ModelConfig(d_model=384, num_layers=4, num_heads=6, ffn_dim=1536),
    "base": ModelConfig(d_model=512, num_layers=6, num_heads=8, ffn_dim=2048),
}


def model_config(size: str, **overrides: Any) -> ModelConfig:
    """The named size with `overrides` applied, validated.

    Raises:
      ValueError: unknown size, unknown override key or an out-of-range value.
    """
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {sorted(MODEL_SIZES)}")
    values = MODEL_SIZES[size].to_dict()
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(f"model_config({size!r}) got unknown override keys {unknown}; known keys are {sorted(values)}")
    values.update(overrides)
    return ModelConfig.from_dict(values)
