"""Seasonal synthetic series for stage-1 pretraining: the cycles real sensors have.

KernelSynth (`kernel_synth.py`) draws Gaussian-process paths on [0, 1]: its periodic kernels give
cycles, but rarely the crisp, repeating daily and weekly shapes of traffic, metro, energy and air
quality data at their samplings (24, 96, 144 or 288 steps a day; 168, 672, 1008 or 2016 a week).
A foundation model must continue such a shape from two cycles of context, so this generator makes
them on purpose: a daily profile (harmonics, rectified or square-ish waves, rush-hour bumps,
sawtooth), optionally modulated by day of week, plus the nuisances a forecaster meets (trends,
level shifts, AR noise, spikes, random-walk drift, counts with zeros, missing gaps).

`seasonal_synth_series(seed, length)` gives one series; `SeasonalSynthSource` is a random-access
source for `grain.MapDataset.source(...)` that makes series `i` on the fly from `(seed, i)`
(about 3 ms for 4,096 steps on one CPU core), so a million series cost no memory.
"""

from __future__ import annotations

import numpy as np

from factost_jax.data.checks import check_seed
from factost_jax.data.synthetic_network import ar1_paths

# Steps per day at 1 h, 30 min, 15 min, 10 min and 5 min sampling.
STEPS_PER_DAY = (24, 48, 96, 144, 288)
# Standalone periods without a weekly structure (monthly / yearly at coarse samplings, half days).
OTHER_PERIODS = (7, 12, 30, 52)
PROFILE_SHAPES = ("harmonics", "rectified", "square", "bumps", "sawtooth")


def daily_profile(phase: np.ndarray, shape: str, rng: np.random.Generator) -> np.ndarray:
    """One cycle's shape evaluated at `phase` `[T]` in [0, 1): `[T]` float64, roughly unit scale."""
    angle = 2 * np.pi * phase
    if shape == "harmonics":
        num = int(rng.integers(1, 6))
        amplitudes = rng.normal(size=num) / np.arange(1, num + 1) ** rng.uniform(0.5, 1.5)
        phases = rng.uniform(0, 2 * np.pi, size=num)
        return sum(a * np.sin((k + 1) * angle + p) for k, (a, p) in enumerate(zip(amplitudes, phases)))
    if shape == "rectified":
        return np.maximum(np.sin(angle + rng.uniform(0, 2 * np.pi)), 0.0)
    if shape == "square":
        return np.tanh(rng.uniform(2, 8) * np.sin(angle + rng.uniform(0, 2 * np.pi)))
    if shape == "bumps":  # rush hours: 1-3 peaks a day of random width and height
        out = np.zeros_like(phase)
        for _ in range(int(rng.integers(1, 4))):
            centre, width = rng.uniform(0, 1), rng.uniform(0.02, 0.12)
            distance = np.minimum(np.abs(phase - centre), 1 - np.abs(phase - centre))
            out += rng.uniform(0.3, 1.0) * np.exp(-0.5 * (distance / width) ** 2)
        return out
    if shape == "sawtooth":
        return (phase + rng.uniform(0, 1)) % 1.0
    raise ValueError(f"unknown profile shape {shape!r}: expected one of {PROFILE_SHAPES}")


