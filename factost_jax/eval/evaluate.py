"""Per-horizon evaluation of a forecaster over a whole split, BasicTS conventions.

`evaluate` (in `scoring.py`, shared with stage-2 validation, re-exported here) streams every window
of a split through a forecaster and accumulates the BasicTS metrics.

`run_evaluation` is what `launch/evaluate.py` calls: load a dataset by name, build a baseline or load a
checkpoint, evaluate. A stage-1 checkpoint is evaluated zero-shot and channel-independently: every
node's context window is one univariate series (`[B, L, N] -> [B*N, L]`) for the `Forecaster`, whose
median is the point forecast and whose trained quantiles give QL and coverage. A stage-2 checkpoint
forecasts whole windows `[B, L, N]` with its adapter and the windows' calendar.

Zero-shot honesty: a checkpoint whose metadata shows that its pretraining corpus held the evaluated
dataset (or a recording of the same sensors, `SAME_SOURCE`; see `data/leakage.py`, which stage 2
asks too) is refused unless `allow_overlap`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from factost_jax.data.leakage import SAME_SOURCE, describe_overlap, pretraining_corpus, pretraining_overlap
from factost_jax.data.types import STDataset
from factost_jax.data.windows import WindowBatch, split_target_starts, window_indices
from factost_jax.eval import baselines
from factost_jax.model.quantiles import point_and_quantiles
from factost_jax.scoring import ForecastOutput, evaluate, forecast_windows, json_safe, metric_scale_series

__all__ = ["SAME_SOURCE", "WindowBatch", "checkpoint_predictor", "evaluate", "format_comparison", "format_table",
           "json_safe", "metric_scale_series", "plot_evaluation_windows", "prepare_evaluation", "pretraining_corpus",
           "pretraining_overlap", "run_evaluation", "sample_window_forecasts"]

CHECKPOINT_ROWS_PER_CALL = 1024  # series per model call when evaluating a checkpoint
COMPARISON_COLUMNS = ("MAE", "RMSE", "MAPE", "QL", "coverage_80")


def _last_observed_context(history: np.ndarray, start: int, input_len: int, max_context: int) -> np.ndarray:
    """The context for a node whose input window `[start - input_len, start)` is all missing.

    `history` is the node's whole series [T]. Returns the `input_len` steps ending at the last
    observation before `start`, followed by the missing gap up to `start` (so the model sees how
    long the gap is), capped at `max_context` steps; all NaN when nothing before `start` is observed.
    """
    observed = np.flatnonzero(np.isfinite(history[:start]))
    if observed.size == 0:
        return history[max(0, start - input_len):start]
    begin = max(0, int(observed[-1]) + 1 - input_len, start - max_context)
    return history[begin:start]


def checkpoint_predictor(forecaster: Any, dataset: STDataset,
                         rows_per_call: int = CHECKPOINT_ROWS_PER_CALL) -> Callable[[WindowBatch], ForecastOutput]:
    """`WindowBatch -> (median [B, H, N], quantiles [B, H, N, Q], levels [Q])` of a `Forecaster`.

    Stage 1: channel independent, one series per (window, node). A node whose whole input window is
    unobserved is given its last `input_len` observed steps before the window and the gap after
    them instead (as the baselines fall back to earlier observations); with nothing observed
    before the window it is forecast from no information.
    Stage 2: whole windows through the adapter with the windows' calendar.
    Either way the model sees at most the forecaster's `max_context` steps of each window (the
    returned function's `max_context` attribute).
    """
    levels = forecaster.quantile_levels
    max_context = forecaster.max_context

    def predict_stage2(batch: WindowBatch) -> ForecastOutput:
        quantiles = forecaster.network_quantiles(
            batch.context, {"time_of_day": batch.context_time_of_day, "day_of_week": batch.context_day_of_week},
            {"time_of_day": batch.future_time_of_day, "day_of_week": batch.future_day_of_week},
            batch.horizon, dataset.steps_per_day)
        median, quantiles = point_and_quantiles(quantiles, levels)
        return median, quantiles, levels

    def predict_stage1(batch: WindowBatch) -> ForecastOutput:
        windows, length, nodes = batch.context.shape
        series = np.swapaxes(batch.context, 1, 2).reshape(windows * nodes, length)
        empty = np.flatnonzero(~np.isfinite(series).any(axis=1))
        out = forecaster.forecast(series, batch.horizon, quantiles=levels, batch_size=rows_per_call,
                                  progress=False, allow_unobserved=True)
        median, quantiles = np.array(out.median), np.array(out.quantiles)  # [W*N, H], [W*N, H, Q]
        if empty.size:
            # A separate call: padded together with the dense rows, these longer contexts would
            # make every row of the batch pay for the longest one.
            fallback = [_last_observed_context(batch.values_full[:, row % nodes], int(batch.target_start[row // nodes]),
                                               length, max_context) for row in empty]
            redo = forecaster.forecast(fallback, batch.horizon, quantiles=levels, batch_size=rows_per_call,
                                       progress=False, allow_unobserved=True)
            median[empty], quantiles[empty] = redo.median, redo.quantiles
        median = median.reshape(windows, nodes, -1)
        quantiles = quantiles.reshape(windows, nodes, batch.horizon, -1)
        return median.transpose(0, 2, 1), quantiles.transpose(0, 2, 1, 3), out.quantile_levels

    predict = predict_stage1 if forecaster.stage == 1 else predict_stage2
    predict.max_context = max_context
    return predict


def prepare_evaluation(dataset_name: str, model_name: str | None, data_dir: str | None = None,
                       checkpoint: str | None = None, allow_overlap: bool = False, file_options: Any = None,
                       max_context: int | None = None
                       ) -> tuple[STDataset, str, Callable[[WindowBatch], ForecastOutput]]:
    """(dataset, model label, predict_fn) for a baseline name or a checkpoint path (exactly one).

    The label is the baseline name or "factost:<checkpoint step dir>". Raises ValueError for an
    unknown model or dataset and for a checkpoint pretrained on the evaluated data (unless
    `allow_overlap`), FileNotFoundError for missing files. A user file (`dataset_name` ending in .csv /
    .parquet / .npz) is read with `file_options` (a mapping of `user_files.FileSourceOptions` fields);
    for a checkpoint adapted on that same file (or fitted on a DataFrame), the options it recorded fill in the
    ones not given (`user_files.recorded_file_options`).
    `max_context`: the checkpoint sees at most this many steps of each window (default: the context
    length it was trained on; more warns, see `Forecaster.set_max_context`).
    """
    if (model_name is None) == (checkpoint is None):
        raise ValueError("give exactly one of a baseline model name and a checkpoint")
    from factost_jax.data.formats import canonical_name, load_dataset  # only the CLI path needs the readers

    if checkpoint is None:
        if model_name not in baselines.BASELINES:
            raise ValueError(f"unknown model {model_name!r}: expected one of {sorted(baselines.BASELINES)}")
        dataset = load_dataset(dataset_name, data_dir, file_options=file_options)
        return dataset, model_name, baselines.make_baseline(model_name, dataset)
    from factost_jax.forecast import Forecaster

    forecaster = Forecaster.load(checkpoint, max_context=max_context)
    overlap = pretraining_overlap(forecaster.metadata, dataset_name)
    if overlap and not allow_overlap:
        raise ValueError(f"checkpoint {forecaster.path}: its pretraining corpus contains "
                         f"{describe_overlap(overlap, dataset_name)}, so a zero-shot result on "
                         f"{canonical_name(dataset_name)} would be leaked; evaluate another dataset or pass --allow_overlap")
    from factost_jax.data.user_files import recorded_file_options

    options = {**recorded_file_options(forecaster.metadata, dataset_name), **dict(file_options or {})}
    dataset = load_dataset(dataset_name, data_dir, file_options=options)
    return dataset, f"factost:{forecaster.path}", checkpoint_predictor(forecaster, dataset)


def run_evaluation(dataset_name: str, model_name: str | None, input_len: int, horizon: int, split: str = "test",
                   data_dir: str | None = None, batch_size: int = 256, channel: int = 0,
                   checkpoint: str | None = None, progress: bool = True, allow_overlap: bool = False,
                   window_stride: int = 1, file_options: Any = None, max_context: int | None = None
                   ) -> dict[str, Any]:
    """Loads `dataset_name`, builds baseline `model_name` or loads `checkpoint`, and evaluates it.

    Returns `evaluate`'s dict with "model" added after "dataset" (the baseline name, or
    "factost:<step dir>" for a checkpoint), "max_context" for a checkpoint (the most steps of each
    window it saw), and "fit_report" for a forecaster that keeps a `report` (the statistical
    baselines: season length, fallbacks). Raises ValueError / FileNotFoundError for
    user errors (unknown dataset or model, impossible lengths, missing files, a leaked zero-shot
    evaluation, a missing optional package).
    """
    dataset, label, predict_fn = prepare_evaluation(dataset_name, model_name, data_dir, checkpoint, allow_overlap,
                                                    file_options, max_context)
    result = evaluate(dataset, predict_fn, input_len, horizon, split=split, batch_size=batch_size,
                      channel=channel, progress=progress, window_stride=window_stride)
    report = getattr(predict_fn, "report", None)
    seen = getattr(predict_fn, "max_context", None)
    return {"dataset": result.pop("dataset"), "model": label, **result,
            **({"max_context": seen} if seen is not None else {}),
            **({"fit_report": dict(report)} if report is not None else {})}


def sample_window_forecasts(dataset: STDataset, predict_fn: Callable[[WindowBatch], ForecastOutput], input_len: int,
                            horizon: int, split: str = "test", channel: int = 0, num_windows: int = 2
                            ) -> list[dict[str, Any]]:
    """Forecasts of `num_windows` evenly spaced windows of `split`, for plots.

    Returns one dict per window: "start" (target start step), "context" [L, N], "truth" [H, N] (NaN
    where unobserved), "median" [H, N], "quantiles" [H, N, Q] or None, "levels" [Q] or None.
    """
    if isinstance(num_windows, bool) or int(num_windows) != num_windows or num_windows < 1:
        raise ValueError(f"num_windows must be a positive integer, got {num_windows!r}")
    starts = split_target_starts(dataset, split, input_len, horizon)
    chosen = np.unique(starts[np.linspace(0, starts.size - 1, int(num_windows)).round().astype(np.int64)])
    series, observed = metric_scale_series(dataset, channel)
    future_index, point, quantiles, levels = forecast_windows(
        dataset, series, chosen, input_len, horizon, predict_fn, dataset.time_of_day, dataset.day_of_week)
    context_index, _ = window_indices(chosen, input_len, horizon)
    truth = np.where(observed[future_index], series[future_index], np.nan)
    return [{"start": int(start), "context": series[context_index[i]], "truth": truth[i], "median": point[i],
             "quantiles": None if quantiles is None else quantiles[i], "levels": levels}
            for i, start in enumerate(chosen)]


PLOT_LEVELS = (0.1, 0.3, 0.7, 0.9)


def _plot_levels(quantiles: np.ndarray | None, levels: np.ndarray | None
                 ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The PLOT_LEVELS among `levels` ([..., Q] -> [..., Q']), or everything when fewer than two are present."""
    if quantiles is None or levels is None:
        return quantiles, levels
    keep = [i for i, level in enumerate(levels) if np.any(np.isclose(level, PLOT_LEVELS))]
    if len(keep) < 2:
        return quantiles, levels
    return quantiles[..., keep], np.asarray(levels)[keep]


