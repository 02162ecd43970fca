"""Forecast plots with shaded quantile bands (matplotlib, no display needed).

Figures are built with `matplotlib.figure.Figure` and written through the Agg canvas, so nothing
here touches pyplot's global state or needs a display: a notebook keeps its inline backend, a
server writes PNGs. The context is drawn at steps -T..-1 and the forecast at 0..H-1.

Bands pair the i-th lowest level with the i-th highest (0.1 with 0.9, 0.2 with 0.8, ...); the
outermost pair is the lightest, so nested bands read as a fan.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["band_pairs", "plot_forecast", "plot_network", "save_figure"]

CONTEXT_COLOR = "0.25"
FORECAST_COLOR = "tab:blue"
TRUTH_COLOR = "tab:orange"
MIN_BAND_ALPHA = 0.15  # the outermost band
MAX_BAND_ALPHA = 0.45  # the innermost band


def band_pairs(levels: Sequence[float]) -> list[tuple[int, int]]:
    """(lower index, upper index) of each band, outermost first, for levels sorted ascending."""
    count = len(levels)
    return [(i, count - 1 - i) for i in range(count // 2) if levels[i] < levels[count - 1 - i]]


def _band_alpha(rank: int, num_bands: int) -> float:
    if num_bands <= 1:
        return MAX_BAND_ALPHA
    return MIN_BAND_ALPHA + (MAX_BAND_ALPHA - MIN_BAND_ALPHA) * rank / (num_bands - 1)


def _percent(level: float) -> str:
    return f"{100 * level:g}%"


def _as_array(value, name: str, ndim: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {array.shape}")
    return array


def _check_levels(quantiles: np.ndarray | None, levels, horizon_shape: tuple[int, ...]) -> np.ndarray | None:
    if quantiles is None:
        return None
    if levels is None:
        raise ValueError("levels are required when quantiles are given")
    levels = np.asarray(levels, dtype=np.float64)
    if levels.ndim != 1 or quantiles.shape != horizon_shape + levels.shape:
        raise ValueError(f"quantiles must be {list(horizon_shape) + ['Q']} with Q = len(levels) = {levels.size}, "
                         f"got shape {quantiles.shape}")
    if np.any(np.diff(levels) <= 0):
        raise ValueError(f"levels must be strictly increasing, got {levels.tolist()}")
    return levels


def plot_forecast(context, median, quantiles=None, levels=None, truth=None, ax: Axes | None = None,
                  title: str | None = None, legend: bool = True) -> Axes:
    """One series: its context, the median forecast, quantile bands and the truth when known.

    Args:
      context: [T] history (NaN gaps are drawn as gaps).
      median: [H] point forecast.
      quantiles: [H, Q] forecast quantiles at `levels`, or None for a point forecast only.
      levels: [Q] increasing levels of `quantiles`.
      truth: [H] observed future, or None.
      ax: Axes to draw on (default: a new Figure with one Axes).
      title: Axes title.
      legend: draw the legend.
    Returns:
      the Axes drawn on (`ax.figure` is its Figure).
    """
    context = _as_array(context, "context", 1)
    median = _as_array(median, "median", 1)
    horizon = median.shape[0]
    quantiles = None if quantiles is None else _as_array(quantiles, "quantiles", 2)
    levels = _check_levels(quantiles, levels, (horizon,))
    if truth is not None:
        truth = _as_array(truth, "truth", 1)
        if truth.shape != median.shape:
            raise ValueError(f"truth must be [H={horizon}] like median, got shape {truth.shape}")
    if ax is None:
        ax = Figure(figsize=(8, 3.2), layout="constrained").add_subplot()
    past = np.arange(-context.shape[0], 0)
    future = np.arange(horizon)
    ax.plot(past, context, color=CONTEXT_COLOR, linewidth=1.0, label="context")
    if quantiles is not None:
        pairs = band_pairs(levels)
        for rank, (lower, upper) in enumerate(pairs):
            ax.fill_between(future, quantiles[:, lower], quantiles[:, upper], color=FORECAST_COLOR,
                            alpha=_band_alpha(rank, len(pairs)), linewidth=0,
                            label=f"{_percent(levels[lower])}-{_percent(levels[upper])}")
    ax.plot(future, median, color=FORECAST_COLOR, linewidth=1.5, label="median")
    if truth is not None:
        ax.plot(future, truth, color=TRUTH_COLOR, linewidth=1.0, label="truth")
    ax.axvline(-0.5, color="0.6", linewidth=0.8, linestyle=":")
    ax.set_xlabel("step (0 = first forecast step)")
    if title:
        ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(loc="upper left", fontsize=7, ncols=2, frameon=False)
    return ax


def plot_network(context, median, quantiles=None, levels=None, truth=None, nodes: Sequence[int] | None = None,
                 ncols: int = 3, node_names: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """A grid of a few sensors of a network forecast, one `plot_forecast` panel each.

    Args:
      context: [T, N] history.
      median: [H, N] point forecasts.
      quantiles: [H, N, Q] at `levels`, or None.
      levels: [Q] increasing levels.
      truth: [H, N] observed future, or None.
      nodes: indices of the sensors to show (default: the first min(N, 6)).
      ncols: panels per row.
      node_names: [N] labels for the panel titles (default "node i").
      title: figure title.
    Returns:
      the Figure.
    """
    context = _as_array(context, "context", 2)
    median = _as_array(median, "median", 2)
    horizon, num_nodes = median.shape
    if context.shape[1] != num_nodes:
        raise ValueError(f"context has {context.shape[1]} nodes but median has {num_nodes}")
    quantiles = None if quantiles is None else _as_array(quantiles, "quantiles", 3)
    levels = _check_levels(quantiles, levels, (horizon, num_nodes))
    if truth is not None:
        truth = _as_array(truth, "truth", 2)
        if truth.shape != median.shape:
            raise ValueError(f"truth must be [H, N] = {list(median.shape)} like median, got shape {truth.shape}")
    nodes = list(range(min(num_nodes, 6))) if nodes is None else [int(n) for n in nodes]
    if not nodes or any(not 0 <= n < num_nodes for n in nodes):
        raise ValueError(f"nodes must be a non-empty list of indices in [0, {num_nodes}), got {nodes}")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    if node_names is not None and len(node_names) != num_nodes:
        raise ValueError(f"node_names must have N = {num_nodes} entries, got {len(node_names)}")
    ncols = min(ncols, len(nodes))
    nrows = math.ceil(len(nodes) / ncols)
    figure = Figure(figsize=(4.2 * ncols, 2.8 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    for index, (panel, node) in enumerate(zip(axes.flat, nodes)):
        name = node_names[node] if node_names is not None else f"node {node}"
        plot_forecast(context[:, node], median[:, node], None if quantiles is None else quantiles[:, node],
                      levels, None if truth is None else truth[:, node], ax=panel, title=str(name),
                      legend=index == 0)
    for panel in list(axes.flat)[len(nodes):]:
        panel.set_visible(False)
    if title:
        figure.suptitle(title)
    return figure


def save_figure(figure: Figure, path: str | os.PathLike, dpi: int = 110) -> pathlib.Path:
    """Writes `figure` as a PNG at `path` (parent folders created); returns the path."""
    if not isinstance(figure, Figure):
        raise ValueError(f"save_figure expects a matplotlib Figure, got {type(figure).__name__}")
    path = pathlib.Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG files; {path} does not end in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    if type(figure.canvas) is FigureCanvasBase:  # a bare Figure: render it with Agg, not a GUI backend
        FigureCanvasAgg(figure)
    figure.savefig(path, dpi=dpi, format="png")
    return path