def _weekly_factor(day_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`[T]` multiplicative day-of-week factor: working days near 1, a weekend damped or lifted."""
    factors = 1.0 + 0.1 * rng.normal(size=7)
    weekend = int(rng.integers(0, 7))
    factors[[weekend, (weekend + 1) % 7]] *= rng.uniform(0.2, 1.3)
    return factors[day_index % 7]


def _seasonal_part(length: int, rng: np.random.Generator) -> np.ndarray:
    """`[length]` float64 periodic signal with unit peak-to-peak-ish scale."""
    t = np.arange(length) + int(rng.integers(0, 10_000))
    if rng.uniform() < 0.8:
        period = int(rng.choice(STEPS_PER_DAY))
        signal = daily_profile((t % period) / period, str(rng.choice(PROFILE_SHAPES)), rng)
        if rng.uniform() < 0.6:
            signal = signal * _weekly_factor(t // period, rng)
    else:
        period = int(rng.choice(OTHER_PERIODS + (168, 672, 2016)))
        signal = daily_profile((t % period) / period, str(rng.choice(PROFILE_SHAPES)), rng)
    if rng.uniform() < 0.25:  # a second, independent cycle superposed
        second = int(rng.choice(STEPS_PER_DAY + OTHER_PERIODS))
        signal = signal + rng.uniform(0.2, 0.8) * daily_profile((t % second) / second, "harmonics", rng)
    spread = np.ptp(signal)
    return signal / spread if spread > 0 else signal


def _nuisances(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Trend, level shifts, noise, drift and spikes added to a unit-scale `[T]` signal."""
    length = signal.shape[0]
    out = signal.copy()
    if rng.uniform() < 0.35:
        out += rng.normal(0, 0.5) * np.linspace(0, 1, length) * length / 2048
    if rng.uniform() < 0.15:
        for start in rng.integers(1, length, size=int(rng.integers(1, 4))):
            out[start:] += rng.normal(0, 0.7)
    noise_scale = float(np.exp(rng.uniform(np.log(0.01), np.log(0.6))))
    noise = ar1_paths(length, 1, rng.uniform(0.3, 0.95), rng)[:, 0] if rng.uniform() < 0.3 else rng.normal(size=length)
    out += noise_scale * noise
    if rng.uniform() < 0.15:
        out += np.cumsum(rng.normal(0, 0.02, size=length))
    if rng.uniform() < 0.15:
        where = rng.integers(0, length, size=int(rng.integers(1, 8)))
        out[where] += rng.choice([-1, 1], size=where.size) * rng.uniform(1.5, 4, size=where.size)
    return out


def _as_counts(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts whose rate follows `signal` (shifted positive): low rates give zeros."""
    positive = signal - signal.min()
    mean_rate = float(np.exp(rng.uniform(np.log(0.3), np.log(50))))
    rate = positive / max(positive.mean(), 1e-9) * mean_rate
    return rng.poisson(rate).astype(np.float64)


def seasonal_synth_from_rng(rng: np.random.Generator, length: int) -> np.ndarray:
    """`[length]` float32 series: seasonal part + nuisances, counts or scaled, maybe with NaN gaps."""
    series = _nuisances(_seasonal_part(length, rng), rng)
    if rng.uniform() < 0.2:
        series = _as_counts(series, rng)
    else:
        scale = float(np.exp(rng.uniform(np.log(0.1), np.log(1000))))
        series = scale * (series + rng.normal(0, 2))
    if rng.uniform() < 0.1:
        for start in rng.integers(0, length, size=int(rng.integers(1, 4))):
            series[start:start + int(rng.integers(1, 100))] = np.nan
    return series.astype(np.float32)


def seasonal_synth_series(seed: int, length: int = 4096) -> np.ndarray:
    """One seasonal synthetic series `[length]` float32, a pure function of `seed`."""
    check_seed(seed)
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 2:
        raise ValueError(f"length must be an integer >= 2, got {length!r}")
    return seasonal_synth_from_rng(np.random.default_rng(int(seed)), int(length))


class SeasonalSynthSource:
    """Random access `source[i] -> [length]` float32: series i is made on the fly from (seed, i)."""

    def __init__(self, num_series: int, length: int = 4096, seed: int = 0):
        check_seed(seed)
        if isinstance(num_series, bool) or not isinstance(num_series, (int, np.integer)) or num_series < 1:
            raise ValueError(f"num_series must be a positive integer, got {num_series!r}")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 2:
            raise ValueError(f"length must be an integer >= 2, got {length!r}")
        self.num_series, self.length, self.seed = int(num_series), int(length), int(seed)

    def __len__(self) -> int:
        return self.num_series

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.num_series:
            raise IndexError(f"series index {index} outside 0..{self.num_series - 1}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(index)]))
        return seasonal_synth_from_rng(rng, self.length)

    def __repr__(self) -> str:
        return f"SeasonalSynthSource(num_series={self.num_series}, length={self.length}, seed={self.seed})"
