"""A synthetic sensor network that lets every stage-2 command run on a fresh machine.

`synthetic_network(...)` returns an `STDataset`: count-like flows on a random geometric graph with
daily and weekly cycles, a latent demand diffused along edges, noise, incidents that spill over to
neighbours, and missing values. Pure numpy, deterministic in its seed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from factost_jax.data.checks import check_seed
from factost_jax.data.types import STDataset, steps_per_day_for

# --------------------------------------------------------------------------------------------
# Synthetic sensor network: graph
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class SensorGraph:
    """A sparse, symmetric, weighted graph without self loops.

    Attributes:
      positions: `[N, 2]` float64 node coordinates in the unit square.
      senders: `[E]` int64 edge sources, edges sorted by receiver (each undirected edge appears in
        both directions).
      receivers: `[E]` int64 edge targets, sorted.
      weights: `[E]` float32 edge weights in (0, 1].
    """

    positions: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    weights: np.ndarray

    @property
    def num_nodes(self) -> int:
        return self.positions.shape[0]

    @property
    def degree(self) -> np.ndarray:
        """`[N]` int64 number of neighbours."""
        return np.bincount(self.receivers, minlength=self.num_nodes)

    @property
    def row_starts(self) -> np.ndarray:
        """`[N + 1]` CSR offsets: node i's incoming edges are `[row_starts[i], row_starts[i+1])`."""
        return np.concatenate([[0], np.cumsum(self.degree)])

    def dense_adjacency(self) -> np.ndarray:
        """`[N, N]` float32 weighted adjacency (zero diagonal); O(N^2) memory."""
        adjacency = np.zeros((self.num_nodes, self.num_nodes), dtype=np.float32)
        adjacency[self.receivers, self.senders] = self.weights
        return adjacency

    def neighbour_mean(self, x: np.ndarray, max_chunk_elements: int = 1 << 22) -> np.ndarray:
        """Weighted mean over each node's neighbours, `x [T, N] -> [T, N]` (D^-1 A x per row).

        A node without neighbours keeps its own value. Works in time chunks so the `[T, E]`
        gather never exceeds `max_chunk_elements`.
        """
        num_steps = x.shape[0]
        out = x.astype(np.float64, copy=True)
        if self.senders.size == 0:
            return out
        has_neighbours = self.degree > 0
        # reduceat over the starts of the non-empty segments only: an empty segment would
        # otherwise return the next element instead of 0.
        segment_starts = self.row_starts[:-1][has_neighbours]
        weights = self.weights.astype(np.float64)
        weight_sums = np.add.reduceat(weights, segment_starts)[:, None]
        # Node-major layout so the edge gather and the segment sums run over contiguous rows.
        by_node = np.ascontiguousarray(x.T, dtype=np.float64)
        chunk = max(1, max_chunk_elements // self.senders.size)
        for start in range(0, num_steps, chunk):
            block = by_node[self.senders, start : start + chunk] * weights[:, None]
            sums = np.add.reduceat(block, segment_starts, axis=0)
            out[start : start + chunk, has_neighbours] = (sums / weight_sums).T
        return out


def _expand_ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten ranges `[starts[k], starts[k] + counts[k])`.

    Returns (owner `[sum(counts)]` = k of each element, value `[sum(counts)]` = the index).
    """
    owner = np.repeat(np.arange(counts.size), counts)
    offsets = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, np.repeat(starts, counts) + offsets


def random_geometric_graph(num_nodes: int, rng: np.random.Generator, mean_degree: float = 8.0) -> SensorGraph:
    """Nodes uniform in the unit square, an edge between every pair closer than r.

    r is chosen so a node away from the border has ~`mean_degree` neighbours. Pairs are found by
    bucketing nodes into r x r cells and comparing each node only with the 3 x 3 cells around it:
    O(N * mean_degree) time and memory. A node left without neighbours is joined to its nearest
    node so every sensor has spatial context. Weights are a Gaussian kernel of distance,
    exp(-(d / (r / 2))^2), floored at 0.01.
    """
    positions = rng.random((num_nodes, 2))
    if num_nodes == 1:
        empty = np.zeros(0, dtype=np.int64)
        return SensorGraph(positions, empty, empty, np.zeros(0, dtype=np.float32))
    radius = min(math.sqrt(mean_degree / (math.pi * num_nodes)), math.sqrt(2.0))
    cells_per_side = max(1, int(1.0 / radius))
    cell_xy = np.minimum((positions * cells_per_side).astype(np.int64), cells_per_side - 1)
    cell_id = cell_xy[:, 0] * cells_per_side + cell_xy[:, 1]
    order = np.argsort(cell_id, kind="stable")
    cell_starts = np.searchsorted(cell_id[order], np.arange(cells_per_side**2 + 1))

    senders_parts, receivers_parts = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            nx, ny = cell_xy[:, 0] + dx, cell_xy[:, 1] + dy
            valid = (nx >= 0) & (nx < cells_per_side) & (ny >= 0) & (ny < cells_per_side)
            node = np.nonzero(valid)[0]
            neighbour_cell = nx[valid] * cells_per_side + ny[valid]
            start, stop = cell_starts[neighbour_cell], cell_starts[neighbour_cell + 1]
            owner, slot = _expand_ranges(start, stop - start)
            receivers_parts.append(node[owner])
            senders_parts.append(order[slot])
    receivers = np.concatenate(receivers_parts)
    senders = np.concatenate(senders_parts)
    distance = np.linalg.norm(positions[receivers] - positions[senders], axis=1)
    keep = (distance < radius) & (receivers != senders)
    receivers, senders, distance = receivers[keep], senders[keep], distance[keep]

    isolated = np.nonzero(np.bincount(receivers, minlength=num_nodes) == 0)[0]
    if isolated.size:
        # Few nodes (about N * exp(-mean_degree)), so a brute-force nearest search is cheap.
        gaps = np.linalg.norm(positions[isolated, None, :] - positions[None, :, :], axis=2)
        gaps[np.arange(isolated.size), isolated] = np.inf
        nearest = np.argmin(gaps, axis=1)
        extra_r = np.concatenate([isolated, nearest])
        extra_s = np.concatenate([nearest, isolated])
        # An isolated node has no edge yet, so these pairs are new; unique drops mutual-nearest twins.
        pairs = np.unique(np.stack([extra_r, extra_s], axis=1), axis=0)
        receivers = np.concatenate([receivers, pairs[:, 0]])
        senders = np.concatenate([senders, pairs[:, 1]])
        distance = np.concatenate([distance, np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)])

    order = np.lexsort((senders, receivers))
    weights = np.maximum(np.exp(-((distance[order] / (radius / 2.0)) ** 2)), 0.01).astype(np.float32)
    return SensorGraph(positions, senders[order].astype(np.int64), receivers[order].astype(np.int64), weights)


# --------------------------------------------------------------------------------------------
# Synthetic sensor network: signal
# --------------------------------------------------------------------------------------------

SYNTHETIC_START = "2024-01-01 00:00"  # a Monday, so day_of_week 0 is the first day

# Signal knobs (in hours / relative units, so any sampling frequency gets the same dynamics).
_LATENT_TIME_CONSTANT_H = 3.0  # AR(1) correlation time of the regional demand
_COMMON_TIME_CONSTANT_H = 8.0  # network-wide (weather-like) component
_COMMON_SHARE = 0.3
_DIFFUSION_STEPS = 3
_DIFFUSION_RATE = 0.7
_DIFFUSION_LAG_H = 0.25  # each diffusion pass brings a neighbour's state from 15 min ago
_VARIANCE_PROBES = 64
_LATENT_LOG_STD = 0.18  # latent demand moves flows by ~18%
_MULTIPLICATIVE_NOISE = 0.10
_ADDITIVE_NOISE = 0.03  # in units of the node's level
_INCIDENTS_PER_NODE_DAY = 0.08
_INCIDENT_DURATION_H = (0.5, 2.0)
_INCIDENT_FLOW_FACTOR = (0.2, 0.6)
_INCIDENT_SPILLOVER = 0.5
_OUTAGE_SHARE_OF_MISSING = 0.4
_OUTAGE_DURATION_H = (1.0, 6.0)


def _hours_per_step(freq: str) -> float:
    return pd.Timedelta(pd.tseries.frequencies.to_offset(freq)) / pd.Timedelta("1h")


def _bump(hour: np.ndarray, centre: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Gaussian bump on the 24 h circle, `hour [S, 1]`, `centre/width [N] -> [S, N]`."""
    gap = (hour - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (gap / width) ** 2)


def daily_profiles(hour_of_day: np.ndarray, rng: np.random.Generator, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Node-specific weekday and weekend shapes (relative flow), each `[S, N]` for `hour_of_day [S]`.

    Weekdays: a night floor, a morning and an evening commute peak with node-specific amplitudes,
    times and widths (inbound-heavy vs outbound-heavy sensors), and a midday plateau. Weekends: the
    same floor, no commute peaks, a broad late-morning-to-afternoon bump well below weekday peaks.
    """
    hour = hour_of_day[:, None]

    def peak(amplitude: tuple[float, float], centre: float, centre_spread: float,
             width: tuple[float, float]) -> np.ndarray:
        scale = rng.uniform(*amplitude, num_nodes)
        centres = centre + rng.normal(0.0, centre_spread, num_nodes)
        return scale * _bump(hour, centres, rng.uniform(*width, num_nodes))

    floor = rng.uniform(0.08, 0.2, num_nodes)
    morning = peak((0.4, 1.0), 8.0, 0.5, (1.0, 2.0))
    evening = peak((0.4, 1.0), 17.5, 0.5, (1.5, 2.5))
    midday = peak((0.3, 0.6), 13.0, 0.5, (3.0, 3.0))
    weekday = floor + morning + evening + midday
    weekend = floor + peak((0.35, 0.65), 14.0, 1.0, (3.5, 3.5))
    return weekday, weekend


def ar1_paths(num_steps: int, num_series: int, phi: float, rng: np.random.Generator) -> np.ndarray:
    """`[T, num_series]` stationary AR(1) paths with unit variance and lag-1 correlation phi."""
    innovations = rng.standard_normal((num_steps, num_series)) * math.sqrt(1.0 - phi * phi)
    path = np.empty((num_steps, num_series))
    path[0] = rng.standard_normal(num_series)
    for t in range(1, num_steps):
        path[t] = phi * path[t - 1] + innovations[t]
    return path


def _diffuse(graph: SensorGraph, x: np.ndarray, lag: int) -> np.ndarray:
    """`[T, N] -> [T, N]`: `_DIFFUSION_STEPS` passes of x_t <- (1 - a) x_t + a (D^-1 A x)_{t - lag}
    (the first `lag` steps use the first available neighbour mean)."""
    for _ in range(_DIFFUSION_STEPS):
        spread = graph.neighbour_mean(x)
        if lag:
            spread = np.concatenate([np.repeat(spread[:1], lag, axis=0), spread[:-lag]], axis=0)
        x = (1.0 - _DIFFUSION_RATE) * x + _DIFFUSION_RATE * spread
    return x


def latent_demand(graph: SensorGraph, num_steps: int, hours_per_step: float, rng: np.random.Generator) -> np.ndarray:
    """`[T, N]` standardised log-demand shared along edges.

    Independent AR(1) paths per node are diffused over the graph a few times,
    x_t <- (1 - a) x_t + a * (D^-1 A x)_{t - lag}: neighbours become correlated and, through the
    lag, a node's neighbours lead it (as congestion waves do), which is what lets a
    neighbour-aware model beat per-node ones. A small network-wide component is mixed in.
    """
    local = ar1_paths(num_steps, graph.num_nodes, math.exp(-hours_per_step / _LATENT_TIME_CONSTANT_H), rng)
    lag = min(max(1, round(_DIFFUSION_LAG_H / hours_per_step)), num_steps - 1)
    local = _diffuse(graph, local, lag)
    # Diffusion averages independent unit-variance paths and so shrinks their variance by a
    # graph-dependent factor. Measure it on independent probe rows (lag ignored: it barely
    # changes the variance) rather than on the series, which may be only a few steps long.
    probes = _diffuse(graph, rng.standard_normal((_VARIANCE_PROBES, graph.num_nodes)), lag=0)
    local /= math.sqrt(float(np.mean(probes**2)))
    common = ar1_paths(num_steps, 1, math.exp(-hours_per_step / _COMMON_TIME_CONSTANT_H), rng)
    return math.sqrt(1.0 - _COMMON_SHARE**2) * local + _COMMON_SHARE * common


def _interval_indicator(num_steps: int, num_nodes: int, nodes: np.ndarray, starts: np.ndarray,
                        durations: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`[T, N]` sum of `values[k]` over intervals `[starts[k], starts[k] + durations[k])` at `nodes[k]`."""
    delta = np.zeros((num_steps + 1, num_nodes))
    ends = np.minimum(starts + durations, num_steps)
    np.add.at(delta, (starts, nodes), values)
    np.add.at(delta, (ends, nodes), -values)
    return np.cumsum(delta[:-1], axis=0)


def incident_factor(graph: SensorGraph, num_steps: int, hours_per_step: float, rng: np.random.Generator) -> np.ndarray:
    """`[T, N]` multiplicative flow factor (1 = normal) from random incidents.

    An incident cuts a node's flow to 20-60% for 30 min to 2 h; each neighbour loses half as much
    (scaled by the edge weight), one lag later.
    """
    days = num_steps * hours_per_step / 24.0
    counts = rng.poisson(_INCIDENTS_PER_NODE_DAY * days, graph.num_nodes)
    nodes = np.repeat(np.arange(graph.num_nodes), counts)
    starts = rng.integers(0, num_steps, nodes.size)
    low, high = (max(1, round(h / hours_per_step)) for h in _INCIDENT_DURATION_H)
    durations = rng.integers(low, high + 1, nodes.size)
    drop = 1.0 - rng.uniform(*_INCIDENT_FLOW_FACTOR, nodes.size)  # fraction of flow lost

    row_starts = graph.row_starts
    owner, edge = _expand_ranges(row_starts[nodes], row_starts[nodes + 1] - row_starts[nodes])
    neighbour_drop = _INCIDENT_SPILLOVER * drop[owner] * graph.weights[edge]
    delay = max(1, round(_DIFFUSION_LAG_H / hours_per_step))
    all_nodes = np.concatenate([nodes, graph.senders[edge]])
    all_starts = np.minimum(np.concatenate([starts, starts[owner] + delay]), num_steps)
    all_durations = np.concatenate([durations, durations[owner]])
    log_factor = np.log1p(-np.concatenate([drop, neighbour_drop]))
    return np.exp(_interval_indicator(num_steps, graph.num_nodes, all_nodes, all_starts, all_durations, log_factor))


def missing_mask(num_steps: int, num_nodes: int, missing_rate: float, hours_per_step: float,
                 rng: np.random.Generator) -> np.ndarray:
    """`[T, N]` bool, True where missing: occasional 1-6 h outages per node plus random single points.

    Outages take ~40% of the budget; the point-missing probability is then set so the expected
    overall fraction equals `missing_rate`.
    """
    if missing_rate == 0.0:
        return np.zeros((num_steps, num_nodes), dtype=bool)
    low, high = (max(1, round(h / hours_per_step)) for h in _OUTAGE_DURATION_H)
    outage_steps_per_node = _OUTAGE_SHARE_OF_MISSING * missing_rate * num_steps
    counts = rng.poisson(outage_steps_per_node / ((low + high) / 2.0), num_nodes)
    nodes = np.repeat(np.arange(num_nodes), counts)
    durations = rng.integers(low, high + 1, nodes.size)
    starts = rng.integers(0, num_steps, nodes.size)
    outage = _interval_indicator(num_steps, num_nodes, nodes, starts, durations, np.ones(nodes.size)) > 0
    budget_left = missing_rate * num_steps * num_nodes - outage.sum()
    point_rate = max(0.0, budget_left / max(1, (~outage).sum()))
    return outage | (rng.random((num_steps, num_nodes)) < point_rate)


def synthetic_network(num_nodes: int = 64, num_days: int = 28, freq: str = "5min", seed: int = 0,
                      missing_rate: float = 0.02, num_steps: int | None = None) -> STDataset:
    """A synthetic traffic-like sensor network as an `STDataset` (name "SYNTHETIC").

    values `[T, N, 1]` float32 non-negative integer flows with NaN where missing, T = num_days *
    steps_per_day(freq) unless `num_steps` is given; timestamps from Monday 2024-01-01 00:00;
    adjacency `[N, N]` symmetric weighted random geometric graph; split 6:2:2, global z-score,
    null_val 0.0, metrics in original units. Cost O(N * T) plus the O(N^2) float32 adjacency
    (256 MB at N = 8,000).

    flow[t, n] = round(max(0, level_n * shape_n(time of day, weekday or weekend) * exp(latent[t, n])
                 * incident[t, n] * lognormal noise + additive noise)).
    """
    for name, value, minimum in (("num_nodes", num_nodes, 1), ("num_days", num_days, 1)):
        if not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"synthetic_network: {name} must be an int >= {minimum}, got {value!r}")
    if num_steps is not None and (not isinstance(num_steps, (int, np.integer)) or num_steps < 2):
        raise ValueError(f"synthetic_network: num_steps must be None or an int >= 2, got {num_steps!r}")
    if not 0.0 <= float(missing_rate) < 1.0:
        raise ValueError(f"synthetic_network: missing_rate must be in [0, 1), got {missing_rate!r}")
    check_seed(seed, "synthetic_network: seed")
    try:
        hours_per_step = _hours_per_step(freq)
        steps_per_day = steps_per_day_for(freq)
    except (ValueError, TypeError) as error:
        raise ValueError(f"synthetic_network: freq must be a fixed pandas frequency such as '5min' or '1h', "
                         f"got {freq!r}") from error
    num_steps = int(num_days) * steps_per_day if num_steps is None else int(num_steps)
    num_nodes = int(num_nodes)

    graph_rng, profile_rng, latent_rng, incident_rng, noise_rng, missing_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(int(seed)).spawn(6))
    graph = random_geometric_graph(num_nodes, graph_rng)

    timestamps = pd.date_range(SYNTHETIC_START, periods=num_steps, freq=freq)
    hour = np.asarray(timestamps.hour + timestamps.minute / 60.0 + timestamps.second / 3600.0)
    slot_hours, slot = np.unique(hour, return_inverse=True)
    weekend = np.asarray(timestamps.day_of_week >= 5)
    weekday_shape, weekend_shape = daily_profiles(slot_hours, profile_rng, num_nodes)
    level = np.exp(profile_rng.normal(math.log(120.0), 0.6, num_nodes))
    shape = np.where(weekend[:, None], weekend_shape[slot], weekday_shape[slot])

    latent = latent_demand(graph, num_steps, hours_per_step, latent_rng)
    demand = np.exp(_LATENT_LOG_STD * latent - 0.5 * _LATENT_LOG_STD**2)
    rate = level * shape * demand * incident_factor(graph, num_steps, hours_per_step, incident_rng)

    noise = noise_rng.standard_normal((2, num_steps, num_nodes))
    flow = rate * np.exp(_MULTIPLICATIVE_NOISE * noise[0] - 0.5 * _MULTIPLICATIVE_NOISE**2)
    flow += _ADDITIVE_NOISE * level * noise[1]
    flow = np.round(np.maximum(flow, 0.0)).astype(np.float32)
    flow[missing_mask(num_steps, num_nodes, float(missing_rate), hours_per_step, missing_rng)] = np.nan

    return STDataset(
        name="SYNTHETIC",
        values=flow[:, :, None],
        freq=freq,
        timestamps=timestamps.values,
        adjacency=graph.dense_adjacency(),
        channel_names=("flow",),
        split_ratios=(0.6, 0.2, 0.2),
        norm="global",
        null_val=0.0,
        rescale=True,
        domain="synthetic",
    )
