"""Stage-2 tasks: few-shot adaptation of FactoST (`AdaptTask`) and the STID expert (`STIDTask`).

Both implement the task protocol of `train/loop.py` and its optional stage-2 hooks:
  evaluate_params(params, step) -> {"val_MAE", ...}   full validation split, BasicTS metrics
  should_stop() -> bool                               early stopping on validation MAE
  state_dict() / load_state_dict(state)               early-stopping state kept in every checkpoint
so one loop runs both stages. `run_adaptation(run_config, workdir)` trains, then evaluates the BEST
parameters (lowest validation MAE, original units for rescaled datasets) on the full test split and
writes `workdir/metrics.json` in the `launch/evaluate.py` layout.

FactoST (spec §3): `STAdapterModel` with every stage-1 weight grafted from `init_from` (a stage-1
workdir / checkpoint dir; a stage-2 one continues an adaptation). The loss is L1 on the median in the
train-normalised space (spec §3.2 step 9), or the pinball loss, or their sum (`loss`). Which weights
train is `trainable`: "adapter", "adapter+head" or "all"; the rest keep their stage-1 values exactly
(their optimizer updates are zero).

Files added to the loop's layout: `best/<step>/` (parameters of the best evaluation so far, Orbax)
and `metrics.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from factost_jax import checkpoint as ckpt_io
from factost_jax.data.st_pipeline import STDataConfig, load_st_dataset, make_st_train_dataset
from factost_jax.data.types import STDataset
from factost_jax.model.config import ModelConfig
from factost_jax.train import mesh as mesh_lib
from factost_jax.train.loop import TrainConfig
from factost_jax.train.tasks import MeshConfig, resolve_compute_dtype

STAGE = "adapt"
MODELS: tuple[str, ...] = ("factost", "stid")
LOSSES: tuple[str, ...] = ("mae", "pinball", "mae+pinball")
TRAINABLE_CHOICES: tuple[str, ...] = ("adapter", "adapter+head", "all")
# Calendar features the stage-2 data provides: model feature name -> (context key, future key) of a batch.
DATA_CALENDAR: dict[str, tuple[str, str]] = {
    "time_of_day": ("context_time_of_day", "future_time_of_day"),
    "day_of_week": ("context_day_of_week", "future_day_of_week"),
}
BEST_DIR = "best"
METRICS_JSON = "metrics.json"
EARLY_STOPPING_METRIC = "val_MAE"
DEFAULT_INIT_FROM = "factost-tiny"  # a shipped name: factost_jax/pretrained/factost-tiny
# Train-section keys that belong to early stopping, not to the loop's TrainConfig.
_EARLY_STOPPING_KEYS = ("patience", "min_delta", "eval_batch_size", "val_windows")
# STDataConfig fields given at the top level of configs/adapt.py (`--config.input_len=96` reads naturally).
_TOP_LEVEL_DATA_KEYS = ("dataset", "input_len", "horizon")


# --------------------------------------------------------------------------- configuration
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
class AdaptRunConfig:
    """A validated stage-2 run. `backbone`/`adapter` are set for model "factost", `stid` for "stid"."""

    model: str
    data: STDataConfig
    train: TrainConfig
    early_stopping: EarlyStoppingConfig
    mesh: MeshConfig
    init_from: str | None = None
    trainable: str = "adapter+head"
    loss: str = "mae"
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
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{section}: unknown field(s) {unknown}; known fields are {sorted(known)}")
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
        from factost_jax.model.config import model_config

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
    trainable, loss = config.get("trainable", "adapter+head"), config.get("loss", "mae")
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
    if set(mesh_values) - {"shape"}:
        raise ValueError(f"mesh: unknown field(s) {sorted(set(mesh_values) - {'shape'})}; known fields are ['shape']")
    shape = mesh_values.get("shape", "-1,1,1")
    mesh_lib.parse_mesh_shape(shape)
    shape_text = shape if isinstance(shape, str) else ",".join(str(int(d)) for d in shape)

    dataset = load_st_dataset(data) if dataset is None else dataset
    from factost_jax.data.windows import split_target_starts

    for split in ("train", "val", "test"):
        split_target_starts(dataset, split, data.input_len, data.horizon)  # raises when no window fits
    init_from = resolve_init_from(config.get("init_from"), model)
    backbone = adapter = stid = None
    if model == "factost":
        backbone, adapter = _factost_sections(config, dataset, init_from)
        if math.ceil(data.horizon / backbone.patch_size) > backbone.max_output_patches:
            raise ValueError(f"data.horizon={data.horizon} exceeds what the backbone predicts in one pass "
                             f"({backbone.max_horizon} steps)")
    else:
        stid = _stid_section(config, dataset, data)
    return AdaptRunConfig(model=model, data=data, train=train, early_stopping=early, mesh=MeshConfig(shape_text),
                          init_from=init_from, trainable=trainable, loss=loss, backbone=backbone, adapter=adapter,
                          stid=stid)


# --------------------------------------------------------------------------- early stopping
class EarlyStopping:
    """Tracks the best validation value (lower is better) and evaluations since it improved."""

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.evals_without_improvement = 0

    def update(self, value: float, step: int) -> bool:
        """Records one evaluation; True when it is a new best (a NaN never is)."""
        improved = math.isfinite(value) and (self.best_value is None or value < self.best_value - self.min_delta)
        if improved:
            self.best_value, self.best_step, self.evals_without_improvement = float(value), int(step), 0
        else:
            self.evals_without_improvement += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.evals_without_improvement >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_step": self.best_step,
                "evals_without_improvement": self.evals_without_improvement}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_value = state.get("best_value")
        self.best_step = state.get("best_step")
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))


# --------------------------------------------------------------------------- shared task machinery
def _pad_rows(batch: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Every array padded along axis 0 to `rows` by repeating its last row (padding rows are dropped later)."""
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        missing = rows - value.shape[0]
        out[name] = np.concatenate([value, np.repeat(value[-1:], missing, axis=0)]) if missing > 0 else value
    return out


