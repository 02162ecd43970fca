"""Stage-1 pretraining data as Grain batches: the training stream and fixed validation batches.

What a window is made of lives below: `pretrain_config.py` (the config and seed streams),
`corpus.py` (components and weights), `series_pool.py` (real series), `pretrain_windows.py` (the
spec §2.1 per-sample transform and the per-batch F / context-width draws). This module mixes the
components by weight, batches, and shards the stream across processes; its public names and those
of the modules below are importable from here.

Choices the spec leaves open (each is documented where it is made):
- Corpus "real" pools every univariate column of every dataset present in `data_dir`, minus the
  exclusion list (evaluation sets and their twins), minus datasets named explicitly as their own
  component, minus the synthetic sensor network. Inside the pool every kept series is equally likely,
  so datasets are weighted by their number of kept series.
- Every real series is trimmed to its observed span and its last `predict_length` points are held
  out of training: they are the labels of the validation windows. The rejection rule is applied to
  the training part (indices counted from its first observed step, observed fraction over it).
- An evaluation dataset named explicitly with `allow_overlap=True` contributes its train split only.
- Validation windows keep the full context_length with the spec's prefix-mask law, whatever the
  training context buckets, so validation losses compare across recipes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from factost_jax.data.checks import as_int
from factost_jax.data.corpus import (  # noqa: F401  (re-exported)
    CorpusComponent,
    build_corpus,
    corpus_summary,
    plan_corpus,
    synthetic_source,
    training_series_count,
)
from factost_jax.data.pretrain_config import (  # noqa: F401  (re-exported)
    KERNELSYNTH,
    REAL,
    SEASONAL,
    TAG_SHUFFLE,
    TAG_VALIDATION,
    TAG_WINDOW,
    USER_CONTEXT_LENGTHS,
    PretrainDataConfig,
    derive_seed,
)
from factost_jax.data.pretrain_windows import (  # noqa: F401  (re-exported)
    apply_context_width,
    context_width_for_batch,
    draw_window,
    normalize_window,
    output_patches_for_batch,
    prefix_mask,
    sample_training_window,
    slice_with_nan_padding,
    to_model_batch,
    visible_lengths,
)
from factost_jax.data.series_pool import RaggedSeriesSource, SeriesPool, keep_series  # noqa: F401


class _IndexedSource:
    """`source[i] -> (i, series)` so a window remembers which series it came from after shuffling."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray]:
        return index, self.source[index]

    def __repr__(self) -> str:
        return f"_IndexedSource({self.source!r})"


class _TrainingWindow:
    """Grain random_map: (series id, series) -> one window dict (spec §2.1 steps 2-6)."""

    def __init__(self, config: PretrainDataConfig, component_id: int):
        self.config, self.component_id = config, component_id

    def __call__(self, element: tuple[int, np.ndarray], rng: np.random.Generator) -> dict:
        series_id, series = element
        window = sample_training_window(np.asarray(series, dtype=np.float32), rng, self.config)
        out = {"context": window["context"], "labels": window["labels"],
               "series_id": np.int64(series_id), "target_start": np.int64(window["target_start"]),
               "component": np.int32(self.component_id)}
        if "context_draws" in window:
            out["context_draws"] = window["context_draws"]
        return out


class _FinalizeBatch:
    """Grain map_with_index on batches: draw F (and W) for the batch index and build the model batch."""

    def __init__(self, config: PretrainDataConfig, include_provenance: bool):
        self.config, self.include_provenance = config, include_provenance

    def __call__(self, batch_index: int, batch: dict) -> dict:
        config = self.config
        num_patches = output_patches_for_batch(config.seed, batch_index, config.output_patch_buckets)
        context = batch["context"]
        if config.context_buckets:
            width = context_width_for_batch(config.seed, batch_index, config.context_widths,
                                            config.context_width_probabilities)
            context = apply_context_width(context, batch["context_draws"], width, config.min_context,
                                          config.user_context_share)
        out = to_model_batch(context, batch["labels"], num_patches * config.patch_size)
        if self.include_provenance:
            out.update({key: batch[key] for key in ("series_id", "target_start", "component")})
        return out


