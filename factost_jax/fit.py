"""`Forecaster.fit`: adapt a stage-1 model to a user's own sensor network given as a long DataFrame.

    adapted = Forecaster.load("factost-tiny").fit(df, horizon=12, input_len=12)
    frame = adapted.forecast_df(df, horizon=12)     # every sensor jointly, long format, quantile columns
    adapted.save("runs/my_network")                 # Forecaster.load / launch/evaluate.py --checkpoint accept it

This is `launch/adapt.py --config configs/adapt.py:custom` in three lines: the same `custom` config
(`train/adapt_defaults.py`, its CPU-sized defaults, every field overridable through `overrides`),
the same task, loop, early stopping and test evaluation (`train/stage2.py`), on the DataFrame read by
`data/user_files.py` with the same checks. The forecast room stands on the training floor
(docs/architecture.md), so this module imports training directly; `forecast.py` imports this module
only inside `Forecaster.fit` / `.save`, so a forecast does not load the training stack.
"""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from factost_jax import checkpoint as ckpt_io
from factost_jax.data.user_files import OPTION_FIELDS, FileSourceOptions, dataset_from_frame
from factost_jax.forecast import Forecaster
from factost_jax.train.adapt_defaults import custom_adapt_config
from factost_jax.train.stage2 import make_task, run_adaptation, validate_adapt_config

DATAFRAME_NAME = "DataFrame"


def _set_path(config: Any, dotted: str, value: Any) -> None:
    """`config.a.b = value` for "a.b"; an unknown field names itself."""
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise ValueError(f"overrides: unknown config section {dotted!r}")
        node = node[part]
    if leaf not in node:
        raise ValueError(f"overrides: unknown config field {dotted!r}")
    node[leaf] = value


def build_fit_config(horizon: int, input_len: int, init_from: str, train: Mapping[str, Any],
                     overrides: Mapping[str, Any] | None) -> Any:
    """The `custom` adapt config for a DataFrame: file options cleared (the frame is read here), the
    given training knobs and any dotted `overrides` ({"adapter.dropout": 0.1, ...}) applied."""
    config = custom_adapt_config()
    config.dataset = DATAFRAME_NAME
    config.input_len, config.horizon, config.init_from = input_len, horizon, init_from
    for name in OPTION_FIELDS:
        config.data[name] = None
    for dotted, value in {**dict(train), **dict(overrides or {})}.items():
        if value is not None:
            _set_path(config, dotted, value)
    return config


def fit_forecaster(forecaster: Any, df: Any, *, horizon: int, input_len: int, options: FileSourceOptions,
                   steps: int | None = None, batch_size: int | None = None, patience: int | None = None,
                   eval_every: int | None = None, few_shot_ratio: float | None = None, trainable: str | None = None,
                   loss: str | None = None, lr: float | None = None, seed: int | None = None,
                   overrides: Mapping[str, Any] | None = None, workdir: str | None = None,
                   progress: bool = True) -> Any:
    """Trains the stage-2 adapter on `df` and returns the adapted (stage-2) `Forecaster`.

    The best validation parameters are kept; `adapted.metadata["test_metrics"]` holds their test-split
    metrics (the `launch/evaluate.py` layout) and `["node_ids"]` the sensor order. The run (checkpoints,
    metrics.jsonl, metrics.json) lives in `workdir`, a fresh temporary directory when None.
    """
    if forecaster.path is None:
        raise ValueError("fit starts from a checkpoint on disk: load the stage-1 model with Forecaster.load(...)")
    dataset = dataset_from_frame(df, options, name=DATAFRAME_NAME)
    train = {"train.steps": steps, "data.batch_size": batch_size, "train.patience": patience,
             "train.eval_every": eval_every, "train.checkpoint_every": eval_every, "data.few_shot_ratio": few_shot_ratio,
             "trainable": trainable, "loss": loss, "train.lr": lr, "train.seed": seed, "data.seed": seed,
             "train.progress": progress}
    config = build_fit_config(horizon, input_len, str(forecaster.path), train, overrides)
    run_config = validate_adapt_config(config, dataset=dataset)
    if run_config.model != "factost":
        raise ValueError("fit adapts FactoST (model='factost'); train STID with launch/adapt.py")
    workdir = pathlib.Path(workdir) if workdir else pathlib.Path(tempfile.mkdtemp(prefix="factost-fit-"))
    task = make_task(run_config, workdir, dataset)
    result = run_adaptation(run_config, workdir, task=task, progress=progress)
    if result.get("preempted"):
        raise KeyboardInterrupt(f"fit was interrupted; its checkpoints are in {workdir}")
    params, best_step = task.restore_best()
    metadata = {
        # What every checkpoint of the run records: the input scale (inference maps inputs as validation
        # did) and the stage-1 provenance (trained context / output lengths, the corpus guard).
        **task.checkpoint_metadata(),
        "step": int(best_step),
        "stage": "adapt",
        "run_config": run_config.to_dict(),
        "adapter_config": run_config.adapter.to_dict(),
        "node_ids": list(dataset.node_ids),
        "freq": dataset.freq,
        "file_options": options.to_dict(),
        "test_metrics": {k: v for k, v in result.items() if k != "train_summary"},
        "workdir": str(workdir),
    }
    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params)
    return Forecaster(host, run_config.backbone, adapter_config=run_config.adapter, metadata=metadata)


def save_forecaster(forecaster: Any, path: str | pathlib.Path) -> pathlib.Path:
    """Writes `forecaster` as a params-only step directory at `path` (must not exist) that
    `Forecaster.load(path)` and `launch/evaluate.py --checkpoint path` accept; returns the path."""
    metadata = {**forecaster.metadata, **ckpt_io.inherited_metadata(forecaster.metadata)}
    if forecaster.adapter_config is not None:
        metadata["adapter_config"] = forecaster.adapter_config.to_dict()
    metadata.setdefault("stage", "adapt" if forecaster.stage == 2 else "inference")
    return ckpt_io.save_inference_checkpoint(path, forecaster.config, forecaster.params, extra_metadata=metadata)
