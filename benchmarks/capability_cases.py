"""Synthetic capability cases for `benchmarks/sanity.py`: series a forecaster must handle, with references.

Every case is a batch of B series with a context the model sees ([B, C]), the held-out horizon
([B, H]) and the forecast of a simple reference that is hard to beat on that family ([B, H]). The
score of a case is the model's MAE over the batch and horizon divided by the reference's MAE.

Families and their references:

* `sine`, `rectified` (max(sin, 0): a daytime-only profile), `square` (tanh of 3 sin, a smooth
  square wave), `two_periods` (period P plus a component at period P/3, so P stays the true
  period): amplitude 2-5, unit Gaussian noise. Reference: seasonal naive with the true period P.
* `trend_season`: a sine of period P on a linear trend. Reference: an oracle that knows the trend
  line exactly and applies seasonal naive to the detrended series, so it is at least as good as
  the best possible trend extrapolation.
* `level_shift`: a piecewise-constant level (1-4 jumps inside the context) plus unit noise.
  Reference: the last value.
* `intermittent`: mostly zeros with occasional positive demands (probability 0.1-0.4, sizes
  1 + Poisson(3)). Reference: the context mean (the MAE-optimal median is often 0, so a model can
  beat it).
* `random_walk`: cumulative unit Gaussian steps. Reference: the last value (the optimal forecast).
* `spikes`: the `sine` family with 2 % of the context replaced by outliers of 8-15 noise standard
  deviations, never inside the last period, so the reference (seasonal naive) copies a clean
  period and the ratio measures what the outliers do to the model.

Determinism: each case draws from `numpy.random.default_rng` seeded by a CRC32 of its name (Python's
`hash` is salted per process), so a case is the same in every run and on every machine,
independent of which other cases are generated.

The reference may look further back than the model's context (seasonal naive needs P steps of
history even when C < P, like the harness's `seasonal_naive_day`); the series are generated long
enough for both.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence

import numpy as np

SEASONAL_SHAPES = ("sine", "rectified", "square", "two_periods")
OTHER_FAMILIES = ("trend_season", "level_shift", "intermittent", "random_walk", "spikes")
FAMILIES = SEASONAL_SHAPES + OTHER_FAMILIES
PERIODS = (12, 24, 96, 144, 288, 672)
# Periods of the families that test something other than the seasonal shape itself (cheaper).
TREND_PERIODS = (24, 144)
SPIKE_PERIODS = (24, 96)
# Contexts of the non-seasonal families, before the trained maximum is added.
FLAT_CONTEXTS = (96, 512)
# The aperiodic families get this many times the series of a periodic case: their error is dominated
# by the level the walk or the demand reaches over the horizon, which varies a lot between series, so
# the ratio needs more of them to settle (and they are few cases at short contexts: cheap).
FLAT_SERIES_FACTOR = 4
FLAT_HORIZON = 24
MAX_SEASONAL_HORIZON = 96
NOISE_STD = 1.0

REFERENCES = {
    "sine": "seasonal_naive", "rectified": "seasonal_naive", "square": "seasonal_naive",
    "two_periods": "seasonal_naive", "spikes": "seasonal_naive", "trend_season": "trend_oracle",
    "level_shift": "last_value", "intermittent": "context_mean", "random_walk": "last_value",
}


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One synthetic case.

    Attributes:
      family: one of FAMILIES.
      period: the true period P (None for the aperiodic families).
      context_label: how the context length was chosen ("2 periods", "512", "trained max"; joined
        with " = " when several choices give the same length).
      inputs: [B, C] float64, the context the model sees.
      target: [B, H] float64, the held-out horizon.
      reference_forecast: [B, H] float64.
      reference: the reference's name (REFERENCES[family]).
    """

    family: str
    period: int | None
    context_label: str
    inputs: np.ndarray
    target: np.ndarray
    reference_forecast: np.ndarray
    reference: str

    @property
    def context(self) -> int:
        return int(self.inputs.shape[1])

    @property
    def horizon(self) -> int:
        return int(self.target.shape[1])

    @property
    def name(self) -> str:
        period = f"/P{self.period}" if self.period else ""
        return f"{self.family}{period}/C{self.context}/H{self.horizon}"


def case_seed(family: str, period: int | None, context: int, base_seed: int = 0) -> int:
    """A seed that depends only on the case's identity (CRC32: stable across processes)."""
    return zlib.crc32(f"{family}|{period}|{context}|{base_seed}".encode())


