"""Statistical baselines for `evaluate`: AutoETS and AutoTheta from `statsforecast` (optional extra).

Each node of each window is one univariate series: the model is fitted on exactly the L input steps
the evaluated model sees (`[B, L, N] -> [B*N, L]`, as the zero-shot FactoST evaluation does) and
forecasts H steps; the point forecast is the model's mean. Nothing after `target_start` is read.

Season length: the longest natural period of the dataset (one week, then one day, in steps) that
the model can fit from L steps; 1 (non-seasonal) when none fits:
* both models need two full periods in the context (`L >= 2 * P`); AutoTheta's seasonality test and
  classical decomposition need them, and ETS cannot estimate a seasonal state from less;
* AutoETS also needs `P <= 24`: statsforecast's ETS, like R's `forecast::ets`, cannot hold a longer
  seasonal state, so it silently drops the season after fitting every candidate (measured: about
  15 s per 576-step series at P = 288, for a non-seasonal model in the end).
So at the standard protocols only ETTh2 96->96 (hourly, P = 24) is seasonal; 5-, 10- and 15-minute
data with L = 12..96 and AQI36 24->24 are fitted without a season.

Missing values: a missing context value is replaced by the most recent earlier observation (also one
before the window, as the naive baselines do). A context that still holds fewer observed steps than
the model can fit (AutoETS: 7, AutoTheta: 4) is forecast by its last observed value; one with none
is NaN. Every such fallback, and any non-finite model forecast replaced the same way, is counted in
the predictor's `report`, which `run_evaluation` copies into the result.

The models are not scale-equivariant in general (multiplicative components need positive data), so
they see the evaluator's scale: original units for the sensor sets, z-scores for ETTh2 / WEATHER.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from factost_jax.data.types import STDataset
from factost_jax.data.windows import WindowBatch, window_indices
from factost_jax.eval.baselines import forward_fill  # the naive baselines' fill rule, shared

PredictFn = Callable[[WindowBatch], np.ndarray]

STATISTICAL_MODELS = ("autoets", "autotheta")
# The fewest observed steps each statsforecast model fits (it raises "tiny datasets" below them).
MIN_OBSERVED = {"autoets": 7, "autotheta": 4}
# statsforecast's ETS keeps at most 24 seasonal states (ets.py: `if m > 24 ...`).
MAX_SEASON = {"autoets": 24, "autotheta": None}
INSTALL_HINT = "pip install -e '.[baselines]' (or pip install statsforecast)"


def _check_name(name: str) -> None:
    if name not in STATISTICAL_MODELS:
        raise ValueError(f"unknown statistical model {name!r}: expected one of {list(STATISTICAL_MODELS)}")


def natural_periods(dataset: STDataset) -> tuple[int, ...]:
    """The dataset's week and day in steps, longest first; none for daily or coarser sampling."""
    day = dataset.steps_per_day
    return (7 * day, day) if day > 1 else ()


def season_length(name: str, dataset: STDataset, input_len: int) -> int:
    """The season length `name` uses on `input_len`-step contexts of `dataset` (1 = no season)."""
    _check_name(name)
    limit = MAX_SEASON[name]
    for period in natural_periods(dataset):
        if input_len >= 2 * period and (limit is None or period <= limit):
            return int(period)
    return 1


def load_model(name: str, season: int) -> Any:
    """A statsforecast model object; ValueError with the install command when the extra is missing."""
    _check_name(name)
    try:
        from statsforecast.models import AutoETS, AutoTheta
    except ImportError as error:
        raise ValueError(f"{name} needs the optional package statsforecast ({error}): {INSTALL_HINT}") from None
    return AutoETS(season_length=season) if name == "autoets" else AutoTheta(season_length=season)


def forecast_series(model: Any, series: np.ndarray, horizon: int, min_observed: int
                    ) -> tuple[np.ndarray, int]:
    """(`[S, H]` float32 forecasts, number of rows forecast by the last-value fallback) of `series [S, L]`.

    Rows may start with NaN (nothing observed yet) but hold no NaN after their first observation
    (forward-fill them first); ValueError otherwise.
    """
    series = np.asarray(series, dtype=np.float64)
    if series.ndim != 2:
        raise ValueError(f"series must be [S, L], got shape {series.shape}")
    seen = np.logical_or.accumulate(np.isfinite(series), axis=1)
    if (seen & ~np.isfinite(series)).any():
        raise ValueError("series has a missing value after its first observation: forward-fill it first")
    out = np.full((series.shape[0], horizon), np.nan, dtype=np.float64)
    fallbacks = 0
    for row, values in enumerate(series):
        observed = values[np.argmax(np.isfinite(values)):] if np.isfinite(values).any() else values[:0]
        if observed.size == 0:
            continue  # nothing ever observed: no forecast exists, the metric shows it as NaN
        if observed.size >= min_observed:
            with warnings.catch_warnings():
                # numpy divide-by-zero notes inside the fit of flat series; the result is checked below.
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.asarray(model.forecast(y=observed, h=horizon)["mean"], dtype=np.float64)
            if mean.shape == (horizon,) and np.isfinite(mean).all():
                out[row] = mean
                continue
        out[row] = observed[-1]
        fallbacks += 1
    return out.astype(np.float32), fallbacks


def _filled_contexts(batch: WindowBatch, filled_history: np.ndarray) -> np.ndarray:
    """`[B, L, N]` contexts with each missing value replaced by the most recent earlier observation."""
    context_index, _ = window_indices(np.asarray(batch.target_start), batch.input_len, batch.horizon)
    return filled_history[context_index]


def statistical_baseline(name: str, dataset: STDataset) -> PredictFn:
    """`WindowBatch -> [B, H, N]` forecasts of AutoETS or AutoTheta, one fit per window and node.

    The returned function has a `report` dict: "season_length" (of the last batch), "series"
    (fits asked for), "fallback_last_value" (rows forecast by their last observed value instead)
    and "no_observation" (rows with nothing observed, forecast NaN).
    """
    load_model(name, 1)  # fail at construction, not mid-evaluation, when statsforecast is missing
    cache: dict[str, Any] = {"source": None, "filled": None}
    report = {"model": name, "season_length": None, "series": 0, "fallback_last_value": 0, "no_observation": 0}

    def predict(batch: WindowBatch) -> np.ndarray:
        if cache["source"] is not batch.values_full:
            cache["filled"], cache["source"] = forward_fill(batch.values_full), batch.values_full
        contexts = _filled_contexts(batch, cache["filled"])  # [B, L, N]
        windows, length, nodes = contexts.shape
        season = season_length(name, dataset, length)
        series = np.swapaxes(contexts, 1, 2).reshape(windows * nodes, length)
        forecasts, fallbacks = forecast_series(load_model(name, season), series, batch.horizon, MIN_OBSERVED[name])
        empty = int((~np.isfinite(series).any(axis=1)).sum())
        report.update(season_length=season, series=report["series"] + series.shape[0],
                      fallback_last_value=report["fallback_last_value"] + fallbacks,
                      no_observation=report["no_observation"] + empty)
        return forecasts.reshape(windows, nodes, batch.horizon).transpose(0, 2, 1)

    predict.report = report  # type: ignore[attr-defined]
    return predict
