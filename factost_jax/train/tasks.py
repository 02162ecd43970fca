"""Stage-1 pretraining task (spec §2.1-2.4) and the validated run configuration it is built from.

`validate_pretrain_config(config)` turns the ml_collections config of `configs/pretrain.py` into
frozen dataclasses (`PretrainRunConfig`), one clear error per bad field. `PretrainTask(run_config)`
wires the Encoder, the Grain pipeline and the pinball loss into the `Task` protocol (`train/task.py`)
that `train/loop.py` runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from factost_jax import checkpoint as ckpt_io
from factost_jax.data.pretrain_config import PretrainDataConfig
from factost_jax.fields import field_names, reject_unknown_fields
from factost_jax.model.config import ModelConfig, model_config
from factost_jax.train import mesh as mesh_lib
from factost_jax.train.config import AUTO_DTYPE, MeshConfig, TrainConfig, resolve_compute_dtype  # noqa: F401
from factost_jax.train.adapt_init import fill_boxed, load_init_params
from factost_jax.train.task import TaskHooks

STAGE = "pretrain"
HUBER_DELTA = 2.0  # spec §2.3: Huber(δ=2) of the median is logged, never optimised


@dataclasses.dataclass(frozen=True)
class PretrainRunConfig:
    """Everything a stage-1 run needs, validated. `model_size` is the named size the model came from."""

    model_size: str
    model: ModelConfig
    data: PretrainDataConfig
    train: TrainConfig
    mesh: MeshConfig
    init_from: str | None = None  # a stage-1 checkpoint of the same size to continue from (fresh optimizer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": STAGE,
            "model_size": self.model_size,
            "model": self.model.to_dict(),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "mesh": dataclasses.asdict(self.mesh),
            "init_from": self.init_from,
        }


def _as_dict(section: Any, name: str) -> dict[str, Any]:
    if section is None:
        raise ValueError(f"config.{name} is missing")
    if hasattr(section, "to_dict"):
        return dict(section.to_dict())
    if isinstance(section, Mapping):
        return dict(section)
    raise ValueError(f"config.{name} must be a mapping, got {type(section).__name__}")


def _model_section(values: dict[str, Any]) -> tuple[str, ModelConfig]:
    size = values.pop("size", None)
    if not isinstance(size, str):
        raise ValueError(f"model.size must name a model size, got {size!r}")
    if "compute_dtype" in values:
        values["compute_dtype"] = resolve_compute_dtype(values["compute_dtype"])
    if "quantile_levels" in values:
        values["quantile_levels"] = tuple(values["quantile_levels"])
    try:
        return size, model_config(size, **values)
    except ValueError as err:
        raise ValueError(f"model: {err}") from None


def _data_section(values: dict[str, Any]) -> PretrainDataConfig:
    reject_unknown_fields(values, field_names(PretrainDataConfig), "data")
    if values.get("exclude") is None:
        values.pop("exclude", None)  # None = the default evaluation-set exclusion list
    try:
        return PretrainDataConfig(**values)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"data: {err}") from None


def _check_model_fits_data(model: ModelConfig, data: PretrainDataConfig) -> None:
    if data.patch_size != model.patch_size:
        raise ValueError(f"data.patch_size ({data.patch_size}) must equal the model's patch_size ({model.patch_size})")
    if data.context_length > model.max_context_length:
        raise ValueError(
            f"data.context_length ({data.context_length}) exceeds the model's context of max_context_patches * "
            f"patch_size = {model.max_context_length}; the extra points would be truncated away"
        )
    if data.max_output_patches > model.max_output_patches:
        raise ValueError(
            f"data.predict_length / patch_size = {data.max_output_patches} output patches exceeds the model's "
            f"max_output_patches ({model.max_output_patches})"
        )


def validate_pretrain_config(config: Any) -> PretrainRunConfig:
    """`configs/pretrain.py`'s ConfigDict (or an equivalent mapping) -> `PretrainRunConfig`.

    Raises:
      ValueError: one line naming the first bad field and what was expected.
    """
    if not hasattr(config, "get"):
        raise ValueError(f"config must be a ConfigDict or mapping, got {type(config).__name__}")
    size, model = _model_section(_as_dict(config.get("model"), "model"))
    data = _data_section(_as_dict(config.get("data"), "data"))
    train = TrainConfig.from_mapping(_as_dict(config.get("train"), "train"))
    mesh_values = _as_dict(config.get("mesh"), "mesh")
    shape = mesh_values.get("shape", "-1,1,1")
    mesh_lib.parse_mesh_shape(shape)
    reject_unknown_fields(mesh_values, {"shape"}, "mesh")
    _check_model_fits_data(model, data)
    if train.eval_windows < data.batch_size:
        raise ValueError(f"train.eval_windows ({train.eval_windows}) must be at least data.batch_size ({data.batch_size})")
    shape_text = shape if isinstance(shape, str) else ",".join(str(int(d)) for d in shape)
    init_from = config.get("init_from")
    if init_from is not None:
        if not isinstance(init_from, str) or not init_from.strip():
            raise ValueError(f"init_from must be a checkpoint path or shipped name, got {init_from!r}")
        try:  # a path, or a shipped name such as "factost-tiny"
            init_from = str(ckpt_io.resolve_checkpoint_path(init_from))
        except FileNotFoundError as error:
            raise ValueError(f"init_from: {error}") from None
    return PretrainRunConfig(size, model, data, train, MeshConfig(shape_text), init_from)


class PretrainTask(TaskHooks):
    """Stage 1: Encoder + randomized-window Grain stream + masked pinball loss (spec §2.3).

    The loss lives in the window-normalised space: the pipeline z-scores context and target with the
    input window's statistics, and the Encoder returns quantiles in its input's units, so both sides
    already share that space. F (output patches) is the batch's target width / patch_size, a static
    shape, so each bucket of the pipeline compiles one program.
    """

    name = STAGE

    def __init__(self, config: PretrainRunConfig):
        from factost_jax.model.encoder import Encoder

        self.config = config
        self.model_config = config.model
        self.model = Encoder(config.model)
        self._levels = np.asarray(config.model.quantile_levels, np.float32)
        self._median = int(np.argmin(np.abs(self._levels - 0.5)))

    def model_config_dict(self) -> dict[str, Any]:
        return self.model_config.to_dict()

    def init_params(self, rng: jax.Array, values: Any = None) -> Any:
        """Boxed (logically partitioned) params; shapes do not depend on the dummy input length.

        `values` (host arrays from `initial_values()`, the `init_from` checkpoint) replace the random
        draws leaf by leaf; the boxes keep their logical axes, so the weights land sharded.
        """
        patch = self.model_config.patch_size
        context = jnp.zeros((1, 2 * patch), jnp.float32)
        mask = jnp.ones((1, 2 * patch), bool)
        boxed = self.model.init({"params": rng}, context, mask, 1, True)["params"]
        return boxed if values is None else fill_boxed(boxed, values)

    def initial_values(self) -> Any:
        """The `init_from` checkpoint's parameters (host float32), shapes checked against this model."""
        if self.config.init_from is None:
            return None
        abstract = jax.eval_shape(self.init_params, jax.random.key(0))
        kind, values = load_init_params(self.config.init_from, abstract, num_nodes=0)
        if kind != "stage1":
            raise ValueError(f"init_from {self.config.init_from}: a stage-2 checkpoint cannot initialise "
                             "stage-1 pretraining (give a stage-1 checkpoint or a shipped name)")
        return values

    def loss_fn(
        self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, deterministic: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """batch: context [B, L], context_mask [B, L], target [B, F*patch], target_mask [B, F*patch]."""
        from factost_jax.metrics import pinball_loss

        num_output_patches = batch["target"].shape[1] // self.model_config.patch_size
        quantiles = self.model.apply(
            {"params": params},
            batch["context"],
            batch["context_mask"],
            num_output_patches,
            deterministic,
            rngs=None if deterministic else {"dropout": rng},
        ).astype(jnp.float32)
        target_mask = batch["target_mask"]
        loss = pinball_loss(quantiles, batch["target"], self._levels, target_mask)
        return loss, {"huber_median": self._masked_huber(quantiles[..., self._median], batch["target"], target_mask)}

    @staticmethod
    def _masked_huber(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
        """Huber(δ=2) of the median forecast, mean over observed targets (0 when none)."""
        error = jnp.abs(pred - jnp.where(mask, target, 0.0))
        huber = jnp.where(error <= HUBER_DELTA, 0.5 * error**2, HUBER_DELTA * (error - 0.5 * HUBER_DELTA))
        count = jnp.sum(mask)
        return jnp.where(count > 0, jnp.sum(jnp.where(mask, huber, 0.0)) / jnp.maximum(count, 1), 0.0)

    def train_dataset(self, process_index: int, process_count: int) -> Any:
        from factost_jax.data.pipeline import make_pretrain_dataset

        return make_pretrain_dataset(self.config.data, process_index, process_count)

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        """Fixed global validation batches: eval_windows rounded down to a multiple of the batch size."""
        from factost_jax.data.pipeline import make_validation_batches

        batch_size = self.config.data.batch_size
        num_windows = max(batch_size, self.config.train.eval_windows // batch_size * batch_size)
        return make_validation_batches(self.config.data, num_windows=num_windows, batch_size=batch_size)

    def batch_shapes_key(self, batch: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(batch["context"].shape), tuple(batch["target"].shape)

    def trainable_mask(self, params: Any) -> None:
        return None

    def tokens_in_batch(self, batch: Mapping[str, Any]) -> int:
        """Sequence tokens the encoder attends over: observed context patches + [REG] + F future, per row."""
        patch = self.model_config.patch_size
        mask = np.asarray(batch["context_mask"])
        rows, length = mask.shape
        pad = (-length) % patch
        padded = np.pad(mask, ((0, 0), (pad, 0)))
        valid_patches = int(padded.reshape(rows, -1, patch).any(-1).sum())
        future = batch["target"].shape[1] // patch
        return valid_patches + rows * (1 + future)