def _model_calendar(batch: Mapping[str, Any], features: tuple[tuple[str, int], ...], steps_per_day: int
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Batch calendar -> the adapter's {name: slot} dicts; time of day is binned to `cycle` slots per day."""
    from factost_jax.model.adapter import calendar_slots

    context, future = {}, {}
    for name, cycle in features:
        context_key, future_key = DATA_CALENDAR[name]
        if name == "time_of_day":
            context[name] = calendar_slots(batch[context_key], steps_per_day, cycle)
            future[name] = calendar_slots(batch[future_key], steps_per_day, cycle)
        else:
            context[name], future[name] = batch[context_key] % cycle, batch[future_key] % cycle
    return context, future


class _Stage2Task:
    """What both stage-2 tasks share: data, evaluation on full splits, early stopping, best params.

    Subclasses define `_forward(params, batch, rng, deterministic) -> [B, H, N, Q] or [B, H, N]`,
    `_init_boxed(rng)`, `quantile_levels` (None for point forecasters), `model_config_dict()`,
    `trainable_mask(params)`, `loss_fn`, `tokens_in_batch`.
    """

    name = STAGE
    quantile_levels: tuple[float, ...] | None = None

    def __init__(self, config: AdaptRunConfig, workdir: str | pathlib.Path | None = None,
                 dataset: STDataset | None = None):
        self.config = config
        self.workdir = None if workdir is None else pathlib.Path(workdir).expanduser().absolute()
        self.dataset = load_st_dataset(config.data) if dataset is None else dataset
        self._normalizer = self.dataset.normalizer()
        self.early_stopping = EarlyStopping(config.early_stopping.patience, config.early_stopping.min_delta)
        self._mesh = None
        self._forecast = None

    # ---- loop protocol
    def train_dataset(self, process_index: int, process_count: int) -> Any:
        return make_st_train_dataset(self.config.data, self.dataset, process_index, process_count)

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        return []  # stage 2 evaluates the whole validation split through `evaluate_params`

    def batch_shapes_key(self, batch: Mapping[str, Any]) -> tuple[int, ...]:
        return tuple(np.shape(batch["values"]))

    def init_params(self, rng: jax.Array) -> Any:
        return self._init_boxed(rng)

    # ---- stage-2 hooks of the loop
    def evaluate_params(self, params: Any, step: int) -> dict[str, Any]:
        """Full validation split; keeps the best parameters under `workdir/best/<step>`."""
        result = self.evaluate_split(params, "val", last_windows=self.config.early_stopping.val_windows or None)
        metrics = {f"val_{name}": value for name, value in result["metrics"]["avg"].items()}
        improved = self.early_stopping.update(_finite_or_nan(metrics["val_MAE"]), step)
        if improved and self.workdir is not None:
            self._save_best(params, step)
        row = {**metrics, "best_val_MAE": self.early_stopping.best_value, "best_step": self.early_stopping.best_step,
               "evals_without_improvement": self.early_stopping.evals_without_improvement}
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}

    def should_stop(self) -> bool:
        return self.early_stopping.should_stop

    def state_dict(self) -> dict[str, Any]:
        return {"early_stopping": self.early_stopping.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.early_stopping.load_state_dict(dict(state.get("early_stopping", {})))

    # ---- evaluation
    @property
    def mesh(self) -> Any:
        if self._mesh is None:
            self._mesh = mesh_lib.make_mesh(self.config.mesh.shape)
        return self._mesh

    def _eval_rows(self) -> int:
        shards = mesh_lib.batch_shard_count(self.mesh)
        return -(-self.config.early_stopping.eval_batch_size // shards) * shards

    def _jitted_forecast(self) -> Any:
        if self._forecast is None:
            self._forecast = jax.jit(lambda params, batch: self._forward(params, batch, None, True),
                                     out_shardings=mesh_lib.replicated(self.mesh))
        return self._forecast

    def _to_model_scale(self, metric_values: np.ndarray) -> np.ndarray:
        """Evaluation windows come on the metric scale (original units when rescaled); the model sees z-scores."""
        if not self.dataset.rescale:
            return metric_values
        return ((metric_values - self._normalizer.mean[..., 0]) / self._normalizer.std[..., 0]).astype(np.float32)

    def _to_metric_scale(self, model_values: np.ndarray, quantile_axis: bool) -> np.ndarray:
        if not self.dataset.rescale:
            return model_values
        mean, std = self._normalizer.mean[..., 0], self._normalizer.std[..., 0]
        if quantile_axis:
            mean, std = mean[..., None], std[..., None]
        return model_values * std + mean

    def predict_fn(self, params: Any) -> Any:
        """`WindowBatch -> point [B, H, N]` or `(point, quantiles [B, H, N, Q], levels)` on the metric scale."""
        forecast, rows = self._jitted_forecast(), self._eval_rows()
        levels = None if self.quantile_levels is None else np.asarray(self.quantile_levels)

        def predict(window_batch: Any) -> Any:
            size = window_batch.batch_size
            host = _pad_rows({
                "values": self._to_model_scale(np.asarray(window_batch.context, np.float32)),
                "context_time_of_day": window_batch.context_time_of_day,
                "context_day_of_week": window_batch.context_day_of_week,
                "future_time_of_day": window_batch.future_time_of_day,
                "future_day_of_week": window_batch.future_day_of_week,
            }, rows)
            out = np.asarray(forecast(params, mesh_lib.replicated_host_to_global(host, self.mesh)))[:size]
            if levels is None:
                return self._to_metric_scale(out, quantile_axis=False)
            quantiles = self._to_metric_scale(out, quantile_axis=True)
            return quantiles[..., int(np.argmin(np.abs(levels - 0.5)))], quantiles, levels

        return predict

    def evaluate_split(self, params: Any, split: str, progress: bool = False, last_windows: int | None = None
                       ) -> dict[str, Any]:
        """`evaluate`'s result for every window of `split`, or its last `last_windows` (BasicTS metrics, metric scale)."""
        from factost_jax.eval.evaluate import evaluate

        data = self.config.data
        # The same mesh context as the loop's, so the forecast compiles once for validation and test.
        with mesh_lib.mesh_context(self.mesh):
            return evaluate(self.dataset, self.predict_fn(params), data.input_len, data.horizon, split=split,
                            batch_size=self._eval_rows(), channel=0, progress=progress, last_windows=last_windows)

    # ---- best parameters
    def _best_root(self) -> pathlib.Path:
        if self.workdir is None:
            raise ValueError("this task has no workdir; pass one to keep the best parameters")
        return self.workdir / BEST_DIR

    def _save_best(self, params: Any, step: int) -> None:
        import orbax.checkpoint as ocp

        root = self._best_root()
        # Host copies: saving device arrays makes Orbax slice every replica (one compile per shape).
        checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
        checkpointer.save(root / str(step), args=ocp.args.StandardSave(_fetch_to_host(params)), force=True)
        checkpointer.close()
        if jax.process_index() == 0:
            # Older bests, and `<step>.orbax-checkpoint-tmp-*` left by a save cut off by a kill.
            for old in root.iterdir():
                if old.name != str(step):
                    shutil.rmtree(old, ignore_errors=True)

    def restore_best(self) -> tuple[Any, int]:
        """(params of the best evaluation, placed on this task's mesh, its step)."""
        import orbax.checkpoint as ocp

        step = self.early_stopping.best_step
        path = None if step is None else self._best_root() / str(step)
        if path is None or not path.is_dir():
            raise FileNotFoundError(f"no best parameters at {self._best_root()}/{step}: the run has no finished "
                                    "validation (or its best/ directory was removed)")
        abstract_boxed = jax.eval_shape(self.init_params, jax.random.key(0))
        shardings = mesh_lib.param_shardings(abstract_boxed, self.mesh)
        target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), mesh_lib.unbox(abstract_boxed))
        checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
        host = checkpointer.restore(path, args=ocp.args.StandardRestore(target))
        checkpointer.close()
        params = jax.tree.map(lambda value, sharding: jax.make_array_from_callback(
            value.shape, sharding, lambda index, value=value: value[index]), host, shardings)
        return params, int(step)


