"""Forecaster: quantile forecasts from a FactoST checkpoint for numpy and pandas users.

    from factost_jax import Forecaster
    fc = Forecaster.load("factost-tiny")            # or a workdir / checkpoints dir / step dir
    out = fc.forecast([series_a, series_b], horizon=48, quantiles=(0.1, 0.5, 0.9))
    out.median        # [B, H]
    out.quantiles     # [B, H, Q], non-decreasing along Q
    frame = fc.forecast_df(df, horizon=24)           # long pandas in, long pandas out

Stage 1 (the universal temporal encoder) forecasts every series on its own (channel independence),
for any horizon: past the model's one-pass maximum the quantile-path rollout of
`model/rollout.py` takes over. A stage-2 (adapted) checkpoint forecasts a whole sensor network
with `forecast_network(values [T, N], timestamps, horizon)`.

Numerics. Each series is standardised here, in float64, with the mean and standard deviation of the
context the model will see; the forecast is mapped back in float64. The encoder's own instance
norm makes it invariant to that affine map (exactly, up to rounding), so this changes nothing but
precision: a series at 1e9 with unit noise, or one at 1e-9, keeps its detail in float32. A stage-2
model instead maps its windows through the input scale its checkpoint records (the train z-score
it was adapted and validated with, `data/input_scale.py`), so it scores as its `metrics.json` did.

Compilation. Contexts are left-padded with NaN to a few bucket lengths and rows to power-of-two
batch buckets (see `model/rollout.py`), so a session compiles a bounded number of programs;
`compile()` builds them up front.

What was trained bounds what is asked. Contexts are cut to their last `max_context` steps: by
default the context length the checkpoint was pretrained on (`pretrain_context_length` in its
metadata, else the architecture's maximum); `Forecaster.load(..., max_context=N)` or
`set_max_context(N)` allows more, with a warning (`inputs/context_limit.py`). Every forward pass
asks for an output length pretraining drew (`round_output_patches`, `model/rollout.py`).

Input checks live in `inputs/series.py` (arrays) and `inputs/timestamps.py` (pandas time axes);
checkpoint names resolve through `checkpoint.resolve_checkpoint_path`. Long frames are read and
written by `series_frames.py` (stage 1) and `network_frames.py` (stage 2); a stage-2 model's windows
reach its adapter through `network_inputs.py`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import pandas as pd
import tqdm

from factost_jax import checkpoint as ckpt_io
from factost_jax.checkpoint import resolve_checkpoint_path, trained_context
from factost_jax.data.input_scale import to_metric_scale, to_model_scale
from factost_jax.inputs.context_limit import check_max_context, default_max_context
from factost_jax.inputs.series import (check_horizon, check_levels, check_observed, positive_int, rows_per_call,
                                       series_matrix, standardise, to_float_series, trained_index)
from factost_jax.inputs.timestamps import (calendar, calendar_steps_per_day, check_timestamps, future_timestamps,
                                           infer_step)
from factost_jax.model import rollout
from factost_jax.model.adapter_params import ADAPTER_KEY
from factost_jax.model.config import ModelConfig
from factost_jax.model.quantiles import point_and_quantiles
from factost_jax.model.encoder import Params, jitted_apply, unbox
from factost_jax.series_frames import level_column, read_series_frame, series_forecast_frame

__all__ = ["DEFAULT_QUANTILES", "Forecaster", "QuantileForecast", "resolve_checkpoint_path", "level_column"]

DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
DEFAULT_BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True, eq=False)
class QuantileForecast:
    """Forecasts of a batch of series (numpy float32).

    Attributes:
      median: [B, H] the 0.5 quantile, the point forecast ([H, N] from `forecast_network`).
      quantiles: [B, H, Q] at `quantile_levels`, non-decreasing along Q ([H, N, Q] for a network).
      quantile_levels: [Q] float64, strictly increasing.
    """

    median: np.ndarray
    quantiles: np.ndarray
    quantile_levels: np.ndarray


# --------------------------------------------------------------------------- the forecaster


class Forecaster:
    """Zero-shot (stage 1) or adapted (stage 2) FactoST forecasts.

    Args:
      params: the checkpoint's parameters (boxed or plain); a tree with an "adapter" subtree is a
        stage-2 model.
      config: the encoder's ModelConfig.
      adapter_config: the stage-2 AdapterConfig (required for a stage-2 tree, else None).
      metadata: the checkpoint's JSON metadata (kept for provenance: pretraining corpus, step,
        the trained context and output lengths).
      max_context: the most steps of history a forecast uses (longer contexts are cut to their
        last `max_context` steps). Default: the context length the checkpoint was trained on, or
        the architecture's maximum `max_context_patches * patch_size` when unrecorded. Above the
        trained length warns; above the architecture's maximum raises ValueError.
      round_output_patches: ask every forward pass for the smallest output-patch count F that
        pretraining drew (metadata `pretrain_output_patch_buckets`) covering the horizon, and drop
        the extra steps (True), or for exactly ceil(H / patch_size) (False). No effect when the
        checkpoint does not record them.
    """

    def __init__(self, params: Params, config: ModelConfig, adapter_config: Any = None,
                 metadata: Mapping[str, Any] | None = None, max_context: int | None = None,
                 round_output_patches: bool = True):
        if not isinstance(config, ModelConfig):
            raise ValueError(f"config must be a ModelConfig, got {type(config).__name__}")
        plain = unbox(params)
        if not isinstance(plain, Mapping):
            raise ValueError(f"params must be the checkpoint's parameter dict, got {type(plain).__name__}")
        is_stage2 = ADAPTER_KEY in plain
        if is_stage2 and adapter_config is None:
            raise ValueError("params hold an 'adapter' subtree (a stage-2 model) but no adapter_config was given")
        if not is_stage2 and adapter_config is not None:
            raise ValueError("adapter_config was given but params have no 'adapter' subtree (a stage-1 model)")
        if config.compute_dtype != "float32" and jax.default_backend() == "cpu":
            # A checkpoint trained with bf16 activations on an accelerator: CPUs emulate bf16 matmuls,
            # slower and less exact than float32 (the parameters are float32 either way).
            config = dataclasses.replace(config, compute_dtype="float32")
        self.config = config
        self.adapter_config = adapter_config
        self.metadata = dict(metadata or {})
        self.path: pathlib.Path | None = None
        self.round_output_patches = bool(round_output_patches)
        self.max_context = default_max_context(self.trained_context, config.max_context_length)
        if max_context is not None:
            self.set_max_context(max_context, stacklevel=3)
        # On the device once, instead of a host-to-device copy of every weight on every call.
        self.params = jax.device_put(plain)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str | os.PathLike, max_context: int | None = None,
             round_output_patches: bool = True) -> Forecaster:
        """A workdir, its checkpoints dir, a step dir, or a shipped name like "factost-tiny".

        A stage-2 (adaptation) workdir loads its best validation step (`WORKDIR/best/<step>`, what
        its metrics.json scores); otherwise the latest finished step is used (past a truncated or
        corrupt one, with a warning naming it); name `WORKDIR/checkpoints` for the latest of a
        stage-2 run. `self.path` is the step directory loaded. The model (and adapter) config come
        from the checkpoint's own metadata. `max_context` and `round_output_patches`: as in the
        constructor.
        """
        resolved = ckpt_io.inference_root(resolve_checkpoint_path(path))
        latest, _ = ckpt_io.find_checkpoint(resolved)
        try:
            model_config = ckpt_io.read_step_metadata(latest).get("model_config")
        except ckpt_io.UnreadableCheckpointError:
            model_config = None  # load_latest_readable reports it and falls back
        model_kind = model_config.get("kind") if isinstance(model_config, dict) else None
        if model_kind is not None:
            raise ValueError(f"checkpoint {latest} holds a {model_kind!r} model, not FactoST; the Forecaster serves "
                             "FactoST stage-1 and stage-2 checkpoints")
        step_dir, metadata, config, params = ckpt_io.load_latest_readable(resolved)
        adapter_config = None
        if ADAPTER_KEY in params:
            adapter_values = ckpt_io.adapter_config_values(metadata)
            if adapter_values is None:
                raise ValueError(f"checkpoint {step_dir} holds adapter weights but its metadata has neither "
                                 "'adapter_config' nor run_config.adapter")
            from factost_jax.model.adapter import AdapterConfig

            adapter_config = AdapterConfig.from_dict(adapter_values)
        forecaster = cls(params, config, adapter_config=adapter_config, metadata=metadata,
                         round_output_patches=round_output_patches)
        forecaster.path = step_dir
        if max_context is not None:
            forecaster.set_max_context(max_context, stacklevel=3)
        return forecaster

    # Adapting to a user's network (factost_jax/fit.py) and saving the result as a checkpoint.
    def fit(self, df: pd.DataFrame, *, horizon: int, input_len: int, id_column: str = "unique_id",
            timestamp_column: str = "ds", target: str = "y", nodes: str | None = None, adjacency: str | None = None,
            split_ratios: tuple[float, float, float] | None = None, null_val: float | None = None,
            norm: str | None = None, **train: Any) -> Forecaster:
        """Adapts this stage-1 model to the sensor network in the long DataFrame `df` (stage 2).

        `df`: one row per (sensor, timestamp) with `id_column`, `timestamp_column`, `target` (the
        `configs/adapt.py:custom` file options: nodes / adjacency give the graph, split_ratios default
        6:2:2, null_val None, norm "global"). Training keywords (steps, batch_size, patience,
        eval_every, few_shot_ratio, trainable, loss, lr, seed, overrides={"train.val_windows": 128},
        workdir, progress) default to the custom variant's. Early stopping watches the tail of the
        validation split; the returned stage-2 Forecaster holds the best parameters, and its
        metadata the test metrics ("test_metrics") and sensor order ("node_ids").
        """
        from factost_jax.data.user_files import FileSourceOptions
        from factost_jax.fit import fit_forecaster

        options = FileSourceOptions(id_column=id_column, timestamp_column=timestamp_column, target=target,
                                    nodes=nodes, adjacency=adjacency, split_ratios=split_ratios, null_val=null_val,
                                    norm=norm)
        return fit_forecaster(self, df, horizon=horizon, input_len=input_len, options=options, **train)

    def save(self, directory: str | os.PathLike) -> pathlib.Path:
        """Writes an Orbax checkpoint (a step directory; `directory` must not exist) that
        `Forecaster.load(directory)` and `launch/evaluate.py --checkpoint directory` accept."""
        from factost_jax.fit import save_forecaster

        return save_forecaster(self, directory)

    # Hugging Face Hub (factost_jax/hub.py): config.json + model.safetensors + a model card.
    @classmethod
    def from_pretrained(cls, repo_id_or_dir: str | os.PathLike, revision: str | None = None,
                        **kwargs: Any) -> Forecaster:
        """A Hub repository id ("org/name"), a `save_pretrained` directory or a shipped name."""
        from factost_jax import hub

        return hub.from_pretrained(repo_id_or_dir, revision=revision, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any) -> pathlib.Path:
        """Write config.json, model.safetensors and README.md (model card) into `directory`."""
        from factost_jax import hub

        return hub.save_pretrained(self, directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload the `save_pretrained` files to the Hub model repository `repo_id`; -> the commit URL."""
        from factost_jax import hub

        return hub.push_to_hub(self, repo_id, **kwargs)

    @property
    def stage(self) -> int:
        """1 for the universal temporal encoder, 2 for an adapted (spatio-temporal) model."""
        return 1 if self.adapter_config is None else 2

    @property
    def quantile_levels(self) -> np.ndarray:
        """[Q] the trained quantile levels."""
        return np.asarray(self.config.quantile_levels, np.float64)

    @property
    def trained_context(self) -> int | None:
        """The longest context (steps) the checkpoint was trained on; None when its metadata does not say."""
        return trained_context(self.metadata)

    @property
    def output_patch_choices(self) -> tuple[int, ...] | None:
        """The output-patch counts forward passes are rounded up to; None: exactly what the horizon needs."""
        return ckpt_io.trained_output_patches(self.metadata) if self.round_output_patches else None

    def set_max_context(self, max_context: int, stacklevel: int = 2) -> Forecaster:
        """Use up to `max_context` steps of history from now on; returns self.

        Warns when longer than the trained context (`trained_context`); raises ValueError past the
        architecture's maximum (`config.max_context_length`).
        """
        self.max_context = check_max_context(max_context, self.trained_context, self.config.max_context_length,
                                             stacklevel=stacklevel + 1)
        return self

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        cfg = self.config
        return (f"Forecaster(stage={self.stage}, d_model={cfg.d_model}, layers={cfg.num_layers}, "
                f"max_context={self.max_context}, max_horizon={cfg.max_horizon}{where})")

    # ------------------------------------------------------------------ compilation
    def program_shapes(self, max_context: int, max_horizon: int, batch_size: int) -> list[tuple[int, int, int]]:
        """(rows, context bucket, output patches) of every program `forecast` runs for batches of
        `batch_size` series, contexts up to `max_context` and horizons up to `max_horizon`."""
        cfg = self.config
        buckets = rollout.default_context_buckets(cfg)
        cap = min(self.max_context, buckets[-1])

        def bucket_of(length: int) -> int:
            return next(b for b in buckets if b >= min(length, cap))

        def patch_counts(steps: int) -> set[int]:
            """Every F a pass asks for when it needs 1..`steps` more steps."""
            needed = rollout.output_patches(steps, cfg)
            return {rollout.output_patches(f * cfg.patch_size, cfg, self.output_patch_choices)
                    for f in range(1, needed + 1)}

        max_batch = rows_per_call(batch_size)
        shapes = set()
        first_rows = rollout._batch_bucket(batch_size, max_batch)
        for bucket in buckets[: buckets.index(bucket_of(max_context)) + 1]:
            for patches in patch_counts(max_horizon):
                shapes.add((first_rows, bucket, patches))
        if max_horizon > cfg.max_horizon:
            path_rows = batch_size * len(cfg.rollout_quantile_levels)
            row_sizes = {max_batch} if path_rows >= max_batch else set()
            if path_rows % max_batch:
                row_sizes.add(rollout._batch_bucket(path_rows % max_batch, max_batch))
            longest = bucket_of(max_context + max_horizon - 1)
            for bucket in buckets[: buckets.index(longest) + 1]:
                for patches in patch_counts(max_horizon - cfg.max_horizon):
                    shapes.update((rows, bucket, patches) for rows in row_sizes)
        return sorted(shapes)

    def compile(self, max_context: int | None = None, max_horizon: int | None = None,
                batch_size: int = DEFAULT_BATCH_SIZE) -> Forecaster:
        """Compiles, once, every program `forecast` needs for these limits (stage 1); returns self.

        Later calls with `batch_size` series (or a multiple), contexts up to `max_context` and
        horizons up to `max_horizon` compile nothing; a smaller final batch compiles its
        power-of-two row bucket once. Defaults: this forecaster's `max_context` (contexts are cut
        to it anyway) and the model's one-pass horizon.
        """
        if self.stage != 1:
            raise ValueError("compile() warms the stage-1 programs; a stage-2 model compiles on its first forecast_network")
        max_context = self.max_context if max_context is None else positive_int(max_context, "max_context")
        max_horizon = self.config.max_horizon if max_horizon is None else positive_int(max_horizon, "max_horizon")
        batch_size = positive_int(batch_size, "batch_size")
        forward = jitted_apply(self.config)
        for rows, bucket, patches in self.program_shapes(max_context, max_horizon, batch_size):
            context = np.full((rows, bucket), np.nan, np.float32)
            jax.block_until_ready(forward(self.params, context, np.zeros((rows, bucket), bool), patches))
        return self

    # ------------------------------------------------------------------ stage 1
    def _require_stage1(self, what: str) -> None:
        if self.stage != 1:
            raise ValueError(f"this checkpoint is stage 2 (adapted to {self.adapter_config.num_nodes} nodes); "
                             f"{what} needs a stage-1 checkpoint: use forecast_network(values [T, N], timestamps, horizon)")

    def _select_levels(self, trained_quantiles: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """[..., Q_trained] sorted -> [..., Q] at `levels`, interpolating (with a warning) untrained ones."""
        trained = self.quantile_levels
        untrained = [float(level) for level in levels if trained_index(trained, level) is None]
        if untrained:
            clamped = [level for level in untrained if not trained[0] <= level <= trained[-1]]
            note = (f"; levels outside [{trained[0]}, {trained[-1]}] take the nearest trained quantile {clamped}"
                    if clamped else "")
            warnings.warn(f"quantile levels {untrained} were not trained (trained: {trained.tolist()}); they are "
                          f"linearly interpolated between neighbouring trained levels{note}", stacklevel=3)
        selected = rollout.interpolate_quantiles(trained_quantiles, trained, levels)
        return np.sort(selected, axis=-1)

    def _forecast_rows(self, matrix: np.ndarray, horizon: int, batch_size: int, progress: bool | None) -> np.ndarray:
        """[B, L] float64 (NaN = missing) -> [B, H, Q_trained] float32 in the input's units, sorted along Q."""
        standardised, loc, scale = standardise(matrix)
        rows = standardised.shape[0]
        show = rows > batch_size if progress is None else bool(progress)
        max_batch = rows_per_call(batch_size)
        outputs = []
        with tqdm.tqdm(total=rows, desc="forecast", unit="series", disable=not show) as bar:
            for start in range(0, rows, batch_size):
                chunk = standardised[start:start + batch_size]
                outputs.append(rollout.forecast_quantiles(self.params, self.config, chunk, horizon,
                                                          max_batch_size=max_batch, max_context=self.max_context,
                                                          trained_patches=self.output_patch_choices))
                bar.update(chunk.shape[0])
        normalised = np.concatenate(outputs, axis=0).astype(np.float64)
        restored = normalised * scale[:, :, None] + loc[:, :, None]
        return point_and_quantiles(restored, self.quantile_levels)[1].astype(np.float32)

    def forecast(self, inputs: Any, horizon: int, quantiles: Sequence[float] = DEFAULT_QUANTILES,
                 batch_size: int = DEFAULT_BATCH_SIZE, progress: bool | None = None,
                 allow_unobserved: bool = False) -> QuantileForecast:
        """Quantile forecasts of univariate series (stage 1, each series on its own).

        Args:
          inputs: [B, T] array, or a list of B 1-D arrays of any lengths (left-padded with NaN);
            NaN (or inf) marks a missing value. Only the last `max_context` steps are used (see
            the constructor: by default the context length the checkpoint was trained on).
          horizon: H >= 1 steps; longer than `config.max_horizon` rolls out (spec §2.6).
          quantiles: levels in (0, 1) (returned sorted, duplicates dropped); levels the model
            was not trained on are interpolated, with a warning.
          batch_size: series per model call; more than this shows a progress bar.
          progress: True / False forces the bar on / off (default: on when B > batch_size).
          allow_unobserved: forecast series with no observed value (from no information, around 0)
            instead of raising; evaluation over gappy data uses it.
        Returns:
          QuantileForecast(median [B, H], quantiles [B, H, Q], quantile_levels [Q]).
        Raises:
          ValueError: wrong dimensions, an empty or all-NaN series (naming its index), a bad
            horizon, batch size or level.
        """
        self._require_stage1("forecast")
        horizon = check_horizon(horizon)
        levels = check_levels(quantiles)
        batch_size = positive_int(batch_size, "batch_size")
        matrix = series_matrix(inputs, self.max_context)
        if not allow_unobserved:
            check_observed(matrix)
        trained = self._forecast_rows(matrix, horizon, batch_size, progress)
        return QuantileForecast(median=point_and_quantiles(trained, self.quantile_levels)[0],
                                quantiles=self._select_levels(trained, levels).astype(np.float32),
                                quantile_levels=levels)

    def forecast_df(self, df: pd.DataFrame, id_column: str = "unique_id", timestamp_column: str = "ds",
                    target: str = "y", *, horizon: int, quantiles: Sequence[float] = DEFAULT_QUANTILES,
                    batch_size: int = DEFAULT_BATCH_SIZE, progress: bool | None = None) -> pd.DataFrame:
        """Long-format pandas in, long-format pandas out (Nixtla / Chronos conventions).

        Each series' frequency is `pd.infer_freq` of its timestamps, else its median step; when
        every stamp lies on that step's grid, gaps are filled with NaN (missing values).
        A stage-2 (adapted) model forecasts every sensor of its network jointly instead: the frame
        must hold exactly the adapted sensors on one regular grid (see factost_jax/network_frames.py);
        batch_size and progress do not apply.

        Args:
          df: one row per (series id, timestamp) with columns `id_column`, `timestamp_column`
            and `target`; timestamps strictly increasing within each series.
          horizon, quantiles, batch_size, progress: as in `forecast`.
        Returns:
          DataFrame with columns `unique_id` (named `id_column`), `ds` (named
          `timestamp_column`), "median" and one column per level named like "0.1"; `horizon` rows
          per series, in the order the ids first appear.
        """
        horizon = check_horizon(horizon)
        levels = check_levels(quantiles)
        if self.stage == 2:  # the whole network jointly (factost_jax/network_frames.py)
            from factost_jax.network_frames import forecast_network_df

            return forecast_network_df(self, df, id_column, timestamp_column, target, horizon, levels)
        ids, series, futures = read_series_frame(df, id_column, timestamp_column, target, horizon)
        matrix = series_matrix(series, self.max_context)
        check_observed(matrix, names=ids)
        result = self.forecast(list(matrix), horizon, quantiles=levels, batch_size=batch_size, progress=progress)
        return series_forecast_frame(df, id_column, timestamp_column, ids, futures, result.median, result.quantiles,
                                     result.quantile_levels)

    # ------------------------------------------------------------------ stage 2
    def network_quantiles(self, values: np.ndarray, context_calendar: Mapping[str, np.ndarray],
                          future_calendar: Mapping[str, np.ndarray], horizon: int, steps_per_day: int) -> np.ndarray:
        """Stage-2 forecast of windows: [B, T, N] -> [B, H, N, Q_trained], sorted along Q.

        Args:
          values: [B, T, N] float, NaN where missing.
          context_calendar / future_calendar: {"time_of_day": slot 0..steps_per_day-1,
            "day_of_week": Monday = 0} as [B, T] / [B, H] ints (the data layer's convention).
          steps_per_day: steps in one day of the data (maps time-of-day slots to the adapter's bins).
        """
        from factost_jax.model.adapter import adapter_predict
        from factost_jax.network_inputs import adapter_calendars, network_input_scale

        if self.stage != 2:
            raise ValueError("this checkpoint is stage 1; forecast_network needs a stage-2 (adapted) checkpoint")
        horizon = check_horizon(horizon)
        if horizon > self.config.max_horizon:
            raise ValueError(f"horizon {horizon} exceeds the adapted model's one-pass maximum "
                             f"{self.config.max_horizon}; forecast at most {self.config.max_horizon} steps")
        values = np.asarray(values, np.float64)
        if values.ndim != 3:
            raise ValueError(f"values must be [B, T, N], got shape {values.shape}")
        expected_nodes = self.adapter_config.num_nodes
        if values.shape[2] != expected_nodes:
            raise ValueError(f"values have {values.shape[2]} nodes but the stage-2 checkpoint was adapted to "
                             f"{expected_nodes} nodes")
        values = values[:, -self.max_context:]
        context, future = adapter_calendars(self.adapter_config, context_calendar, future_calendar, horizon,
                                            self.max_context, steps_per_day)
        scale = network_input_scale(self.metadata, values)
        out = adapter_predict(self.params, self.config, self.adapter_config, to_model_scale(values, scale),
                              context, future, horizon)  # [B, H, N, Q]
        return point_and_quantiles(to_metric_scale(np.asarray(out), scale, quantile_axis=True),
                                   self.quantile_levels)[1].astype(np.float32)

    def forecast_network(self, values: Any, timestamps: Any, horizon: int,
                         quantiles: Sequence[float] = DEFAULT_QUANTILES) -> QuantileForecast:
        """Adapted (stage-2) forecast of a whole sensor network with the adapter's calendar features.

        Args:
          values: [T, N] float, NaN where missing; N must equal the checkpoint's node count.
          timestamps: [T] datetimes, strictly increasing (their step gives the frequency and the
            time-of-day slots).
          horizon: H, at most `config.max_horizon` (no rollout in stage 2).
          quantiles: levels in (0, 1), interpolated with a warning when untrained.
        Returns:
          QuantileForecast(median [H, N], quantiles [H, N, Q], quantile_levels [Q]).
        """
        if self.stage != 2:
            raise ValueError("this checkpoint is stage 1; forecast_network needs a stage-2 (adapted) checkpoint")
        horizon = check_horizon(horizon)
        levels = check_levels(quantiles)
        values = to_float_series(values, "values")
        if values.ndim != 2:
            raise ValueError(f"values must be [T, N], got shape {values.shape}")
        if values.shape[0] == 0:
            raise ValueError("values has no time steps")
        if not np.isfinite(values).any():
            raise ValueError("values has no observed (finite) value")
        stamps = check_timestamps(timestamps, "timestamps")
        if len(stamps) != values.shape[0]:
            raise ValueError(f"timestamps has {len(stamps)} entries but values has T = {values.shape[0]} steps")
        freq, step = infer_step(stamps, "timestamps")
        steps_per_day = calendar_steps_per_day(step)
        future_stamps = future_timestamps(stamps[-1], freq, horizon)
        context_tod, context_dow = calendar(stamps, steps_per_day)
        future_tod, future_dow = calendar(future_stamps, steps_per_day)
        trained = self.network_quantiles(
            values[None], {"time_of_day": context_tod[None], "day_of_week": context_dow[None]},
            {"time_of_day": future_tod[None], "day_of_week": future_dow[None]}, horizon, steps_per_day)[0]
        return QuantileForecast(median=point_and_quantiles(trained, self.quantile_levels)[0],
                                quantiles=self._select_levels(trained, levels).astype(np.float32),
                                quantile_levels=levels)
