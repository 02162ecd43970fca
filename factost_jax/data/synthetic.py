"""Synthetic data that lets every command run on a fresh machine.

Two generators, both pure numpy and deterministic in their seed:

* **KernelSynth** univariate series for stage-1 pretraining (Chronos, Ansari et al. 2024): draw
  j ~ U{1..max_kernels} kernels from a bank of Gaussian-process kernels, join them with random `+`
  or `*`, and sample one path of the GP prior on `length` points of t in [0, 1].
  `kernel_synth_series(seed)` gives one series; `KernelSynthSource` is a random-access source for
  `grain.MapDataset.source(...)` that makes series `i` on the fly from `(seed, i)`.
* A **synthetic sensor network** (`synthetic_network`) returned as an `STDataset`: count-like flows
  on a random geometric graph with daily and weekly cycles, a latent demand diffused along edges,
  noise, incidents that spill over to neighbours, and missing values.

How a KernelSynth path is sampled fast (a dense 1024 x 1024 Cholesky alone costs ~30 ms on one
CPU core, so it is only the fallback). A + / * composition of bank kernels expands into a sum of
product terms, and independent GPs add, so each term is sampled on its own. A term is

    rest[i, j] * prod_f periodic_f(|i - j|),   rest[i, j] = sum_p (t_i t_j)^p s_p[|i - j|] + [i == j] w_i

where `rest` collects the non-periodic factors (DotProduct = sigma0^2 + t t' brings the powers of
t, RBF / RationalQuadratic / Constant are lag vectors `s_p [L]`, White is the diagonal `w [L]`).
`rest` is smooth and numerically low-rank on [0, 1], so a pivoted Cholesky that computes only its
pivot columns factors it as F.T F + diag(r) in O(L * rank^2); the variance it leaves out (below
1e-8 of the largest) is added back as independent noise, so marginal variances stay exact. The
periodic product is what is high-rank, but it is periodic with period lcm(periods): on a circle
of that size its circulant covariance is exact and PSD, and an FFT samples it in O(C log C).
Hadamard products of covariances are covariances of products of independent paths, so the term is
sum_k F_k * (periodic path k). Only when the rest is not low-rank (rank > L / 4) or the circle is
too large does a term fall back to a dense Cholesky with growing jitter and, if that still fails,
a clipped eigendecomposition. Measured on one busy CPU core: 1.8 ms per 1024-point series on
average, median 0.8 ms; the ~1-2% of draws that take the dense path cost ~40 ms each.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator

import numpy as np
import pandas as pd

from factost_jax.data.types import STDataset, steps_per_day_for

# --------------------------------------------------------------------------------------------
# KernelSynth: kernels on the grid
# --------------------------------------------------------------------------------------------

# Typical seasonalities in steps: daily at 1h/30min/15min/5min sampling (24, 48, 96, 288), weekly
# at 1h/30min/15min (168, 336, 672), weekly/biweekly/monthly/bimonthly/yearly at daily sampling
# (7, 14, 30, 60, 365), yearly at weekly/monthly/quarterly sampling (52, 104, 26, 12, 4).
PERIODS_IN_STEPS: tuple[int, ...] = (4, 7, 12, 14, 24, 26, 30, 48, 52, 60, 96, 104, 168, 288, 336, 365, 672)
# Slow cycles spanning a fixed share of the series whatever its length (rounded to whole steps).
PERIOD_FRACTIONS_OF_LENGTH: tuple[float, ...] = (0.1, 0.25, 0.5)
PERIODIC_LENGTH_SCALE = 1.0
RBF_LENGTH_SCALES: tuple[float, ...] = (0.1, 1.0, 10.0)
RATIONAL_QUADRATIC_ALPHAS: tuple[float, ...] = (0.1, 1.0, 10.0)
DOT_PRODUCT_SIGMAS: tuple[float, ...] = (0.0, 1.0, 10.0)
WHITE_NOISE_LEVELS: tuple[float, ...] = (0.1, 1.0)
CONSTANT_VALUE = 1.0

_DENSE_JITTERS = (1e-8, 1e-6, 1e-4)  # relative to the mean variance
# Largest (paths / 2) x circle size the FFT sampler takes; past it a dense Cholesky is cheaper.
_FFT_BUDGET = 1 << 18


@dataclasses.dataclass(frozen=True, eq=False)
class GridKernel:
    """A non-periodic GP kernel on a uniform grid of L points t_i = i / (L - 1).

    `K[i, j] = sum_p (t_i t_j)^p * smooth[p][|i - j|] + [i == j] * white[i]`.

    Attributes:
      smooth: power p -> lag vector `[L]` float64 of the stationary factor multiplying `(t t')^p`.
      white: `[L]` float64 diagonal (white-noise) variances, or None.
    """

    smooth: dict[int, np.ndarray]
    white: np.ndarray | None = None

    def __post_init__(self):
        if not self.smooth and self.white is None:
            raise ValueError("GridKernel needs a smooth part or a white part")

    def __add__(self, other: "GridKernel") -> "GridKernel":
        smooth = dict(self.smooth)
        for power, lags in other.smooth.items():
            smooth[power] = smooth[power] + lags if power in smooth else lags
        return GridKernel(smooth, _add_optional(self.white, other.white))

    def __mul__(self, other: "GridKernel") -> "GridKernel":
        smooth: dict[int, np.ndarray] = {}
        for power_a, lags_a in self.smooth.items():
            for power_b, lags_b in other.smooth.items():
                product = lags_a * lags_b
                power = power_a + power_b
                smooth[power] = smooth[power] + product if power in smooth else product
        # A diagonal kernel times anything keeps only that thing's diagonal.
        white = None
        if self.white is not None:
            white = _add_optional(white, self.white * other.smooth_diagonal())
        if other.white is not None:
            white = _add_optional(white, other.white * self.smooth_diagonal())
        if self.white is not None and other.white is not None:
            white = _add_optional(white, self.white * other.white)
        return GridKernel(smooth, white)

    @property
    def length(self) -> int:
        some = next(iter(self.smooth.values())) if self.smooth else self.white
        return int(some.shape[0])

    def smooth_diagonal(self) -> np.ndarray:
        """`[L]` diagonal of the smooth part: sum_p t^(2p) s_p[0]."""
        t = _unit_grid(self.length)
        diag = np.zeros(self.length)
        for power, lags in self.smooth.items():
            diag += t ** (2 * power) * lags[0]
        return diag

    def smooth_column(self, j: int) -> np.ndarray:
        """`[L]` column j of the smooth part, O(L) per power."""
        t = _unit_grid(self.length)
        lag = np.abs(np.arange(self.length) - j)
        column = np.zeros(self.length)
        for power, lags in self.smooth.items():
            column += (t * t[j]) ** power * lags[lag] if power else lags[lag]
        return column

    def dense_smooth(self) -> np.ndarray:
        """`[L, L]` dense smooth part (dense fallback and tests)."""
        t = _unit_grid(self.length)
        dense = np.zeros((self.length, self.length))
        for power, lags in self.smooth.items():
            dense += np.outer(t**power, t**power) * _symmetric_toeplitz(lags)
        return dense


@dataclasses.dataclass(frozen=True, eq=False)
class KernelTerm:
    """A product of kernels: `rest * prod_f periodic(periods[f])` (elementwise on the grid).

    Periodic factors are kept apart because they are what makes products high-rank, and on a
    circle whose size is a multiple of every period they are sampled exactly by FFT.

    Attributes:
      periods: sorted integer periods (steps) of the ExpSineSquared factors, possibly empty.
      rest: the product of everything else (constants, dot products, RBF, rational quadratic, white).
    """

    periods: tuple[int, ...]
    rest: GridKernel

    def __mul__(self, other: "KernelTerm") -> "KernelTerm":
        return KernelTerm(tuple(sorted(self.periods + other.periods)), self.rest * other.rest)

    @property
    def length(self) -> int:
        return self.rest.length

    def dense_smooth(self) -> np.ndarray:
        """`[L, L]` the smooth part of the term (periodic factors have unit diagonal, so the white
        part of `rest` passes through them unchanged)."""
        dense = self.rest.dense_smooth()
        for period in self.periods:
            dense *= _symmetric_toeplitz(periodic_lags(period, self.length))
        return dense


@dataclasses.dataclass(frozen=True, eq=False)
class SynthKernel:
    """A sum of product terms, the form every `+` / `*` composition of bank kernels takes.

    Terms with the same periods are merged (their rests add), so each distinct periodic product
    is sampled once.
    """

    terms: tuple[KernelTerm, ...]

    def __add__(self, other: "SynthKernel") -> "SynthKernel":
        return SynthKernel(_merge_terms(self.terms + other.terms))

    def __mul__(self, other: "SynthKernel") -> "SynthKernel":
        return SynthKernel(_merge_terms(tuple(a * b for a in self.terms for b in other.terms)))

    @property
    def length(self) -> int:
        return self.terms[0].length

    def dense(self) -> np.ndarray:
        """`[L, L]` the whole covariance matrix (tests and diagnostics)."""
        dense = np.zeros((self.length, self.length))
        for term in self.terms:
            if term.rest.smooth:
                dense += term.dense_smooth()
            if term.rest.white is not None:
                dense[np.diag_indices(self.length)] += term.rest.white
        return dense


def _merge_terms(terms: tuple[KernelTerm, ...]) -> tuple[KernelTerm, ...]:
    merged: dict[tuple[int, ...], GridKernel] = {}
    for term in terms:
        merged[term.periods] = merged[term.periods] + term.rest if term.periods in merged else term.rest
    return tuple(KernelTerm(periods, rest) for periods, rest in merged.items())


def _add_optional(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _symmetric_toeplitz(lags: np.ndarray) -> np.ndarray:
    """`[L, L]` read-only view with entry `lags[|i - j|]` for a lag vector `[L]`."""
    mirrored = np.concatenate([lags[:0:-1], lags])
    return np.lib.stride_tricks.sliding_window_view(mirrored, lags.shape[0])[::-1]


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=8)
def _unit_grid(length: int) -> np.ndarray:
    """`[L]` time grid t in [0, 1], cached and read-only."""
    return _frozen(np.linspace(0.0, 1.0, length))


@functools.lru_cache(maxsize=256)
def periodic_lags(period: int, num_lags: int) -> np.ndarray:
    """`[num_lags]` ExpSineSquared kernel exp(-2 sin^2(pi lag / period) / l^2) at integer lags."""
    lag = np.arange(num_lags)
    return _frozen(np.exp(-2.0 * np.sin(np.pi * lag / period) ** 2 / PERIODIC_LENGTH_SCALE**2))


def bank_periods(length: int) -> tuple[int, ...]:
    """Distinct periodic-kernel periods (steps) for a series of `length` points: the typical
    seasonalities shorter than the series plus fixed fractions of its length."""
    fractions = (int(round(f * (length - 1))) for f in PERIOD_FRACTIONS_OF_LENGTH)
    periods = dict.fromkeys(p for p in (*PERIODS_IN_STEPS, *fractions) if 2 <= p < length)
    return tuple(periods)


@functools.lru_cache(maxsize=8)
def kernel_bank(length: int) -> tuple[tuple[str, SynthKernel], ...]:
    """The named bank kernels on a grid of `length` points (cached per length; arrays read-only).

    Non-periodic lags are in units of t in [0, 1], where one step is 1 / (length - 1) (as in
    Chronos, so RBF(0.1) wiggles about ten times over a series); periods are in steps.
    """
    tau = np.arange(length) / (length - 1)
    one = GridKernel({0: _frozen(np.ones(length))})

    def smooth_kernel(lags_by_power: dict[int, np.ndarray]) -> SynthKernel:
        return SynthKernel((KernelTerm((), GridKernel({p: _frozen(v) for p, v in lags_by_power.items()})),))

    bank: list[tuple[str, SynthKernel]] = []
    for period in bank_periods(length):
        bank.append((f"periodic({period})", SynthKernel((KernelTerm((period,), one),))))
    for scale in RBF_LENGTH_SCALES:
        bank.append((f"rbf({scale:g})", smooth_kernel({0: np.exp(-0.5 * (tau / scale) ** 2)})))
    for alpha in RATIONAL_QUADRATIC_ALPHAS:
        bank.append((f"rational_quadratic({alpha:g})", smooth_kernel({0: (1.0 + tau**2 / (2.0 * alpha)) ** (-alpha)})))
    for sigma in DOT_PRODUCT_SIGMAS:
        # sigma0^2 + t t': a constant plus the power-1 term with a flat lag profile.
        lags = {1: np.ones(length)}
        if sigma > 0:
            lags[0] = np.full(length, sigma**2)
        bank.append((f"dot_product({sigma:g})", smooth_kernel(lags)))
    bank.append((f"constant({CONSTANT_VALUE:g})", smooth_kernel({0: np.full(length, CONSTANT_VALUE)})))
    for level in WHITE_NOISE_LEVELS:
        white = GridKernel({}, _frozen(np.full(length, level)))
        bank.append((f"white({level:g})", SynthKernel((KernelTerm((), white),))))
    return tuple(bank)


def draw_kernel(rng: np.random.Generator, length: int, max_kernels: int = 5) -> tuple[str, SynthKernel]:
    """Draw j ~ U{1..max_kernels} bank kernels (with replacement) and fold them left with random + / *.

    Returns a readable expression, e.g. "((rbf(1) + periodic(24)) * dot_product(0))", and the kernel.
    """
    bank = kernel_bank(length)
    num_kernels = int(rng.integers(1, max_kernels + 1))
    picks = rng.integers(0, len(bank), size=num_kernels)
    ops = rng.integers(0, 2, size=num_kernels - 1)
    name, kernel = bank[picks[0]]
    for pick, op in zip(picks[1:], ops):
        other_name, other = bank[pick]
        symbol, combine = ("+", operator.add) if op == 0 else ("*", operator.mul)
        name, kernel = f"({name} {symbol} {other_name})", combine(kernel, other)
    return name, kernel


# --------------------------------------------------------------------------------------------
# KernelSynth: sampling one GP path
# --------------------------------------------------------------------------------------------


def pivoted_cholesky(kernel: GridKernel, max_rank: int, rel_tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray] | None:
    """Low-rank factor of the smooth part of `kernel`: K_smooth ~= F.T @ F + diag(residual).

    Greedy pivoting on the largest remaining diagonal; stops once every remaining diagonal entry is
    below `rel_tol` times the largest original one. A semi-definite (singular) kernel needs no
    jitter here: its rank is simply small. Only the pivot columns of K are ever computed.

    Returns:
      (F `[rank, L]`, residual `[L]` >= 0), or None when `max_rank` columns were not enough.
    """
    length = kernel.length
    residual = kernel.smooth_diagonal()
    scale = float(residual.max(initial=0.0))
    if scale <= 0.0:
        return np.zeros((0, length)), np.zeros(length)
    factor = np.zeros((min(max_rank, length), length))
    for rank in range(factor.shape[0] + 1):
        pivot = int(np.argmax(residual))
        if residual[pivot] <= rel_tol * scale:
            return factor[:rank], np.maximum(residual, 0.0)
        if rank == factor.shape[0]:
            return None
        column = kernel.smooth_column(pivot) - factor[:rank].T @ factor[:rank, pivot]
        factor[rank] = column / math.sqrt(residual[pivot])
        residual -= factor[rank] ** 2
        residual[pivot] = 0.0
    raise AssertionError("unreachable: the loop returns at rank == max_rank")


def dense_square_root(covariance: np.ndarray) -> np.ndarray:
    """`[L, L]` matrix R with R @ R.T ~= covariance: Cholesky with growing jitter, else clipped eigh."""
    mean_diag = float(np.mean(np.diag(covariance)))
    if mean_diag <= 0.0:
        return np.zeros_like(covariance)
    eye = np.eye(covariance.shape[0])
    for jitter in _DENSE_JITTERS:
        try:
            return np.linalg.cholesky(covariance + jitter * mean_diag * eye)
        except np.linalg.LinAlgError:
            continue
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    return eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


def periodic_product_paths(periods: tuple[int, ...], length: int, num_paths: int, rng: np.random.Generator,
                           budget: int = _FFT_BUDGET) -> np.ndarray | None:
    """`[num_paths, length]` independent exact paths of the GP with kernel prod_f periodic(periods[f]).

    The product is periodic with period P = lcm(periods), so on a circle of C = P * ceil(L / P)
    points its circulant covariance equals the kernel for every pair of grid points and is PSD:
    its eigenvalues are the FFT of the kernel on the circle. One complex FFT of weighted complex
    noise gives two independent paths (real and imaginary parts; Dietrich & Newsam 1997).

    Returns None when ceil(num_paths / 2) * C exceeds `budget` (then a dense factor is cheaper).
    """
    period = math.lcm(*periods)
    circle = period * math.ceil(length / period)
    rows = (num_paths + 1) // 2
    if rows * circle > budget:
        return None
    lag = np.arange(circle)
    kernel = np.ones(circle)
    for p in periods:
        kernel *= periodic_lags(p, p)[lag % p]
    # The kernel is even on the circle, so its spectrum is real; clipping removes round-off only.
    eigenvalues = np.clip(np.fft.fft(kernel).real, 0.0, None)
    noise = rng.standard_normal((rows, circle)) + 1j * rng.standard_normal((rows, circle))
    spectral = np.fft.fft(np.sqrt(eigenvalues / circle) * noise, axis=1)[:, :length]
    return np.concatenate([spectral.real, spectral.imag])[:num_paths]


def sample_term_smooth(term: KernelTerm, rng: np.random.Generator, max_rank: int | None = None) -> np.ndarray:
    """One path `[L]` of the smooth part of a product term.

    rest = F.T F + diag(r) by pivoted Cholesky, then path = sum_k F_k * f_k + sqrt(r) * eps with
    f_k independent paths of the periodic product (exact: (F_k F_k^T) o K_per summed over k, plus
    diag(r) o K_per = diag(r)). Falls back to a dense factor of the whole term when the rest is
    not low-rank or the periodic product's circle is too large.
    """
    length = term.length
    max_rank = max(1, length // 4) if max_rank is None else max_rank
    low_rank = pivoted_cholesky(term.rest, max_rank)
    if low_rank is not None:
        factor, residual = low_rank
        smooth = None
        if not term.periods:
            smooth = rng.standard_normal(factor.shape[0]) @ factor
        else:
            paths = periodic_product_paths(term.periods, length, factor.shape[0], rng)
            if paths is not None:
                smooth = np.einsum("kl,kl->l", factor, paths)
        if smooth is not None:
            return smooth + np.sqrt(residual) * rng.standard_normal(length)
    return dense_square_root(term.dense_smooth()) @ rng.standard_normal(length)


def sample_gp_path(kernel: SynthKernel, rng: np.random.Generator) -> np.ndarray:
    """One zero-mean GP path `[L]` float64 with covariance `kernel` (a sum of independent terms)."""
    path = np.zeros(kernel.length)
    for term in kernel.terms:
        if term.rest.smooth:
            path += sample_term_smooth(term, rng)
        if term.rest.white is not None:
            path += np.sqrt(term.rest.white) * rng.standard_normal(kernel.length)
    return path


def _check_kernel_synth_args(length: int, max_kernels: int) -> None:
    if not isinstance(length, (int, np.integer)) or length < 2:
        raise ValueError(f"KernelSynth length must be an int >= 2, got {length!r}")
    if not isinstance(max_kernels, (int, np.integer)) or max_kernels < 1:
        raise ValueError(f"KernelSynth max_kernels must be an int >= 1, got {max_kernels!r}")


def _check_seed(seed: int, what: str = "seed") -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{what} must be a non-negative int, got {seed!r}")


def _kernel_synth_from_rng(rng: np.random.Generator, length: int, max_kernels: int) -> np.ndarray:
    _, kernel = draw_kernel(rng, length, max_kernels)
    path = sample_gp_path(kernel, rng).astype(np.float32)
    if not np.all(np.isfinite(path)):
        raise RuntimeError("KernelSynth produced a non-finite path; this is a bug in the sampler")
    return path


def kernel_synth_series(seed: int, length: int = 1024, max_kernels: int = 5) -> np.ndarray:
    """One KernelSynth series `[length]` float32, finite, a pure function of its arguments."""
    _check_seed(seed)
    _check_kernel_synth_args(length, max_kernels)
    return _kernel_synth_from_rng(np.random.default_rng(int(seed)), int(length), int(max_kernels))


class KernelSynthSource:
    """Random-access source of `num_series` KernelSynth series for `grain.MapDataset.source`.

    Series i is generated on demand from the random stream `(seed, i)`: nothing is precomputed,
    so a source of millions of series costs no memory, any worker process can make any index, and
    pickling carries only four ints (the per-length kernel bank is rebuilt lazily in each process).
    """

    def __init__(self, num_series: int, length: int = 1024, max_kernels: int = 5, seed: int = 0):
        if not isinstance(num_series, (int, np.integer)) or num_series < 1:
            raise ValueError(f"KernelSynthSource num_series must be an int >= 1, got {num_series!r}")
        _check_kernel_synth_args(length, max_kernels)
        _check_seed(seed)
        self.num_series = int(num_series)
        self.length = int(length)
        self.max_kernels = int(max_kernels)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num_series

    def __getitem__(self, index: int) -> np.ndarray:
        """Series `[length]` float32; negative indices count from the end as for a sequence."""
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"KernelSynthSource index must be an int, got {type(index).__name__}")
        position = int(index) + self.num_series if index < 0 else int(index)
        if not 0 <= position < self.num_series:
            raise IndexError(f"KernelSynthSource index {index} out of range for {self.num_series} series")
        rng = np.random.default_rng([self.seed, position])
        return _kernel_synth_from_rng(rng, self.length, self.max_kernels)

    def __repr__(self) -> str:
        # Grain checkpoints identify a source by its repr, so it must name everything that
        # determines the data.
        return (f"KernelSynthSource(num_series={self.num_series}, length={self.length}, "
                f"max_kernels={self.max_kernels}, seed={self.seed})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KernelSynthSource) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


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


def _ar1(num_steps: int, num_series: int, phi: float, rng: np.random.Generator) -> np.ndarray:
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
    local = _ar1(num_steps, graph.num_nodes, math.exp(-hours_per_step / _LATENT_TIME_CONSTANT_H), rng)
    lag = min(max(1, round(_DIFFUSION_LAG_H / hours_per_step)), num_steps - 1)
    local = _diffuse(graph, local, lag)
    # Diffusion averages independent unit-variance paths and so shrinks their variance by a
    # graph-dependent factor. Measure it on independent probe rows (lag ignored: it barely
    # changes the variance) rather than on the series, which may be only a few steps long.
    probes = _diffuse(graph, rng.standard_normal((_VARIANCE_PROBES, graph.num_nodes)), lag=0)
    local /= math.sqrt(float(np.mean(probes**2)))
    common = _ar1(num_steps, 1, math.exp(-hours_per_step / _COMMON_TIME_CONSTANT_H), rng)
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
    _check_seed(seed, "synthetic_network: seed")
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