# --------------------------------------------------------------------------- periodic shapes
def seasonal_shape(family: str, phase_steps: np.ndarray, period: int) -> np.ndarray:
    """The noiseless unit-amplitude shape of a seasonal family at time steps [B, T] -> [B, T]."""
    angle = 2 * np.pi * phase_steps / period
    if family in ("sine", "spikes", "trend_season"):
        return np.sin(angle)
    if family == "rectified":
        return 2 * np.maximum(np.sin(angle), 0.0) - 0.5  # daytime bump, night floor; amplitude ~1
    if family == "square":
        return np.tanh(3 * np.sin(angle)) / np.tanh(3.0)
    if family == "two_periods":
        return np.sin(angle) + 0.5 * np.sin(3 * angle + 1.0)  # period P and P/3: the true period is P
    raise ValueError(f"no seasonal shape for family {family!r}; expected one of {SEASONAL_SHAPES}")


def seasonal_naive(history: np.ndarray, period: int, horizon: int) -> np.ndarray:
    """[B, T] -> [B, H]: y[T + h] = y[T + (h mod P) - P], the last full period repeated (T >= P)."""
    if history.shape[1] < period:
        raise ValueError(f"seasonal naive needs {period} steps of history, got {history.shape[1]}")
    offsets = np.arange(horizon) % period - period
    return history[:, history.shape[1] + offsets]


def periodic_series(rng: np.random.Generator, family: str, batch: int, length: int, period: int,
                    noise_std: float) -> tuple[np.ndarray, np.ndarray]:
    """(series [B, T], trend [B, T]) of a periodic family; trend is zero except for `trend_season`.

    Amplitude 2-5 against `noise_std` noise, a random phase and level; `trend_season` adds a slope
    of 0.1-0.3 amplitudes per period, up or down.
    """
    steps = np.arange(length, dtype=np.float64)[None, :]
    amplitude = rng.uniform(2.0, 5.0, (batch, 1))
    phase = rng.uniform(0, period, (batch, 1))
    level = rng.uniform(-10.0, 10.0, (batch, 1))
    trend = np.zeros((batch, length))
    if family == "trend_season":
        slope = rng.uniform(0.1, 0.3, (batch, 1)) * rng.choice([-1.0, 1.0], (batch, 1)) * amplitude / period
        trend = slope * steps
    noise = noise_std * rng.standard_normal((batch, length))
    series = level + amplitude * seasonal_shape(family, steps + phase, period) + trend + noise
    return series, trend


def add_spikes(rng: np.random.Generator, series: np.ndarray, context_start: int, clean_tail: int,
               noise_std: float, fraction: float = 0.02) -> np.ndarray:
    """[B, T] -> [B, T] with `fraction` of the steps in [context_start, T - clean_tail) replaced by
    outliers 8-15 noise standard deviations away (either sign); the last `clean_tail` stay clean."""
    out = series.copy()
    batch, length = series.shape
    span = np.arange(context_start, length - clean_tail)
    if span.size == 0:  # a context no longer than one period has no room outside the clean tail
        return out
    count = max(1, int(round(fraction * span.size)))
    scale = max(noise_std, 1.0)  # outliers stay visible in a noiseless case
    for row in range(batch):
        where = rng.choice(span, size=count, replace=False)
        out[row, where] += rng.uniform(8.0, 15.0, count) * scale * rng.choice([-1.0, 1.0], count)
    return out


def periodic_case(family: str, period: int, context: int, context_label: str, batch: int,
                  noise_std: float = NOISE_STD, base_seed: int = 0) -> Case:
    """A seasonal, trend + season or spikes case: context C, horizon min(P, 96)."""
    rng = np.random.default_rng(case_seed(family, period, context, base_seed))
    horizon = min(period, MAX_SEASONAL_HORIZON)
    history = max(context, period)  # seasonal naive reads P steps back even when C < P
    series, trend = periodic_series(rng, family, batch, history + horizon, period, noise_std)
    past, future = series[:, :history], series[:, history:]
    if family == "trend_season":
        # The oracle: seasonal naive on the detrended series plus the true trend over the horizon.
        reference = seasonal_naive(past - trend[:, :history], period, horizon) + trend[:, history:]
    else:
        if family == "spikes":
            past = add_spikes(rng, past, history - context, period, noise_std)
        reference = seasonal_naive(past, period, horizon)
    return Case(family, period, context_label, past[:, -context:], future, reference, REFERENCES[family])


# --------------------------------------------------------------------------- aperiodic families
def level_shift_series(rng: np.random.Generator, batch: int, context: int, horizon: int,
                       noise_std: float) -> np.ndarray:
    """[B, C + H]: a level that jumps 1-4 times inside the context (jumps of 3-8, either sign), none
    in the horizon, plus noise."""
    series = np.empty((batch, context + horizon))
    for row in range(batch):
        jumps = np.sort(rng.choice(np.arange(1, context), size=rng.integers(1, 5), replace=False))
        sizes = rng.uniform(3.0, 8.0, jumps.size) * rng.choice([-1.0, 1.0], jumps.size)
        level = np.zeros(context + horizon)
        for at, size in zip(jumps, sizes):
            level[at:] += size
        series[row] = rng.uniform(-10.0, 10.0) + level
    return series + noise_std * rng.standard_normal(series.shape)


