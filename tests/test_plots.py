"""Forecast plots: files are written, bands are drawn outermost-lightest, bad shapes are refused."""

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from factost_jax.plots import band_pairs, plot_forecast, plot_network, save_figure

LEVELS = np.array([0.1, 0.2, 0.5, 0.8, 0.9])


def fan(horizon, nodes=None):
    """Median and nested quantiles [H(, N), 5] around a ramp."""
    shape = (horizon,) if nodes is None else (horizon, nodes)
    median = np.broadcast_to(np.linspace(0, 1, horizon).reshape(-1, *([1] * (len(shape) - 1))), shape)
    offsets = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    return median, median[..., None] + offsets


def bands(ax):
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_band_pairs_outermost_first():
    assert band_pairs(LEVELS) == [(0, 4), (1, 3)]
    assert band_pairs([0.1, 0.9]) == [(0, 1)]
    assert band_pairs([0.5]) == []


def test_plot_forecast_draws_nested_bands_and_saves_png(tmp_path):
    median, quantiles = fan(24)
    ax = plot_forecast(np.sin(np.arange(48) / 4.0), median, quantiles, LEVELS, truth=median + 0.1, title="one series")
    drawn = bands(ax)
    assert len(drawn) == 2
    outer, inner = (band.get_facecolor()[0][3] for band in drawn)
    assert outer < inner  # the outermost band is the lightest
    outer_y = drawn[0].get_paths()[0].vertices[:, 1]
    assert outer_y.min() == pytest.approx(-2.0) and outer_y.max() == pytest.approx(3.0)
    labels = [line.get_label() for line in ax.get_lines()]
    assert {"context", "median", "truth"} <= set(labels)
    assert ax.get_title() == "one series"
    path = save_figure(ax.figure, tmp_path / "sub" / "one.png")
    assert path.is_file() and path.stat().st_size > 5_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_forecast_point_only_and_on_given_axes():
    figure = Figure()
    ax = figure.add_subplot()
    assert plot_forecast(np.arange(10.0), np.arange(5.0), ax=ax) is ax
    assert bands(ax) == []


def test_plot_network_grid_of_sensors(tmp_path):
    median, quantiles = fan(12, nodes=8)
    figure = plot_network(np.random.default_rng(0).standard_normal((36, 8)), median, quantiles, LEVELS,
                          truth=median, nodes=[0, 2, 5, 7], ncols=3, node_names=[f"s{i}" for i in range(8)],
                          title="network")
    visible = [ax for ax in figure.axes if ax.get_visible()]
    assert len(figure.axes) == 6 and len(visible) == 4  # a 2 x 3 grid, the spare panels hidden
    assert [ax.get_title() for ax in visible] == ["s0", "s2", "s5", "s7"]
    assert all(len(bands(ax)) == 2 for ax in visible)
    assert visible[0].get_legend() is not None and visible[1].get_legend() is None
    path = save_figure(figure, tmp_path / "network.png")
    assert path.stat().st_size > 10_000


@pytest.mark.parametrize("call, message", [
    (lambda: plot_forecast(np.zeros(5), np.zeros(4), np.zeros((4, 2)), [0.1, 0.9, 0.5]),
     r"quantiles must be \[4, 'Q'\] with Q = len\(levels\) = 3"),
    (lambda: plot_forecast(np.zeros(5), np.zeros(4), np.zeros((4, 2))), "levels are required"),
    (lambda: plot_forecast(np.zeros(5), np.zeros(4), np.zeros((4, 2)), [0.9, 0.1]), "strictly increasing"),
    (lambda: plot_forecast(np.zeros((5, 2)), np.zeros(4)), r"context must have 1 dimension\(s\)"),
    (lambda: plot_forecast(np.zeros(5), np.zeros(4), truth=np.zeros(3)), r"truth must be \[H=4\]"),
    (lambda: plot_network(np.zeros((5, 3)), np.zeros((4, 2))), "context has 3 nodes but median has 2"),
    (lambda: plot_network(np.zeros((5, 2)), np.zeros((4, 2)), nodes=[2]), r"indices in \[0, 2\)"),
    (lambda: plot_network(np.zeros((5, 2)), np.zeros((4, 2)), ncols=0), "ncols must be a positive int"),
    (lambda: save_figure(Figure(), "plot.jpg"), "does not end in .png"),
    (lambda: save_figure("figure", "plot.png"), "expects a matplotlib Figure"),
])
def test_bad_plot_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()