def _fetch_to_host(tree: Any) -> Any:
    """Every leaf as a full host numpy array (gathered across processes when sharded over hosts)."""
    from jax.experimental import multihost_utils

    def one(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


def _finite_or_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


# --------------------------------------------------------------------------- initial parameters
NODE_EMBED_PATH = "adapter/st_context/node_embed"


def _expected_shapes(abstract_params: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(mesh_lib.unbox(abstract_params))[0]
    return {ckpt_io.key_path_str(path): tuple(leaf.shape) for path, leaf in flat}


def check_init_shapes(step_dir: pathlib.Path, saved: Mapping[str, tuple[int, ...]],
                      expected: Mapping[str, tuple[int, ...]], num_nodes: int) -> str:
    """"stage1" or "stage2" for a checkpoint whose parameters fit the configured model; else ValueError.

    A stage-1 checkpoint must supply exactly the backbone leaves (token_embed, reg_token, stack, head);
    a stage-2 one every leaf. A node-embedding table of another size names both node counts.
    """
    is_stage2 = any(path.startswith("adapter/") for path in saved)
    wanted = dict(expected) if is_stage2 else {p: s for p, s in expected.items() if not p.startswith("adapter/")}
    if is_stage2 and NODE_EMBED_PATH in saved and NODE_EMBED_PATH in wanted \
            and saved[NODE_EMBED_PATH][0] != num_nodes:
        raise ValueError(f"init_from {step_dir}: its node embeddings are for N={saved[NODE_EMBED_PATH][0]} nodes "
                         f"but the dataset has N={num_nodes}; a stage-2 checkpoint only continues on the same network "
                         "(start from a stage-1 checkpoint instead)")
    differing = sorted(p for p in set(saved) | set(wanted) if saved.get(p) != wanted.get(p))
    if differing:
        first = differing[0]
        raise ValueError(
            f"init_from {step_dir}: parameters do not fit the configured model, first at {first}: checkpoint "
            f"{saved.get(first, 'missing')} vs model {wanted.get(first, 'absent')} ({len(differing)} differing "
            "path(s); is the checkpoint of another model size?)")
    return "stage2" if is_stage2 else "stage1"


def load_init_params(init_from: str, abstract_params: Any, num_nodes: int) -> tuple[str, Any]:
    """("stage1" | "stage2", host float32 params) read from `init_from`, shapes checked before any array I/O.

    Raises FileNotFoundError (no checkpoint) or ValueError (unreadable / corrupt / another size).
    """
    step_dir, _, _ = read_init_metadata(init_from)
    try:
        saved = ckpt_io.saved_param_shapes(step_dir)
    except Exception as err:  # noqa: BLE001 - Orbax raises many types for a damaged directory
        raise ValueError(f"init_from {step_dir}: cannot read the parameter metadata ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:300]})") from None
    kind = check_init_shapes(step_dir, saved, _expected_shapes(abstract_params), num_nodes)
    try:
        _, params = ckpt_io.load_inference_params(step_dir)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"init_from {step_dir}: cannot restore the parameters ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:300]})") from None
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not np.all(np.isfinite(leaf)):
            raise ValueError(f"init_from {step_dir}: parameter {ckpt_io.key_path_str(path)} holds non-finite values")
    return kind, params


def _fill_boxed(boxed: Any, values: Any) -> Any:
    """`boxed` (flax params with logical-axis boxes) with every leaf replaced by the matching value."""
    import flax.linen as nn

    def fill(target: Any, value: Any) -> Any:
        if isinstance(target, nn.meta.AxisMetadata):
            return target.replace_boxed(jnp.asarray(value, target.unbox(apply_constraint=False).dtype))
        return jnp.asarray(value, target.dtype)

    return jax.tree.map(fill, boxed, values, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


# --------------------------------------------------------------------------- the tasks
class AdaptTask(_Stage2Task):
    """FactoST stage 2: `STAdapterModel` initialised from a stage-1 (or stage-2) checkpoint.

    The checkpoint is read when the task is built, before the loop touches the workdir, so a missing,
    corrupt or wrong-size checkpoint fails with nothing written. The stage-1 weights enter the
    sharded initialisation as constants of `init_params`, so they are born on the loop's mesh.
    """

    def __init__(self, config: AdaptRunConfig, workdir: str | pathlib.Path | None = None,
                 dataset: STDataset | None = None):
        from factost_jax.model.adapter import STAdapterModel

        if config.model != "factost" or config.backbone is None or config.adapter is None:
            raise ValueError("AdaptTask needs a validated config with model='factost'")
        super().__init__(config, workdir, dataset)
        if self.dataset.num_nodes != config.adapter.num_nodes:
            raise ValueError(f"dataset {self.dataset.name} has N={self.dataset.num_nodes} nodes but the adapter's "
                             f"node table has {config.adapter.num_nodes}")
        self.backbone, self.adapter_config = config.backbone, config.adapter
        self.model = STAdapterModel(self.backbone, self.adapter_config)
        self.quantile_levels = tuple(self.backbone.quantile_levels)
        self._levels = np.asarray(self.quantile_levels, np.float32)
        self._median = int(np.argmin(np.abs(self._levels - 0.5)))
        abstract = jax.eval_shape(self._fresh_params, jax.random.key(0))
        self.init_kind, self._init_values = load_init_params(config.init_from, abstract, self.dataset.num_nodes)

    def model_config_dict(self) -> dict[str, Any]:
        """The backbone's ModelConfig (the adapter's config is in the run config of the same metadata)."""
        return self.backbone.to_dict()

    def _fresh_params(self, rng: jax.Array) -> Any:
        """Freshly initialised boxed stage-2 params (shapes do not depend on the dummy batch)."""
        data, names = self.config.data, self.adapter_config.feature_names
        # numpy dummies: this runs inside the loop's jit / eval_shape traces.
        values = np.zeros((1, data.input_len, self.adapter_config.num_nodes), np.float32)
        context = {name: np.zeros((1, data.input_len), np.int32) for name in names}
        future = {name: np.zeros((1, data.horizon), np.int32) for name in names}
        return self.model.init({"params": rng}, values, context, future, data.horizon, True)["params"]

    def _init_boxed(self, rng: jax.Array) -> Any:
        from factost_jax.model.adapter import graft_stage1_params

        fresh = self._fresh_params(rng)
        if self.init_kind == "stage2":
            return _fill_boxed(fresh, self._init_values)
        return graft_stage1_params(fresh, self._init_values)

    def _forward(self, params: Any, batch: Mapping[str, Any], rng: jax.Array | None, deterministic: bool) -> Any:
        """-> quantiles [B, H, N, Q] in the train-normalised space."""
        context, future = _model_calendar(batch, self.adapter_config.calendar_features, self.dataset.steps_per_day)
        return self.model.apply({"params": params}, batch["values"], context, future, self.config.data.horizon,
                                deterministic, rngs=None if deterministic else {"dropout": rng}).astype(jnp.float32)

    def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, deterministic: bool
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """L1 of the median (spec §3.2 step 9), the pinball loss, or their sum, over counted targets."""
        from factost_jax.metrics import masked_mae, pinball_loss

        quantiles = self._forward(params, batch, rng, deterministic)
        mask = batch["target_mask"]
        mae = masked_mae(quantiles[..., self._median], batch["target"], mask=mask)
        pinball = pinball_loss(quantiles, batch["target"], self._levels, mask)
        loss = {"mae": mae, "pinball": pinball, "mae+pinball": mae + pinball}[self.config.loss]
        return loss, {"mae": mae, "pinball": pinball}

    def trainable_mask(self, params: Any) -> Any:
        from factost_jax.model.adapter import trainable_mask

        return trainable_mask(params, self.config.trainable)

    def tokens_in_batch(self, batch: Mapping[str, Any]) -> int:
        rows, length, nodes = np.shape(batch["values"])
        patch = self.backbone.patch_size
        prompts = self.adapter_config.num_prompt_tokens if self.adapter_config.use_prompts else 0
        per_series = -(-min(length, self.backbone.max_context_length) // patch) + 1 \
            + -(-self.config.data.horizon // patch) + prompts
        return rows * nodes * per_series


class STIDTask(_Stage2Task):
    """The STID expert (Shao et al., CIKM 2022) trained from scratch on the same windows and metrics."""

    def __init__(self, config: AdaptRunConfig, workdir: str | pathlib.Path | None = None,
                 dataset: STDataset | None = None):
        from factost_jax.model.stid import STID

        if config.model != "stid" or config.stid is None:
            raise ValueError("STIDTask needs a validated config with model='stid'")
        super().__init__(config, workdir, dataset)
        if self.dataset.num_nodes != config.stid.num_nodes:
            raise ValueError(f"dataset {self.dataset.name} has N={self.dataset.num_nodes} nodes but STID's node "
                             f"table has {config.stid.num_nodes}")
        self.model = STID(config.stid)

    def model_config_dict(self) -> dict[str, Any]:
        return {"kind": "stid", **self.config.stid.to_dict()}

    def _init_boxed(self, rng: jax.Array) -> Any:
        from factost_jax.model.stid import init_stid_params

        return init_stid_params(self.config.stid, rng)

    def _forward(self, params: Any, batch: Mapping[str, Any], rng: jax.Array | None, deterministic: bool) -> Any:
        """-> point forecast [B, H, N]; calendar of the LAST input step, as STID reads it."""
        return self.model.apply({"params": params}, batch["values"], batch["context_time_of_day"][:, -1],
                                batch["context_day_of_week"][:, -1], deterministic,
                                rngs=None if deterministic else {"dropout": rng}).astype(jnp.float32)

    def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, deterministic: bool
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
        from factost_jax.metrics import masked_mae

        mae = masked_mae(self._forward(params, batch, rng, deterministic), batch["target"], mask=batch["target_mask"])
        return mae, {"mae": mae}

    def trainable_mask(self, params: Any) -> None:
        return None

    def tokens_in_batch(self, batch: Mapping[str, Any]) -> int:
        rows, _, nodes = np.shape(batch["values"])
        return rows * nodes


def make_task(config: AdaptRunConfig, workdir: str | pathlib.Path | None = None,
              dataset: STDataset | None = None) -> AdaptTask | STIDTask:
    return (AdaptTask if config.model == "factost" else STIDTask)(config, workdir, dataset)


# --------------------------------------------------------------------------- a whole run
def model_label(config: AdaptRunConfig) -> str:
    if config.model == "stid":
        return "stid"
    return f"factost-{config.trainable}"


def run_adaptation(config: AdaptRunConfig, workdir: str | pathlib.Path, task: Any = None,
                   progress: bool = True) -> dict[str, Any]:
    """Train (or resume) in `workdir`, then evaluate the best parameters on the full test split.

    Writes `workdir/metrics.json` (process 0): the `launch/evaluate.py` layout (dataset, model,
    input_len, horizon, split "test", channel, num_windows, metrics.avg / step_3 / step_6 / step_12
    with MAE, RMSE, MAPE, and QL / coverage_80 for FactoST) plus an "adaptation" block (best step,
    its validation metrics, steps run, the data subset). Returns that dict with "train_summary".
    A run stopped by SIGTERM / SIGINT (the loop saved a checkpoint) is not finished: nothing is
    evaluated or written and the result is {"preempted": True, "train_summary": ...}.
    """
    from factost_jax.eval.evaluate import json_safe
    from factost_jax.train.loop import train_and_evaluate

    task = make_task(config, workdir) if task is None else task
    task.workdir = pathlib.Path(workdir).expanduser().absolute()  # where `best/` lives
    summary = train_and_evaluate(task, config, workdir)
    if summary.get("preempted"):
        return {"preempted": True, "train_summary": summary}
    params, best_step = task.restore_best()
    result = task.evaluate_split(params, "test", progress=progress)
    data = config.data
    from factost_jax.data.st_pipeline import select_train_windows

    output = {
        "dataset": result.pop("dataset"),
        "model": model_label(config),
        **result,
        "adaptation": {
            "best_step": best_step,
            "best_val_MAE": task.early_stopping.best_value,
            "steps_run": summary.get("step"),
            "stopped_early": bool(summary.get("stopped_early", False)),
            "init_from": config.init_from,
            "trainable": config.trainable if config.model == "factost" else "all",
            "loss": config.loss,
            "few_shot_ratio": data.few_shot_ratio,
            "few_shot_selection": data.few_shot_selection,
            "memory_fraction": data.memory_fraction,
            "replay_ratio": data.replay_ratio,
            **select_train_windows(task.dataset, data).summary(),
        },
    }
    output = json_safe(output)
    if jax.process_index() == 0:
        path = pathlib.Path(workdir).expanduser().absolute() / METRICS_JSON
        path.write_text(json.dumps(output, indent=2) + "\n")
    return {**output, "train_summary": summary}
