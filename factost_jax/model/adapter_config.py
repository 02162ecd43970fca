"""The stage-2 adapter's hyper-parameters: `AdapterConfig` (spec §3.3).

Frozen and hashable because it is a static field of the adapter's Flax modules and a key of their
compiled-program caches (model/adapter.py); `to_dict` / `from_dict` carry it through checkpoint
metadata and the Hub's config.json.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from factost_jax.fields import field_names, reject_unknown_fields

PROMPT_ATTENTION_CHOICES: tuple[str, ...] = ("zero_gated", "joint")


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
      prompt_attention: "zero_gated" (default; step-0 equivalent, see model/adapter.py's docstring) or "joint"
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
        reject_unknown_fields(values, field_names(cls), "AdapterConfig")
        if "num_nodes" not in values:
            raise ValueError("AdapterConfig is missing required key 'num_nodes'")
        return cls(**values)
