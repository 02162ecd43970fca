"""The stage-2 model's input scale: the affine map from a dataset's metric scale to the values the
adapter is trained on, recorded in every stage-2 checkpoint so that inference applies exactly it.

Stage 2 trains on the train-split z-score of its dataset (`STDataset.normalizer`, BasicTS) and scores
forecasts on the metric scale (original units when the dataset is `rescale`d, else the z-scores
themselves, so the map is then the identity). RevIN and the encoder's InstanceNorm make the model
nearly invariant to any per-node affine map of its input, but not where a node's whole context is
unobserved: RevIN then passes the values through and the model forecasts about 0 on its input
scale, which is the train mean in z-scores but 0 in original units (HZMETRO's closed stations at
night). So the training task (validation, test, `metrics.json`, the fit report) and the Forecaster
(`launch/evaluate.py --checkpoint`, `forecast_network`, `forecast_df`) both map through
`to_model_scale` / `to_metric_scale` of the same recorded `InputScale`, and agree to float rounding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from factost_jax.data.types import STDataset

METADATA_KEY = "input_scale"  # the checkpoint metadata key: {"mean": [...], "std": [...]}


@dataclasses.dataclass(frozen=True)
class InputScale:
    """z = (x - mean) / std along the node axis (the last axis of a window `[..., N]`).

    Attributes:
      mean, std: `[N]` (one per node, norm="per_node") or `[1]` (one for the network, norm="global")
        float32, std > 0; anything that broadcasts against `[..., N]` works (the Forecaster's
        per-window fallback uses `[B, 1, N]`).
    """

    mean: np.ndarray
    std: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": np.asarray(self.mean, np.float32).tolist(), "std": np.asarray(self.std, np.float32).tolist()}


def identity_scale() -> InputScale:
    return InputScale(mean=np.zeros(1, np.float32), std=np.ones(1, np.float32))


def dataset_input_scale(dataset: STDataset, channel: int = 0) -> InputScale:
    """The map stage 2 applies to `dataset`'s metric-scale windows: its train z-score of `channel`,
    or the identity when its metrics are on the normalised scale already (`rescale` False)."""
    if not dataset.rescale:
        return identity_scale()
    normalizer = dataset.normalizer()  # mean, std [1, C] or [N, C]
    return InputScale(mean=normalizer.mean[:, channel].astype(np.float32),
                      std=normalizer.std[:, channel].astype(np.float32))


def recorded_input_scale(metadata: Mapping[str, Any]) -> InputScale | None:
    """The `InputScale` a stage-2 checkpoint records; None for one written before it was recorded."""
    recorded = metadata.get(METADATA_KEY)
    if not isinstance(recorded, Mapping):
        return None
    mean, std = np.asarray(recorded.get("mean"), np.float32), np.asarray(recorded.get("std"), np.float32)
    if mean.ndim != 1 or mean.shape != std.shape or mean.size == 0 or not (std > 0).all():
        raise ValueError(f"checkpoint metadata {METADATA_KEY!r} must hold equal-length 'mean' and positive 'std' "
                         f"lists, got {dict(recorded)}")
    return InputScale(mean=mean, std=std)


def to_model_scale(values: np.ndarray, scale: InputScale) -> np.ndarray:
    """`[..., N]` metric-scale values (NaN = missing, kept) -> float32 on the model's scale.

    float64 arithmetic, so that a float32 or float64 window gives the same float32 result.
    """
    mean, std = np.asarray(scale.mean, np.float64), np.asarray(scale.std, np.float64)
    return ((np.asarray(values, np.float64) - mean) / std).astype(np.float32)


def to_metric_scale(values: np.ndarray, scale: InputScale, quantile_axis: bool) -> np.ndarray:
    """Model-scale forecasts `[..., N]` (or `[..., N, Q]` with `quantile_axis`) -> float64 metric scale."""
    mean, std = np.asarray(scale.mean, np.float64), np.asarray(scale.std, np.float64)
    if quantile_axis:
        mean, std = mean[..., None], std[..., None]
    return np.asarray(values, np.float64) * std + mean
