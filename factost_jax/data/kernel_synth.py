"""KernelSynth univariate series for stage-1 pretraining (Chronos, Ansari et al. 2024).

Draw j ~ U{1..max_kernels} kernels from a bank of Gaussian-process kernels, join them with random
`+` or `*`, and sample one path of the GP prior on `length` points of t in [0, 1].
`kernel_synth_series(seed)` gives one series; `KernelSynthSource` is a random-access source for
`grain.MapDataset.source(...)` that makes series `i` on the fly from `(seed, i)`.

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

from factost_jax.data.checks import check_seed

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


def _kernel_synth_from_rng(rng: np.random.Generator, length: int, max_kernels: int) -> np.ndarray:
    _, kernel = draw_kernel(rng, length, max_kernels)
    path = sample_gp_path(kernel, rng).astype(np.float32)
    if not np.all(np.isfinite(path)):
        raise RuntimeError("KernelSynth produced a non-finite path; this is a bug in the sampler")
    return path


def kernel_synth_series(seed: int, length: int = 1024, max_kernels: int = 5) -> np.ndarray:
    """One KernelSynth series `[length]` float32, finite, a pure function of its arguments."""
    check_seed(seed)
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
        check_seed(seed)
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
