"""What both stage-2 tasks (`train/adapt_tasks.py`) share: the stage-2 data, evaluation of full
splits (the `scoring.evaluate` that `launch/evaluate.py` runs too), early stopping and the best
parameters, as the `Task` hooks of `train/task.py`:
  evaluate_params(params, step) -> {"val_MAE", ...}   full validation split, BasicTS metrics
  should_stop() -> bool                               early stopping on validation MAE
  state_dict() / load_state_dict(state)               early-stopping state kept in every checkpoint
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from factost_jax.data.input_scale import METADATA_KEY as INPUT_SCALE_KEY
from factost_jax.data.input_scale import dataset_input_scale, to_metric_scale, to_model_scale
from factost_jax.data.st_pipeline import load_st_dataset, make_st_train_dataset
from factost_jax.data.types import STDataset
from factost_jax.model.quantiles import point_and_quantiles
from factost_jax.scoring import evaluate
from factost_jax.train import mesh as mesh_lib
from factost_jax.train.adapt_config import DATA_CALENDAR, STAGE, AdaptRunConfig
from factost_jax.train.best_params import BEST_DIR, BEST_METRIC, restore_best, save_best
from factost_jax.train.config import config_to_dict
from factost_jax.train.early_stopping import EarlyStopping


def _pad_rows(batch: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Every array padded along axis 0 to `rows` by repeating its last row (padding rows are dropped later)."""
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        missing = rows - value.shape[0]
        out[name] = np.concatenate([value, np.repeat(value[-1:], missing, axis=0)]) if missing > 0 else value
    return out


def model_calendar(batch: Mapping[str, Any], features: tuple[tuple[str, int], ...], steps_per_day: int
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


class Stage2Task:
    """What both stage-2 tasks share: data, evaluation on full splits, early stopping, best params.

    Subclasses define `_forward(params, batch, rng, deterministic) -> [B, H, N, Q] or [B, H, N]`,
    `_init_boxed(rng)` (or `init_params(rng, values)` with `initial_values()`), `quantile_levels` (None for
    point forecasters), `model_config_dict()`,
    `trainable_mask(params)`, `loss_fn`, `tokens_in_batch`.
    """

    name = STAGE
    quantile_levels: tuple[float, ...] | None = None

    def __init__(self, config: AdaptRunConfig, workdir: str | pathlib.Path | None = None,
                 dataset: STDataset | None = None):
        self.config = config
        self.workdir = None if workdir is None else pathlib.Path(workdir).expanduser().absolute()
        self.dataset = load_st_dataset(config.data) if dataset is None else dataset
        # The map from metric-scale windows to the model's z-scores; recorded in every checkpoint so
        # that the Forecaster (launch/evaluate.py) feeds the model exactly what validation did.
        self.input_scale = dataset_input_scale(self.dataset)
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

    def init_params(self, rng: jax.Array, values: Any = None) -> Any:
        return self._init_boxed(rng)

    def initial_values(self) -> Any:
        return None

    def checkpoint_metadata(self) -> dict[str, Any]:
        """Extra metadata of every checkpoint and of `best/`: the input scale (AdaptTask adds its
        stage-1 provenance)."""
        return {INPUT_SCALE_KEY: self.input_scale.to_dict()}

    # ---- stage-2 hooks of the loop
    def evaluate_params(self, params: Any, step: int) -> dict[str, Any]:
        """Validation split (or its tail); keeps the best parameters under `workdir/best/<step>`."""
        result = self.evaluate_split(params, "val", last_windows=self.config.early_stopping.val_windows or None)
        metrics = {f"val_{name}": value for name, value in result["metrics"]["avg"].items()}
        value = _finite_or_nan(metrics[BEST_METRIC])
        improved = self.early_stopping.update(value, step)
        if improved and self.workdir is not None:
            self._save_best(params, step, value)
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

    @property
    def rules(self) -> tuple[tuple[str, Any], ...]:
        """The loop's logical-axis rules for this run (the node axis split as `mesh.nodes_axis` says)."""
        return mesh_lib.logical_axis_rules(self.config.mesh.nodes_axis)

    def _eval_rows(self) -> int:
        shards = mesh_lib.batch_shard_count(self.mesh)
        return -(-self.config.early_stopping.eval_batch_size // shards) * shards

    def _jitted_forecast(self) -> Any:
        if self._forecast is None:
            self._forecast = jax.jit(lambda params, batch: self._forward(params, batch, None, True),
                                     out_shardings=mesh_lib.replicated(self.mesh))
        return self._forecast

    def predict_fn(self, params: Any) -> Any:
        """`WindowBatch -> point [B, H, N]` or `(point, quantiles [B, H, N, Q], levels)` on the metric scale."""
        forecast, rows = self._jitted_forecast(), self._eval_rows()
        levels = None if self.quantile_levels is None else np.asarray(self.quantile_levels)

        def predict(window_batch: Any) -> Any:
            size = window_batch.batch_size
            host = _pad_rows({
                "values": to_model_scale(window_batch.context, self.input_scale),
                "context_time_of_day": window_batch.context_time_of_day,
                "context_day_of_week": window_batch.context_day_of_week,
                "future_time_of_day": window_batch.future_time_of_day,
                "future_day_of_week": window_batch.future_day_of_week,
            }, rows)
            out = np.asarray(forecast(params, mesh_lib.replicated_host_to_global(host, self.mesh)))[:size]
            if levels is None:
                return to_metric_scale(out, self.input_scale, quantile_axis=False)
            point, quantiles = point_and_quantiles(to_metric_scale(out, self.input_scale, quantile_axis=True), levels)
            return point, quantiles, levels

        return predict

    def evaluate_split(self, params: Any, split: str, progress: bool = False, last_windows: int | None = None
                       ) -> dict[str, Any]:
        """`evaluate`'s result for every window of `split`, or its last `last_windows` (BasicTS metrics,
        metric scale)."""
        data = self.config.data
        # The same mesh context as the loop's, so the forecast compiles once for validation and test.
        with mesh_lib.mesh_context(self.mesh, self.rules):
            return evaluate(self.dataset, self.predict_fn(params), data.input_len, data.horizon, split=split,
                            batch_size=self._eval_rows(), channel=0, progress=progress,
                            last_windows=last_windows)

    # ---- best parameters (the store itself: train/best_params.py)
    def _best_root(self) -> pathlib.Path:
        if self.workdir is None:
            raise ValueError("this task has no workdir; pass one to keep the best parameters")
        return self.workdir / BEST_DIR

    def _save_best(self, params: Any, step: int, value: float) -> None:
        metadata = {**self.checkpoint_metadata(), "stage": self.name, "model_config": self.model_config_dict(),
                    "run_config": config_to_dict(self.config)}
        save_best(self._best_root(), params, step, value, metadata)

    def restore_best(self) -> tuple[Any, int]:
        """(params of the best evaluation, placed on this task's mesh, its step)."""
        step = self.early_stopping.best_step
        abstract_boxed = jax.eval_shape(self.init_params, jax.random.key(0))
        return restore_best(self._best_root(), step, abstract_boxed, self.mesh, self.rules), int(step)


def _finite_or_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)
