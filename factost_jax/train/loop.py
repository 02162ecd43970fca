"""The one training loop both stages share.

`train_and_evaluate(task, config, workdir)` builds the mesh, creates (or restores) a sharded
`TrainState`, then runs `config.train.steps` jitted updates with periodic logging, evaluation and
Orbax checkpoints. Re-running the same command resumes from the latest checkpoint, including the
position of the Grain data iterator.

What a task provides is the `Task` protocol of `train/task.py`. The loop's pieces live beside it:
`config.py` (TrainConfig, errors), `setup.py` (abstract state, shardings, jitted steps),
`checkpointing.py` (Orbax save / restore and the resume checks), `resume.py` (which checkpoint to
start from), `metric_log.py` (metrics.jsonl, TensorBoard), `preemption.py` (SIGTERM / SIGINT).

Files under `workdir`: `metrics.jsonl` (one JSON object per logged train step and per evaluation),
`config.json`, `checkpoints/<step>/...` (see `factost_jax/checkpoint.py`), `final_params.sha256`,
and `tensorboard/` (the same scalars as TensorBoard event files).
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from factost_jax import checkpoint as ckpt_io
from factost_jax.train import mesh as mesh_lib
from factost_jax.train.checkpointing import (make_checkpoint_manager, params_sha256, prepare_workdir, restore_params,
                                             save_checkpoint)
from factost_jax.train.config import (RunConfigError, TrainConfig, TrainingDivergedError, as_train_config,
                                      config_to_dict)
from factost_jax.train.metric_log import METRICS_FILE, IntervalStats, MetricWriter, truncate_metrics_after
from factost_jax.train.preemption import PreemptionGuard
from factost_jax.train.resume import initial_state
from factost_jax.train.setup import Setup, build_setup, jit_steps
from factost_jax.train.steps import COUNT_KEY, TrainState
from factost_jax.train.task import Task, TaskHooks

# Names callers import from here (launchers, tests, benchmarks); they live in the modules above.
__all__ = ["CONFIG_FILE", "METRICS_FILE", "SHA_FILE", "RunConfigError", "Task", "TaskHooks", "TrainConfig",
           "TrainingDivergedError", "build_setup", "evaluate", "params_sha256", "prepare_workdir", "restore_params",
           "train_and_evaluate"]


CONFIG_FILE = "config.json"
SHA_FILE = "final_params.sha256"


def evaluate(eval_step: Callable, params: Any, eval_batches: Sequence[Mapping[str, np.ndarray]], mesh: Any) -> dict:
    """Each eval metric over all fixed batches -> {"eval_loss": ..., "eval_<aux>": ...}.

    A global mean: each batch's mean is weighted by the targets it counted (`COUNT_KEY` of the eval
    step), so a batch with few observed targets weighs little; the mean of per-batch means would
    give it a whole batch's weight. Batches that count nothing at all fall back to equal weights.
    """
    totals: dict[str, float] = {}
    plain: dict[str, float] = {}
    counted = 0.0
    for host_batch in eval_batches:
        metrics = jax.device_get(eval_step(params, mesh_lib.replicated_host_to_global(host_batch, mesh)))
        count = float(metrics.pop(COUNT_KEY))
        counted += count
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value) * count
            plain[name] = plain.get(name, 0.0) + float(value)
    if counted > 0:
        return {f"eval_{name}": total / counted for name, total in totals.items()}
    return {f"eval_{name}": total / len(eval_batches) for name, total in plain.items()}


def _printer(enabled: bool) -> Callable[[str], None]:
    return (lambda message: print(message, flush=True)) if enabled else (lambda message: None)


def train_and_evaluate(task: Task, config: Any, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Train `task` for `config.train.steps` steps in `workdir`, resuming if it holds a checkpoint.

    `config` needs `.train` (a `TrainConfig` or mapping of its fields) and `.mesh.shape`, and is stored
    (as a dict) in every checkpoint's metadata. Returns the final metrics: step, start_step, the last
    logged train metrics, the last evaluation, params_sha256, skipped_total, num_programs.
    """
    from tqdm.auto import tqdm

    try:
        train_cfg = as_train_config(config.train)
        mesh = mesh_lib.make_mesh(config.mesh.shape)
        # Stage 2 may split the sensor axis of its batches (mesh.nodes_axis); stage 1 has none.
        rules = mesh_lib.logical_axis_rules(getattr(config.mesh, "nodes_axis", None))
    except ValueError as err:
        raise RunConfigError(str(err)) from None
    workdir = prepare_workdir(workdir)
    is_main = jax.process_index() == 0
    say = _printer(is_main)
    run_config = config_to_dict(config)
    if is_main:
        (workdir / CONFIG_FILE).write_text(json.dumps(run_config, indent=2) + "\n")

    init_rng, dropout_rng = jax.random.split(jax.random.key(train_cfg.seed))
    manager = make_checkpoint_manager(workdir / ckpt_io.CHECKPOINTS_DIR, train_cfg)
    writer = None
    try:
        # Everything is traced inside the mesh and the rules table, so the model's
        # `nn.with_logical_constraint` calls become real sharding constraints on activations.
        # (Caveat for model code: flax's nn.DenseGeneral with a logically partitioned kernel_init
        # fails under a global mesh, since it constrains its flat init kernel with the 3-D names.)
        with PreemptionGuard(jax.process_count()) as preemption, mesh_lib.mesh_context(mesh, rules):
            setup = build_setup(task, train_cfg, mesh, init_rng, rules)

            def make_data_iter() -> Any:
                return iter(task.train_dataset(jax.process_index(), jax.process_count()))

            # Any step listed means a resume: `_initial_state` restores one of them or raises. A run
            # preempted before its first update resumes from a checkpoint of step 0, which is not a fresh start.
            resumed = bool(manager.all_steps())
            state, start_step, data_iter = initial_state(task, setup, manager, make_data_iter, init_rng, say)
            if is_main:
                # A fresh start drops every row a crashed earlier attempt logged (even a step-0 evaluation).
                truncate_metrics_after(workdir / METRICS_FILE, start_step if resumed else -1)
            # TensorBoard drops what a crashed attempt logged past the checkpoint (all of it on a fresh start).
            writer = MetricWriter(workdir, enabled=is_main, purge_step=start_step + 1 if resumed else 0)
            metadata = {
                **task.checkpoint_metadata(),  # first: the loop's own keys below always win
                "stage": task.name,
                "model_config": task.model_config_dict(),
                "run_config": run_config,
                "process_count": jax.process_count(),
                "mesh_shape": dict(mesh.shape),
            }
            progress = tqdm(
                total=train_cfg.steps, initial=start_step, disable=not (is_main and train_cfg.progress),
                desc=task.name, dynamic_ncols=True,
            )
            try:
                state, summary = _run_steps(task, train_cfg, setup, state, start_step, data_iter, dropout_rng,
                                            manager, metadata, writer, progress, say, preemption,
                                            fresh_start=not resumed)
            finally:
                progress.close()
            manager.wait_until_finished()
            if summary.get("preempted"):
                # Not a finished run: no final_params.sha256; rerunning the command resumes from here.
                stop_step = int(jax.device_get(state.step))
                say(f"preempted at step {stop_step}; checkpoint saved to {pathlib.Path(manager.directory) / str(stop_step)}")
                summary.update(step=stop_step, start_step=start_step)
                return summary
            summary["params_sha256"] = params_sha256(state.params)
            if is_main:
                (workdir / SHA_FILE).write_text(summary["params_sha256"] + "\n")
            summary.update(step=int(jax.device_get(state.step)), start_step=start_step)
            return summary
    finally:
        if writer is not None:
            writer.close()
        manager.close()


