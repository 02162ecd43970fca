"""Stage-2 run configuration: `configs/adapt.py`'s ConfigDict -> a frozen, validated `AdaptRunConfig`.

One clear ValueError per bad field, raised before anything touches the workdir; the `init_from`
checkpoint's metadata is read here (to size the backbone, and for the guards of `adapt_guards.py`:
no context longer than pretraining, no target in the pretraining corpus), its parameters are not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from factost_jax import checkpoint as ckpt_io
from factost_jax.data.st_pipeline import STDataConfig, load_st_dataset
from factost_jax.data.types import STDataset
from factost_jax.fields import field_names, reject_unknown_fields
from factost_jax.model.config import DEFAULT_TRAINABLE, TRAINABLE_CHOICES, ModelConfig, model_config
from factost_jax.train import mesh as mesh_lib
from factost_jax.train.adapt_guards import check_context_length, check_overlap
from factost_jax.train.config import MeshConfig, TrainConfig, resolve_compute_dtype

STAGE = "adapt"
MODELS: tuple[str, ...] = ("factost", "stid")
LOSSES: tuple[str, ...] = ("mae", "pinball", "mae+pinball")
# Calendar features the stage-2 data provides: model feature name -> (context key, future key) of a batch.
DATA_CALENDAR: dict[str, tuple[str, str]] = {
    "time_of_day": ("context_time_of_day", "future_time_of_day"),
    "day_of_week": ("context_day_of_week", "future_day_of_week"),
}
DEFAULT_INIT_FROM = "factost-tiny"  # a shipped name: factost_jax/pretrained/factost-tiny
# Train-section keys that belong to early stopping, not to the loop's TrainConfig.
_EARLY_STOPPING_KEYS = ("patience", "min_delta", "eval_batch_size", "val_windows")
# STDataConfig fields given at the top level of configs/adapt.py (`--config.input_len=96` reads naturally).
_TOP_LEVEL_DATA_KEYS = ("dataset", "input_len", "horizon")


@dataclasses.dataclass(frozen=True)
class EarlyStoppingConfig:
    """patience: evaluations without a validation-MAE improvement before stopping (0: never stop early);
    min_delta: the decrease that counts as an improvement; eval_batch_size: windows per forecast call;
    val_windows: validate on the last N windows of the validation split (0: all of them, BasicTS)."""

    patience: int = 5
    min_delta: float = 0.0
    eval_batch_size: int = 64
    val_windows: int = 0

    def validate(self) -> EarlyStoppingConfig:
        if isinstance(self.patience, bool) or not isinstance(self.patience, (int, np.integer)) or self.patience < 0:
            raise ValueError(f"train.patience must be an integer >= 0 (0 disables early stopping), got {self.patience!r}")
        if not isinstance(self.min_delta, (int, float)) or not self.min_delta >= 0:
            raise ValueError(f"train.min_delta must be a number >= 0, got {self.min_delta!r}")
        if (isinstance(self.eval_batch_size, bool) or not isinstance(self.eval_batch_size, (int, np.integer))
                or self.eval_batch_size < 1):
            raise ValueError(f"train.eval_batch_size must be a positive integer, got {self.eval_batch_size!r}")
        if isinstance(self.val_windows, bool) or not isinstance(self.val_windows, (int, np.integer)) \
                or self.val_windows < 0:
            raise ValueError(f"train.val_windows must be an integer >= 0 (0: the whole validation split), "
                             f"got {self.val_windows!r}")
        return self


@dataclasses.dataclass(frozen=True)
class AdaptMeshConfig(MeshConfig):
    """The mesh, plus nodes_axis: the mesh axis the sensor axis of stage-2 activations and of the node
    table is split over (None: replicated; "tensor": for graphs too large for one device)."""

    nodes_axis: str | None = None


@dataclasses.dataclass(frozen=True)
class AdaptRunConfig:
    """A validated stage-2 run. `backbone`/`adapter` are set for model "factost", `stid` for "stid"."""

    model: str
    data: STDataConfig
    train: TrainConfig
    early_stopping: EarlyStoppingConfig
    mesh: AdaptMeshConfig
    init_from: str | None = None
    trainable: str = DEFAULT_TRAINABLE
    loss: str = "mae"
    allow_overlap: bool = False  # adapt even to a dataset of the backbone's pretraining corpus (warns)
    allow_longer_context: bool = False  # input_len above the backbone's pretraining context (warns)
    backbone: ModelConfig | None = None
    adapter: Any = None  # factost_jax.model.adapter.AdapterConfig
    stid: Any = None  # factost_jax.model.stid.STIDConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": STAGE,
            "model": self.model,
            "init_from": self.init_from,
            "trainable": self.trainable,
            "loss": self.loss,
            "allow_overlap": self.allow_overlap,
            "allow_longer_context": self.allow_longer_context,
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "early_stopping": dataclasses.asdict(self.early_stopping),
            "mesh": dataclasses.asdict(self.mesh),
            "backbone": None if self.backbone is None else self.backbone.to_dict(),
            "adapter": None if self.adapter is None else self.adapter.to_dict(),
            "stid": None if self.stid is None else self.stid.to_dict(),
        }


def _section(config: Any, name: str) -> dict[str, Any]:
    section = config.get(name) if hasattr(config, "get") else None
    if section is None:
        raise ValueError(f"config.{name} is missing")
    if hasattr(section, "to_dict"):
        return dict(section.to_dict())
    if isinstance(section, Mapping):
        return dict(section)
    raise ValueError(f"config.{name} must be a mapping, got {type(section).__name__}")


def _build(cls: Any, values: dict[str, Any], section: str) -> Any:
    reject_unknown_fields(values, field_names(cls), section)
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{section}: {err}") from None


def resolve_init_from(init_from: str | None, model: str) -> str | None:
    """`init_from` (a path or a shipped name like "factost-tiny"), else the shipped
    `DEFAULT_INIT_FROM` (package data, found in a checkout and in an installed wheel) for model factost.

    Raises ValueError when FactoST has nothing to start from, or when STID is given one.
    """
    if model == "stid":
        if init_from:
            raise ValueError(f"init_from ({init_from}) is only used by model='factost'; STID trains from scratch")
        return None
    if init_from:
        try:  # a path, or a shipped name such as "factost-tiny"
            return str(ckpt_io.resolve_checkpoint_path(init_from))
        except FileNotFoundError as error:
            raise ValueError(f"init_from: {error}") from None
    try:
        return str(ckpt_io.resolve_checkpoint_path(DEFAULT_INIT_FROM))
    except FileNotFoundError:
        raise ValueError(f"init_from is required for model='factost': a stage-1 workdir or checkpoint directory "
                         f"(no shipped checkpoint {DEFAULT_INIT_FROM})") from None


def read_init_metadata(init_from: str) -> tuple[pathlib.Path, dict[str, Any], ModelConfig]:
    """(step dir, metadata, backbone ModelConfig) of the checkpoint `init_from` points at.

    Raises FileNotFoundError for a path without a finished checkpoint and ValueError for unreadable
    metadata; no parameter is read here.
    """
    try:
        step_dir, _ = ckpt_io.find_checkpoint(init_from)
    except ValueError as err:  # e.g. a damaged metadata file while looking for the step
        raise ValueError(f"init_from {init_from}: unreadable checkpoint metadata ({err})") from None
    try:
        metadata = json.loads((step_dir / ckpt_io.METADATA_ITEM / ckpt_io.METADATA_FILE).read_text())
        backbone = ckpt_io.model_config_from_metadata(metadata, where=str(step_dir))
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"init_from {step_dir}: unreadable checkpoint metadata ({err})") from None
    return step_dir, metadata, backbone


def _bool_field(config: Any, name: str) -> bool:
    value = config.get(name, False)
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"config.{name} must be True or False, got {value!r}")
    return bool(value)


def _check_init_checkpoint(data: STDataConfig, init_from: str, allow_overlap: bool, allow_longer: bool) -> None:
    """The guards of `adapt_guards.py` on the init checkpoint's metadata (ValueError, or a warning when allowed)."""
    step_dir, metadata, _ = read_init_metadata(init_from)
    check_context_length(data.input_len, metadata, allow_longer, str(step_dir))
    check_overlap(data.dataset, metadata, allow_overlap, str(step_dir))


