"""The stage-1 pretraining corpus: which components, which datasets, with which weights.

`plan_corpus` turns `PretrainDataConfig.corpora` into canonical components (rejecting duplicates
and evaluation sets); `build_corpus` gives each a random-access source of training series:
KernelSynth and the seasonal generator make theirs on the fly, "real" pools every univariate
column of every dataset present in the data directory (minus the exclusion list, the datasets
named on their own and the synthetic sensor network), each kept series equally likely.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from factost_jax.data.kernel_synth import KernelSynthSource
from factost_jax.data.pretrain_config import (
    KERNELSYNTH,
    NOT_REAL,
    REAL,
    SYNTHETIC_COMPONENTS,
    TAG_KERNELSYNTH,
    TAG_SEASONAL,
    PretrainDataConfig,
    derive_seed,
)
from factost_jax.data.seasonal_synth import SeasonalSynthSource
from factost_jax.data.series_pool import SeriesPool, load_series_pool

SPECIAL_COMPONENTS = SYNTHETIC_COMPONENTS + (REAL,)

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _ComponentPlan:
    name: str
    weight: float
    datasets: tuple[tuple[str, bool], ...]  # (canonical name, train_split_only); () for synthetic


def _base_name(name: str) -> str:
    return name.split(":", 1)[0]


def _is_excluded(name: str, exclusions: frozenset[str]) -> bool:
    # Excluding "HZMETRO" excludes every variant ("HZMETRO:out") too.
    return name in exclusions or _base_name(name) in exclusions


def plan_corpus(config: PretrainDataConfig, *, resolve_real: bool = False) -> tuple[_ComponentPlan, ...]:
    """Canonical component list. Raises ValueError on duplicates or an unallowed evaluation set."""
    named = [(name, weight) for name, weight in config.corpora if name.lower() not in SPECIAL_COMPONENTS]
    formats = None
    if named or config.exclude or resolve_real:
        from factost_jax.data import formats
    exclusions = frozenset(formats.canonical_name(n) for n in config.exclude) if formats else frozenset()
    plans, seen = [], set()
    for name, weight in config.corpora:
        key = name.lower() if name.lower() in SPECIAL_COMPONENTS else formats.canonical_name(name)
        if key in seen:
            raise ValueError(f"corpora names {key!r} more than once")
        seen.add(key)
        if key in SPECIAL_COMPONENTS:
            plans.append(_ComponentPlan(key, weight, ()))
        else:
            excluded = _is_excluded(key, exclusions)
            if excluded and not config.allow_overlap:
                raise ValueError(f"corpora names {key!r}, an evaluation dataset (in the exclusion list); "
                                 f"pretraining on it leaks into zero-shot results: drop it or set allow_overlap=True")
            plans.append(_ComponentPlan(key, weight, ((key, excluded),)))
    if resolve_real:
        plans = [_resolve_real(plan, config, exclusions, seen, formats) if plan.name == REAL else plan
                 for plan in plans]
    return tuple(plans)


def _resolve_real(plan: _ComponentPlan, config: PretrainDataConfig, exclusions: frozenset[str],
                  named: set[str], formats) -> _ComponentPlan:
    if config.data_dir is not None and not os.path.isdir(config.data_dir):
        # A directory the user named must exist: silently training on KernelSynth alone would waste the run.
        raise FileNotFoundError(f"data.data_dir={config.data_dir!r} is not a directory (expected the real-data "
                                "directory, e.g. ../shared/data; leave it unset to use $FACTOST_DATA_DIR)")
    try:
        present = formats.list_datasets(config.data_dir)
    except FileNotFoundError as error:
        _log.warning("corpus 'real': no data directory (%s); the component is empty", error)
        present = []
    names = sorted({formats.canonical_name(n) for n in present}
                   - named - set(NOT_REAL))
    names = [n for n in names if not _is_excluded(n, exclusions)]
    return dataclasses.replace(plan, datasets=tuple((n, False) for n in names))


@dataclasses.dataclass(frozen=True, eq=False)
class CorpusComponent:
    """One weighted corpus component.

    Attributes:
      name: "kernelsynth", "seasonal", "real" or a canonical dataset name.
      weight: normalised mixture weight (components sum to 1).
      source: random access `source[i] -> [n] float32` training series.
      pool: the real series with their held-out tails (None for the synthetic components).
    """

    name: str
    weight: float
    source: Any
    pool: SeriesPool | None


def synthetic_source(config: PretrainDataConfig, name: str, num_series: int):
    """Random-access source of the first `num_series` series of synthetic component `name`.

    Training uses indices below `<name>_series`; validation takes the indices past them.
    """
    if name == KERNELSYNTH:
        return KernelSynthSource(num_series, length=config.kernelsynth_length,
                                 max_kernels=config.kernelsynth_max_kernels,
                                 seed=derive_seed(config.seed, TAG_KERNELSYNTH))
    return SeasonalSynthSource(num_series, length=config.seasonal_length, seed=derive_seed(config.seed, TAG_SEASONAL))


def training_series_count(config: PretrainDataConfig, name: str) -> int:
    """How many distinct training series synthetic component `name` has."""
    return config.kernelsynth_series if name == KERNELSYNTH else config.seasonal_series


def _concrete_data_dir(config: PretrainDataConfig) -> str:
    # The pool cache is keyed by directory: resolve the default now so a later change of
    # FACTOST_DATA_DIR cannot return another directory's series.
    from factost_jax.data import formats

    return config.data_dir if config.data_dir is not None else str(formats.default_data_dir())


def build_corpus(config: PretrainDataConfig) -> tuple[CorpusComponent, ...]:
    """The non-empty components with normalised weights (real pools are cached in memory).

    Raises ValueError when a named dataset keeps no series or the whole corpus is empty.
    """
    components = []
    for plan in plan_corpus(config, resolve_real=True):
        if plan.name in SYNTHETIC_COMPONENTS:
            count = training_series_count(config, plan.name)
            components.append((plan, synthetic_source(config, plan.name, count), None))
            continue
        pool = load_series_pool(plan.datasets, _concrete_data_dir(config), config.predict_length,
                                 config.min_series_last_index, config.min_observed_frac)
        if pool.num_series == 0:
            if plan.name != REAL:
                raise ValueError(
                    f"corpus component {plan.name!r} keeps no series: a column needs its training part (the "
                    f"series minus its held-out last predict_length={config.predict_length} steps) to reach a last "
                    f"observed index >= min_context + predict_length + 2 = {config.min_series_last_index} and "
                    f"to be at least {config.min_observed_frac:.0%} observed")
            _log.warning("corpus 'real' is empty (datasets considered: %s); it is left out",
                         [name for name, _ in plan.datasets] or "none")
            continue
        components.append((plan, pool.training_source(), pool))
    if not components:
        raise ValueError(f"the pretraining corpus is empty: corpora={config.corpora} yield no series "
                         f"(data_dir={config.data_dir!r})")
    total = sum(plan.weight for plan, _, _ in components)
    return tuple(CorpusComponent(plan.name, plan.weight / total, source, pool) for plan, source, pool in components)


def corpus_summary(config: PretrainDataConfig) -> list[dict]:
    """One row per source dataset: name, component, num_series, num_points, num_dropped, weight.

    `weight` is the probability that a training window comes from that dataset; `num_points` counts
    the training part of the kept series (held-out tails excluded).
    """
    rows = []
    for component in build_corpus(config):
        if component.pool is None:
            count = training_series_count(config, component.name)
            rows.append({"name": component.name, "component": component.name, "num_series": count,
                         "num_points": count * getattr(config, f"{component.name}_length"),
                         "num_dropped": 0, "weight": component.weight})
            continue
        pool = component.pool
        for dataset_id, name in enumerate(pool.dataset_names):
            members = pool.dataset_index == dataset_id
            count = int(members.sum())
            rows.append({"name": name, "component": component.name, "num_series": count,
                         "num_points": int(pool.train_lengths[members].sum()),
                         "num_dropped": pool.dropped[dataset_id],
                         "weight": component.weight * count / pool.num_series})
    return rows