def plot_evaluation_windows(dataset_name: str, model_name: str | None, input_len: int, horizon: int, out_dir: str,
                            split: str = "test", data_dir: str | None = None, channel: int = 0,
                            checkpoint: str | None = None, allow_overlap: bool = False, num_windows: int = 2,
                            max_nodes: int = 6, file_options: Any = None, max_context: int | None = None
                            ) -> list[Any]:
    """Writes one PNG per sampled window (up to `max_nodes` sensors each, quantile bands when the
    model gives them) into `out_dir`; returns the paths."""
    import pathlib

    from factost_jax import plots

    dataset, label, predict_fn = prepare_evaluation(dataset_name, model_name, data_dir, checkpoint, allow_overlap,
                                                    file_options, max_context)
    windows = sample_window_forecasts(dataset, predict_fn, input_len, horizon, split, channel, num_windows)
    nodes = list(range(min(dataset.num_nodes, max_nodes)))
    for window in windows:  # two bands (10-90 %, 30-70 %) read better than the eleven trained levels
        window["quantiles"], window["levels"] = _plot_levels(window["quantiles"], window["levels"])
    names = [str(n) for n in dataset.node_ids] if dataset.node_ids and len(dataset.node_ids) == dataset.num_nodes \
        else None
    model_tag = "factost" if checkpoint is not None else str(model_name)
    paths = []
    for window in windows:
        figure = plots.plot_network(window["context"], window["median"], window["quantiles"], window["levels"],
                                    truth=window["truth"], nodes=nodes, node_names=names,
                                    title=f"{dataset.name} | {label} | {split} window at step {window['start']}")
        path = pathlib.Path(out_dir) / f"{dataset.name.replace(':', '_')}_{model_tag}_{split}_{window['start']}.png"
        paths.append(plots.save_figure(figure, path))
    return paths