class _Reporter:
    """Turns per-step device metrics into log rows, the run summary and the divergence stop."""

    def __init__(self, train_cfg: TrainConfig, start_step: int, writer: MetricWriter, progress: Any, manager: Any):
        self.train_cfg, self.start_step = train_cfg, start_step
        self.writer, self.progress, self.manager = writer, progress, manager
        self.interval = IntervalStats()
        self.summary: dict[str, Any] = {}
        self.skipped_total = 0
        self.consecutive_skips = 0
        self._pending: tuple[int, Any, int, int] | None = None

    def push(self, step: int, device_metrics: Any, windows: int, tokens: int) -> None:
        """Queue this step's metrics and absorb the previous step's: fetching one step late keeps a
        step in flight on the device while the host reads and logs."""
        self.flush()
        self._pending = (step, device_metrics, windows, tokens)

    def flush(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._absorb(*pending)

    def _absorb(self, step: int, device_metrics: Any, windows: int, tokens: int) -> None:
        metrics = {name: value.item() for name, value in jax.device_get(device_metrics).items()}
        self.interval.add(metrics, windows, tokens)
        self.skipped_total += metrics["skipped"]
        self.consecutive_skips = self.consecutive_skips + 1 if metrics["skipped"] else 0
        cfg = self.train_cfg
        if step % cfg.log_every == 0 or step == cfg.steps or step == self.start_step + 1:
            row = self.interval.row(step, self.skipped_total, time.perf_counter())
            self.writer.write(row)
            self.summary.update({k: v for k, v in row.items() if k != "time"})
            loss = row.get("loss")
            self.progress.set_postfix(loss="nan" if loss is None else f"{loss:.4f}", lr=f"{row['lr'] or 0:.2e}")
            self.interval.reset(time.perf_counter())
        if self.consecutive_skips >= cfg.max_consecutive_skips:
            raise TrainingDivergedError(
                f"stopped at step {step}: {self.consecutive_skips} consecutive steps had a non-finite loss or "
                f"gradient (latest checkpoint: step {self.manager.latest_step()}); lower train.lr or check the data"
            )

    def log_eval(self, step: int, eval_metrics: Mapping[str, float]) -> None:
        if not eval_metrics:  # a task without an evaluation of its own
            return
        self.writer.write({"step": step, **eval_metrics})
        self.summary.update(eval_metrics)


def _run_steps(
    task: Task,
    train_cfg: TrainConfig,
    setup: Setup,
    state: TrainState,
    start_step: int,
    data_iter: Any,
    dropout_rng: jax.Array,
    manager: Any,
    metadata: Mapping[str, Any],
    writer: MetricWriter,
    progress: Any,
    say: Callable[[str], None],
    preemption: PreemptionGuard | None = None,
    fresh_start: bool = True,
) -> tuple[TrainState, dict[str, Any]]:
    train_step, eval_step = jit_steps(task, setup)
    reporter = _Reporter(train_cfg, start_step, writer, progress, manager)
    eval_batches: list[dict[str, np.ndarray]] | None = None
    seen_shapes: set[Any] = set()
    step = start_step
    # Only on a fresh start: a checkpoint of step 0 (preempted before the first update) already holds
    # this evaluation in its task state, and repeating it would count it twice for early stopping.
    if fresh_start:
        reporter.log_eval(0, task.evaluate_params(state.params, 0))
    stopped_early = bool(task.should_stop())
    preempted = False
    while step < train_cfg.steps and not stopped_early:
        if preemption is not None and preemption.requested(step):
            preempted = True
            say(f"received {preemption.signal_name}: stopping after step {step}")
            break
        host_batch = next(data_iter)
        key = task.batch_shapes_key(host_batch)
        if key not in seen_shapes:
            seen_shapes.add(key)
            say(f"compiling train step for batch shapes {key}")
        windows = len(next(iter(host_batch.values()))) * jax.process_count()
        tokens = int(task.tokens_in_batch(host_batch)) * jax.process_count()
        try:
            global_batch = mesh_lib.host_to_global(host_batch, setup.mesh)
        except ValueError as err:  # e.g. a batch size the mesh cannot split: the user's config to fix
            raise RunConfigError(f"{err}; set the batch size to a multiple of it or change mesh.shape") from None
        state, device_metrics = train_step(state, global_batch, dropout_rng)
        step += 1
        reporter.push(step, device_metrics, windows, tokens)
        progress.update(1)
        if step % train_cfg.eval_every == 0 or step == train_cfg.steps:
            reporter.flush()
            eval_batches = task.eval_batches() if eval_batches is None else eval_batches
            if eval_batches:
                reporter.log_eval(step, evaluate(eval_step, state.params, eval_batches, setup.mesh))
            reporter.log_eval(step, task.evaluate_params(state.params, step))
            stopped_early = bool(task.should_stop())
            if stopped_early:
                say(f"stopping early at step {step} (the task's stop condition, e.g. early stopping, was met)")
        if step % train_cfg.checkpoint_every == 0 or step == train_cfg.steps or stopped_early:
            # The iterator has yielded exactly `step` batches here, so the saved position matches.
            save_checkpoint(manager, state, data_iter, {**metadata, "step": step, **_task_state(task)}, force=True)
    reporter.flush()
    if preempted and step not in manager.all_steps():
        save_checkpoint(manager, state, data_iter, {**metadata, "step": step, **_task_state(task)}, force=True)
    summary = dict(reporter.summary, skipped_total=reporter.skipped_total, num_programs=len(seen_shapes),
                   stopped_early=stopped_early, preempted=preempted)
    return state, summary


def _task_state(task: Task) -> dict[str, Any]:
    """The task's state for the checkpoint metadata; nothing when it has none."""
    state = task.state_dict()
    return {"task_state": state} if state else {}
