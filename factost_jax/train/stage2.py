"""Stage 2, a whole run: `run_adaptation(run_config, workdir)` trains (or resumes) a stage-2 task in
the shared loop, then evaluates the BEST parameters (lowest validation MAE, original units for
rescaled datasets) on the full test split and writes `workdir/metrics.json` in the
`launch/evaluate.py` layout.

The pieces: `adapt_config.py` (validated run config), `adapt_tasks.py` (FactoST and STID tasks),
`adapt_init.py` (parameters from `init_from`), `stage2_task.py` (evaluation, early stopping, best
parameters), `best_params.py` (the `best/` store), `early_stopping.py`. Their public names are
re-exported here for the launchers, tests and benchmarks.

Files added to the loop's layout: `best/<step>/` (parameters of the best evaluation so far, Orbax)
and `metrics.json`.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax

from factost_jax.data.st_pipeline import select_train_windows
from factost_jax.scoring import json_safe
from factost_jax.train.adapt_config import (DATA_CALENDAR, DEFAULT_INIT_FROM, LOSSES, MODELS, STAGE, AdaptRunConfig,
                                            EarlyStoppingConfig, read_init_metadata, resolve_init_from,
                                            validate_adapt_config)
from factost_jax.train.adapt_init import NODE_EMBED_PATH, check_init_shapes, load_init_params
from factost_jax.train.adapt_tasks import AdaptTask, STIDTask, make_task
from factost_jax.train.best_params import BEST_DIR
from factost_jax.train.early_stopping import EarlyStopping
from factost_jax.train.loop import train_and_evaluate
from factost_jax.train.stage2_task import Stage2Task

__all__ = ["BEST_DIR", "DATA_CALENDAR", "DEFAULT_INIT_FROM", "LOSSES", "METRICS_JSON", "MODELS", "NODE_EMBED_PATH",
           "STAGE", "AdaptRunConfig", "AdaptTask", "EarlyStopping", "EarlyStoppingConfig", "STIDTask", "Stage2Task",
           "check_init_shapes", "load_init_params", "make_task", "model_label", "read_init_metadata",
           "resolve_init_from", "run_adaptation", "validate_adapt_config"]

METRICS_JSON = "metrics.json"


def model_label(config: AdaptRunConfig) -> str:
    if config.model == "stid":
        return "stid"
    return f"factost-{config.trainable}"


def run_adaptation(config: AdaptRunConfig, workdir: str | pathlib.Path, task: Any = None,
                   progress: bool = True) -> dict[str, Any]:
    """Train (or resume) in `workdir`, then evaluate the best parameters on the full test split.

    Writes `workdir/metrics.json` (process 0): the `launch/evaluate.py` layout (dataset, model,
    input_len, horizon, split "test", channel, num_windows, metrics.avg / step_3 / step_6 / step_12
    with MAE, RMSE, MAPE, and QL / coverage_80 for FactoST) plus an "adaptation" block (best step,
    its validation metrics, steps run, the data subset). Returns that dict with "train_summary".
    A run stopped by SIGTERM / SIGINT (the loop saved a checkpoint) is not finished: nothing is
    evaluated or written and the result is {"preempted": True, "train_summary": ...}.
    """
    task = make_task(config, workdir) if task is None else task
    task.workdir = pathlib.Path(workdir).expanduser().absolute()  # where `best/` lives
    summary = train_and_evaluate(task, config, workdir)
    if summary.get("preempted"):
        return {"preempted": True, "train_summary": summary}
    params, best_step = task.restore_best()
    result = task.evaluate_split(params, "test", progress=progress)
    data = config.data
    output = {
        "dataset": result.pop("dataset"),
        "model": model_label(config),
        **result,
        "adaptation": {
            "best_step": best_step,
            "best_val_MAE": task.early_stopping.best_value,
            "steps_run": summary.get("step"),
            "stopped_early": bool(summary.get("stopped_early", False)),
            "init_from": config.init_from,
            "trainable": config.trainable if config.model == "factost" else "all",
            "loss": config.loss,
            "few_shot_ratio": data.few_shot_ratio,
            "few_shot_selection": data.few_shot_selection,
            "memory_fraction": data.memory_fraction,
            "replay_ratio": data.replay_ratio,
            **select_train_windows(task.dataset, data).summary(),
        },
    }
    output = json_safe(output)
    if jax.process_index() == 0:
        path = pathlib.Path(workdir).expanduser().absolute() / METRICS_JSON
        path.write_text(json.dumps(output, indent=2) + "\n")
    return {**output, "train_summary": summary}