def intermittent_series(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """[B, T] of zeros and positive demands 1 + Poisson(3), each step nonzero with probability 0.1-0.4.

    The first step of each row is forced nonzero so that no context is all zeros (a degenerate input).
    """
    probability = rng.uniform(0.1, 0.4, (batch, 1))
    demand = 1.0 + rng.poisson(3.0, (batch, length))
    series = np.where(rng.random((batch, length)) < probability, demand, 0.0)
    series[:, 0] = demand[:, 0]
    return series


def random_walk_series(rng: np.random.Generator, batch: int, length: int, noise_std: float) -> np.ndarray:
    """[B, T]: a start in [-10, 10] plus cumulative N(0, noise_std^2) steps."""
    return rng.uniform(-10.0, 10.0, (batch, 1)) + np.cumsum(noise_std * rng.standard_normal((batch, length)), axis=1)


def last_value(context: np.ndarray, horizon: int) -> np.ndarray:
    """[B, C] -> [B, H]: the last value held flat."""
    return np.repeat(context[:, -1:], horizon, axis=1)


def context_mean(context: np.ndarray, horizon: int) -> np.ndarray:
    """[B, C] -> [B, H]: the mean of the context held flat."""
    return np.repeat(context.mean(axis=1, keepdims=True), horizon, axis=1)


def flat_case(family: str, context: int, context_label: str, batch: int, noise_std: float = NOISE_STD,
              base_seed: int = 0) -> Case:
    """A level-shift, intermittent or random-walk case: context C, horizon FLAT_HORIZON."""
    rng = np.random.default_rng(case_seed(family, None, context, base_seed))
    horizon = FLAT_HORIZON
    if family == "level_shift":
        series = level_shift_series(rng, batch, context, horizon, noise_std)
    elif family == "intermittent":
        series = intermittent_series(rng, batch, context + horizon)
    elif family == "random_walk":
        series = random_walk_series(rng, batch, context + horizon, noise_std)
    else:
        raise ValueError(f"flat_case: unknown family {family!r}; expected level_shift, intermittent or random_walk")
    past, future = series[:, :context], series[:, context:]
    reference_fn: Callable[[np.ndarray, int], np.ndarray] = context_mean if family == "intermittent" else last_value
    return Case(family, None, context_label, past, future, reference_fn(past, horizon), REFERENCES[family])


# --------------------------------------------------------------------------- the case grid
def context_choices(named: Sequence[tuple[str, int]], cap: int) -> list[tuple[int, str]]:
    """Distinct (length, label) pairs from (label, length) choices, each capped at `cap`.

    Choices that land on the same length share one case with a joined label ("512 = trained max"),
    so a checkpoint trained on 512 steps does not run the 512-step case twice.
    """
    labels: dict[int, list[str]] = {}
    for label, length in named:
        labels.setdefault(min(int(length), cap), []).append(label)
    return [(length, " = ".join(labels[length])) for length in sorted(labels)]


def build_cases(trained_max: int, architecture_max: int, series_per_case: int,
                families: Sequence[str] = FAMILIES, periods: Sequence[int] = PERIODS,
                noise_std: float = NOISE_STD, base_seed: int = 0) -> list[Case]:
    """Every case of `families` (periodic ones at `periods`), in a fixed order.

    Periodic families run at contexts {2 periods, 512, trained_max} with `series_per_case` series;
    the aperiodic ones at {96, 512, trained_max} with FLAT_SERIES_FACTOR times as many; every context
    is capped at `architecture_max` (the longest context
    the model accepts). `trend_season` and `spikes` use only the periods of TREND_PERIODS /
    SPIKE_PERIODS that are in `periods`.
    """
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; expected names from {', '.join(FAMILIES)}")
    cases: list[Case] = []
    for family in families:
        if family in ("level_shift", "intermittent", "random_walk"):
            named = [(str(c), c) for c in FLAT_CONTEXTS] + [("trained max", trained_max)]
            for context, label in context_choices(named, architecture_max):
                cases.append(flat_case(family, context, label, FLAT_SERIES_FACTOR * series_per_case, noise_std,
                                       base_seed))
            continue
        family_periods = {"trend_season": TREND_PERIODS, "spikes": SPIKE_PERIODS}.get(family, periods)
        for period in (p for p in periods if p in family_periods):
            named = [("2 periods", 2 * period), ("512", 512), ("trained max", trained_max)]
            for context, label in context_choices(named, architecture_max):
                cases.append(periodic_case(family, period, context, label, series_per_case, noise_std, base_seed))
    return cases


def mae(forecast: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute error over every element of [B, H] arrays."""
    return float(np.mean(np.abs(np.asarray(forecast, np.float64) - np.asarray(target, np.float64))))