def _calendar_features(values: dict[str, Any]) -> None:
    features = values.get("calendar_features")
    if isinstance(features, Mapping):
        features = tuple(features.items())
    if features is not None:
        values["calendar_features"] = tuple(tuple(pair) for pair in features)
        missing = [pair[0] for pair in values["calendar_features"] if pair[0] not in DATA_CALENDAR]
        if missing:
            raise ValueError(f"adapter.calendar_features names {missing}, which the stage-2 data does not provide "
                             f"(available: {', '.join(DATA_CALENDAR)})")


def _factost_sections(config: Any, dataset: STDataset, init_from: str) -> tuple[ModelConfig, Any]:
    from factost_jax.model.adapter import AdapterConfig

    _, _, backbone = read_init_metadata(init_from)
    size = config.get("model_size")
    if size:
        expected = model_config(size)
        if (expected.d_model, expected.num_layers, expected.num_heads, expected.ffn_dim) != (
                backbone.d_model, backbone.num_layers, backbone.num_heads, backbone.ffn_dim):
            raise ValueError(
                f"model_size={size!r} does not match init_from {init_from}: the checkpoint holds d_model="
                f"{backbone.d_model}, layers={backbone.num_layers}, heads={backbone.num_heads}, ffn={backbone.ffn_dim}")
    backbone = dataclasses.replace(backbone, compute_dtype=resolve_compute_dtype(config.get("compute_dtype", "auto")),
                                   remat=bool(config.get("remat", False)))
    adapter_values = _section(config, "adapter")
    adapter_values["num_nodes"] = dataset.num_nodes
    _calendar_features(adapter_values)
    adapter = _build(AdapterConfig, adapter_values, "adapter")
    return backbone, adapter


