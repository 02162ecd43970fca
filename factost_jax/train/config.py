"""The training loop's settings (`TrainConfig`) and the errors a run reports to its user.

`TrainConfig` is the `train` section both stages share (optimizer, schedule, logging, evaluation and
checkpoint cadence); `RunConfigError` is a problem the user fixes (launchers exit 2);
`TrainingDivergedError` stops a run whose loss stays non-finite. `MeshConfig` and
`resolve_compute_dtype` are the mesh and dtype settings both stages validate the same way.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from factost_jax.fields import field_names, reject_unknown_fields
from factost_jax.train.optim import DECAY_SHAPES

AUTO_DTYPE = "auto"  # compute_dtype "auto": bfloat16 on GPU/TPU, float32 on CPU


class RunConfigError(ValueError):
    """A problem with the run's configuration or workdir that the user must fix (launchers exit 2)."""


class TrainingDivergedError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and loop settings (spec §2.4 defaults)."""

    steps: int = 100_000
    lr: float = 1e-3
    warmup_frac: float = 0.1
    stable_until_frac: float = 0.6
    init_lr_div: float = 100.0
    decay: str = "sqrt"
    final_factor: float = 0.0
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    log_every: int = 100
    eval_every: int = 5_000
    eval_windows: int = 10_000
    checkpoint_every: int = 5_000
    max_to_keep: int = 3
    async_checkpointing: bool = True
    seed: int = 2025
    max_consecutive_skips: int = 20
    progress: bool = True

    def validate(self) -> TrainConfig:
        positive_ints = ("steps", "log_every", "eval_every", "eval_windows", "checkpoint_every", "max_to_keep",
                         "max_consecutive_skips")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"train.{name} must be an integer >= 1, got {value!r}")
        for name in ("lr", "clip_norm", "init_lr_div", "adam_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"train.{name} must be > 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.warmup_frac <= self.stable_until_frac <= 1.0:
            raise ValueError(
                "train.warmup_frac and train.stable_until_frac must satisfy 0 <= warmup_frac <= stable_until_frac <= 1,"
                f" got {self.warmup_frac} and {self.stable_until_frac}"
            )
        if self.decay not in DECAY_SHAPES:
            raise ValueError(f"train.decay must be one of {DECAY_SHAPES}, got {self.decay!r}")
        if not 0.0 <= self.final_factor <= 1.0:
            raise ValueError(f"train.final_factor must be in [0, 1], got {self.final_factor}")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("adam_b1", "adam_b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"train.seed must be an integer, got {self.seed!r}")
        return self

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainConfig:
        """From a dict / ConfigDict; unknown keys are an error that names them."""
        reject_unknown_fields(values, field_names(cls), "train")
        return cls(**dict(values)).validate()


def as_train_config(train: Any) -> TrainConfig:
    if isinstance(train, TrainConfig):
        return train.validate()
    if hasattr(train, "to_dict"):
        return TrainConfig.from_mapping(train.to_dict())
    return TrainConfig.from_mapping(dict(train))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A run config (ConfigDict, dataclass tree or mapping) -> JSON-able dict for metadata."""
    if hasattr(config, "to_dict"):
        raw = config.to_dict()
    elif dataclasses.is_dataclass(config):
        raw = dataclasses.asdict(config)
    else:
        raw = dict(config)
    return json.loads(json.dumps(raw, default=str))


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """shape: the device mesh (data, fsdp, tensor), e.g. "-1,1,1"."""

    shape: str = "-1,1,1"


def resolve_compute_dtype(value: str, backend: str | None = None) -> str:
    """Compute dtype "auto" -> bfloat16 on GPU / TPU, float32 on CPU; any other value as given."""
    if value != AUTO_DTYPE:
        return value
    backend = jax.default_backend() if backend is None else backend
    return "bfloat16" if backend in ("gpu", "tpu", "cuda", "rocm") else "float32"