def format_comparison(results: Sequence[dict[str, Any]]) -> str:
    """One table with a row per model: the "avg" metrics of each result (nan where a model has none)."""
    if not results:
        raise ValueError("format_comparison needs at least one result")
    first = results[0]
    title = " | ".join(str(part) for part in (first.get("dataset"), first.get("split"),
                                               f"{first.get('input_len')}->{first.get('horizon')}",
                                               _windows_note(first), "avg") if part)
    width = max(len("model"), *(len(str(r.get("model"))) for r in results)) + 2
    lines = [title, f"{'model':<{width}}" + "".join(f"{name:>12}" for name in COMPARISON_COLUMNS)]
    for result in results:
        row = result["metrics"]["avg"]
        cells = "".join(f"{_format_number(row.get(name, float('nan'))):>12}" for name in COMPARISON_COLUMNS)
        lines.append(f"{str(result.get('model')):<{width}}{cells}")
    return "\n".join(lines)


def format_table(result: dict[str, Any]) -> str:
    """The per-horizon table of an evaluation result: rows avg, step_k; columns MAE, RMSE, MAPE (+ QL, coverage)."""
    rows = result["metrics"]
    columns = list(next(iter(rows.values())))
    title = " | ".join(str(part) for part in (result.get("dataset"), result.get("model"), result.get("split"),
                                               f"{result.get('input_len')}->{result.get('horizon')}",
                                               _windows_note(result)) if part)
    lines = [title, f"{'':<8}" + "".join(f"{name:>12}" for name in columns)]
    for row_name, row in rows.items():
        cells = "".join(f"{_format_number(row[name]):>12}" for name in columns)
        lines.append(f"{row_name:<8}{cells}")
    return "\n".join(lines)


def _windows_note(result: dict[str, Any]) -> str:
    """"window stride 4: 372 of 1488 windows" for a subsampled evaluation, "" otherwise."""
    stride = result.get("window_stride", 1)
    if stride == 1:
        return ""
    return f"window stride {stride}: {result.get('num_windows')} of {result.get('split_windows')} windows"


def _format_number(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.4f}"