def _ensure_absl_flags_parsed() -> None:
    """Grain worker processes read absl flags; outside an absl main (tests, notebooks) use their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_pretrain_dataset(config: PretrainDataConfig, process_index: int = 0, process_count: int = 1, *,
                          include_provenance: bool = False):
    """The infinite stage-1 training stream of this process.

    Per component: source -> shuffle(seed) -> repeat -> random_map(window); components mixed by weight,
    then [process_index::process_count]; batched to batch_size / process_count; F (and, with context buckets,
    the width W) drawn per batch index. Batch k of every process comes from the same global step k,
    so F and W agree across processes.

    Returns:
      grain.IterDataset of dicts {"context": `[b, W]` float32 NaN-missing, "context_mask": `[b, W]` bool,
      "target": `[b, F*patch_size]` float32 (0 where unobserved), "target_mask": `[b, F*patch_size]` bool},
      b = batch_size // process_count, W = context_length without context buckets; with `include_provenance` also "series_id" / "target_start"
      `[b]` int64 and "component" `[b]` int32 (index into build_corpus(config)). Its iterator's
      get_state()/set_state() resume at exactly the next batch.
    """
    import grain

    config.validate(process_count)
    if not 0 <= as_int(process_index, "process_index") < process_count:
        raise ValueError(f"process_index must lie in 0..{process_count - 1}, got {process_index}")
    streams, weights = [], []
    for component_id, component in enumerate(build_corpus(config)):
        stream = (grain.MapDataset.source(_IndexedSource(component.source))
                  .shuffle(seed=derive_seed(config.seed, TAG_SHUFFLE, component.name))
                  .repeat()
                  .random_map(_TrainingWindow(config, component_id),
                              seed=derive_seed(config.seed, TAG_WINDOW, component.name)))
        streams.append(stream)
        weights.append(component.weight)
    mixed = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights)
    # Sharding the MIXED stream by element index (lazily: a process builds only its own windows)
    # makes the processes' batches k together exactly the single-process batch k, whatever the weights.
    mixed = mixed[process_index::process_count]
    batches = (mixed.batch(config.batch_size // process_count, drop_remainder=True)
               .map_with_index(_FinalizeBatch(config, include_provenance)))
    dataset = batches.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                                        prefetch_buffer_size=config.prefetch_batches))
    if config.worker_count > 0:
        _ensure_absl_flags_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count))
    return dataset


def _allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` into integer shares proportional to `weights` (largest remainder)."""
    raw = [total * w / sum(weights) for w in weights]
    counts = [int(math.floor(r)) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _validation_windows(config: PretrainDataConfig, component: CorpusComponent, count: int,
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` fixed (context [L], labels [H]) pairs of one component, all unseen in training."""
    L, H = config.context_length, config.predict_length
    windows = []
    if component.pool is None:
        # Synthetic indices at and beyond the training count never reach the training stream.
        first = training_series_count(config, component.name)
        source = synthetic_source(config, component.name, first + count)
        for j in range(count):
            rng = np.random.default_rng(derive_seed(config.seed, TAG_VALIDATION, component.name, j))
            window = sample_training_window(source[first + j], rng, config)
            context = window["context"]
            if "context_draws" in window:  # validation keeps full-length contexts, the spec's law
                context = apply_context_width(context[None], window["context_draws"][None], L,
                                              config.min_context, 0.0)[0]
            windows.append((context, window["labels"]))
        return windows
    pool = component.pool
    order = np.random.default_rng(derive_seed(config.seed, TAG_VALIDATION, component.name)).permutation(
        pool.num_series)
    for j in range(count):
        # More windows than series cycles through the series with fresh prefix masks.
        full = pool.full_series(int(order[j % pool.num_series]))
        split = full.shape[0] - H  # the held-out tail is exactly the labels
        rng = np.random.default_rng(derive_seed(config.seed, TAG_VALIDATION, component.name, j))
        inputs, labels = normalize_window(slice_with_nan_padding(full, split - L, L), full[split:],
                                          config.outlier_z)
        windows.append((prefix_mask(inputs, rng, config.min_context), labels))
    return windows


def make_validation_batches(config: PretrainDataConfig, num_windows: int = 1024, batch_size: int | None = None,
                            process_index: int = 0, process_count: int = 1) -> list[dict[str, np.ndarray]]:
    """Fixed held-out validation batches with all max output patches (F = predict_length // patch_size).

    Windows are split across components by weight (largest remainder) and shuffled together with a
    seed stream of their own: KernelSynth series beyond the training index range, and for real
    series the held-out last predict_length points as labels. Identical on every call.

    Returns:
      num_windows // batch_size dicts like make_pretrain_dataset's (target width predict_length),
      each holding this process's rows `[process_index * b, (process_index + 1) * b)`,
      b = batch_size // process_count.
    """
    batch_size = config.batch_size if batch_size is None else as_int(batch_size, "batch_size")
    if as_int(num_windows, "num_windows") < 1 or batch_size < 1 or num_windows % batch_size:
        raise ValueError(f"num_windows={num_windows} must be a positive multiple of batch_size={batch_size}")
    if as_int(process_count, "process_count") < 1 or batch_size % process_count:
        raise ValueError(f"validation batch_size={batch_size} must be divisible by process_count={process_count}")
    if not 0 <= as_int(process_index, "process_index") < process_count:
        raise ValueError(f"process_index must lie in 0..{process_count - 1}, got {process_index}")
    components = build_corpus(config)
    windows = []
    for component, count in zip(components, _allocate(num_windows, [c.weight for c in components])):
        windows.extend(_validation_windows(config, component, count))
    order = np.random.default_rng(derive_seed(config.seed, TAG_VALIDATION)).permutation(num_windows)
    context = np.stack([windows[i][0] for i in order])
    labels = np.stack([windows[i][1] for i in order])
    rows = batch_size // process_count
    batches = []
    for first in range(0, num_windows, batch_size):
        lo = first + process_index * rows
        batches.append(to_model_batch(context[lo : lo + rows], labels[lo : lo + rows], config.predict_length))
    return batches