def _stid_section(config: Any, dataset: STDataset, data: STDataConfig) -> Any:
    from factost_jax.model.stid import STIDConfig

    values = _section(config, "stid")
    values.update(num_nodes=dataset.num_nodes, input_len=data.input_len, horizon=data.horizon,
                  steps_per_day=dataset.steps_per_day)
    return _build(STIDConfig, values, "stid").validate()


def validate_adapt_config(config: Any, dataset: STDataset | None = None) -> AdaptRunConfig:
    """`configs/adapt.py`'s ConfigDict -> `AdaptRunConfig`, one clear ValueError per bad field.

    Loads the dataset (to size the node table and check the lengths fit) unless one is given, and
    reads the `init_from` checkpoint's metadata (not its parameters).
    """
    if not hasattr(config, "get"):
        raise ValueError(f"config must be a ConfigDict or mapping, got {type(config).__name__}")
    model = config.get("model")
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    trainable, loss = config.get("trainable", DEFAULT_TRAINABLE), config.get("loss", "mae")
    if trainable not in TRAINABLE_CHOICES:
        raise ValueError(f"trainable must be one of {TRAINABLE_CHOICES}, got {trainable!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if model == "stid" and loss != "mae":
        raise ValueError(f"loss={loss!r} needs quantile forecasts; model='stid' is a point forecaster (use loss='mae')")
    data_values = _section(config, "data")
    for key in _TOP_LEVEL_DATA_KEYS:
        if key in data_values:
            raise ValueError(f"data.{key} is set at the top level of the config (config.{key})")
        if config.get(key) is None:
            raise ValueError(f"config.{key} is missing")
        data_values[key] = config.get(key)
    data = _build(STDataConfig, data_values, "data")
    train_values = _section(config, "train")
    early = _build(EarlyStoppingConfig, {k: train_values.pop(k) for k in _EARLY_STOPPING_KEYS if k in train_values},
                   "train").validate()
    try:
        train = TrainConfig.from_mapping(train_values)
    except ValueError as err:
        raise ValueError(str(err)) from None
    mesh_values = _section(config, "mesh")
    reject_unknown_fields(mesh_values, field_names(AdaptMeshConfig), "mesh")
    shape = mesh_values.get("shape", "-1,1,1")
    mesh_lib.parse_mesh_shape(shape)
    nodes_axis = mesh_values.get("nodes_axis")
    mesh_lib.logical_axis_rules(nodes_axis)  # ValueError naming mesh.nodes_axis and its choices
    shape_text = shape if isinstance(shape, str) else ",".join(str(int(d)) for d in shape)

    init_from = resolve_init_from(config.get("init_from"), model)
    allow_overlap, allow_longer = _bool_field(config, "allow_overlap"), _bool_field(config, "allow_longer_context")
    if model == "factost":  # before the dataset loads: a leaked or too-long setting fails at once
        _check_init_checkpoint(data, init_from, allow_overlap, allow_longer)
    dataset = load_st_dataset(data) if dataset is None else dataset
    from factost_jax.data.windows import split_target_starts

    for split in ("train", "val", "test"):
        split_target_starts(dataset, split, data.input_len, data.horizon)  # raises when no window fits
    backbone = adapter = stid = None
    if model == "factost":
        backbone, adapter = _factost_sections(config, dataset, init_from)
        if math.ceil(data.horizon / backbone.patch_size) > backbone.max_output_patches:
            raise ValueError(f"data.horizon={data.horizon} exceeds what the backbone predicts in one pass "
                             f"({backbone.max_horizon} steps)")
    else:
        stid = _stid_section(config, dataset, data)
    return AdaptRunConfig(model=model, data=data, train=train, early_stopping=early,
                          mesh=AdaptMeshConfig(shape_text, nodes_axis),
                          init_from=init_from, trainable=trainable, loss=loss, allow_overlap=allow_overlap,
                          allow_longer_context=allow_longer, backbone=backbone, adapter=adapter, stid=stid)
