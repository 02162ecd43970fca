"""The one training loop both stages share.

`train_and_evaluate(task, config, workdir)` builds the mesh, creates (or restores) a sharded
`TrainState`, then runs `config.train.steps` jitted updates with periodic logging, evaluation and
Orbax checkpoints. Re-running the same command resumes from the latest checkpoint, including the
position of the Grain data iterator.

A *task* (stage 1: `train/tasks.py::PretrainTask`; stage 2 supplies its own) provides:
  name: str                                     stage recorded in checkpoint metadata
  model_config_dict() -> dict                   JSON model config, stored with every checkpoint
  init_params(rng) -> boxed params              flax params carrying logical axis names
  loss_fn(params, batch, rng, deterministic) -> (loss, {name: scalar})
  train_dataset(process_index, process_count) -> grain.IterDataset of host batches (this process's rows)
  eval_batches() -> list[dict]                  fixed GLOBAL batches (identical on every process)
  batch_shapes_key(batch) -> hashable           one compiled program per distinct key
  trainable_mask(params) -> bool pytree | None  None trains everything
  tokens_in_batch(batch) -> int                 for throughput logging
and may provide (stage 2 does; each is looked up with getattr and skipped when absent):
  evaluate_params(params, step) -> {name: value} its own evaluation, run at every eval step and, on a fresh
                                                start, once before the first update (logged at step 0)
  should_stop() -> bool                         checked after each evaluation: True saves a checkpoint and
                                                ends the run early (e.g. early stopping)
  state_dict() -> dict / load_state_dict(dict)  JSON task state saved in every checkpoint's metadata
                                                ("task_state") and handed back on resume

Files under `workdir`: `metrics.jsonl` (one JSON object per logged train step and per evaluation),
`config.json`, `checkpoints/<step>/...` (see `factost_jax/checkpoint.py`), `final_params.sha256`,
and `tensorboard/` when a SummaryWriter is importable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from factost_jax import checkpoint as ckpt_io
from factost_jax.train import mesh as mesh_lib
from factost_jax.train.optim import DECAY_SHAPES, make_optimizer, make_schedule
from factost_jax.train.steps import TrainState, make_eval_step, make_train_step

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SHA_FILE = "final_params.sha256"


class RunConfigError(ValueError):
    """A problem with the run's configuration or workdir that the user must fix (launchers exit 2)."""


class TrainingDivergedError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and loop settings (spec §2.4 defaults)."""

    steps: int = 100_000
    lr: float = 1e-3
    warmup_frac: float = 0.1
    stable_until_frac: float = 0.6
    init_lr_div: float = 100.0
    decay: str = "sqrt"
    final_factor: float = 0.0
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    log_every: int = 100
    eval_every: int = 5_000
    eval_windows: int = 10_000
    checkpoint_every: int = 5_000
    max_to_keep: int = 3
    async_checkpointing: bool = True
    seed: int = 2025
    max_consecutive_skips: int = 20
    progress: bool = True

    def validate(self) -> TrainConfig:
        positive_ints = ("steps", "log_every", "eval_every", "eval_windows", "checkpoint_every", "max_to_keep",
                         "max_consecutive_skips")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"train.{name} must be an integer >= 1, got {value!r}")
        for name in ("lr", "clip_norm", "init_lr_div", "adam_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"train.{name} must be > 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.warmup_frac <= self.stable_until_frac <= 1.0:
            raise ValueError(
                "train.warmup_frac and train.stable_until_frac must satisfy 0 <= warmup_frac <= stable_until_frac <= 1,"
                f" got {self.warmup_frac} and {self.stable_until_frac}"
            )
        if self.decay not in DECAY_SHAPES:
            raise ValueError(f"train.decay must be one of {DECAY_SHAPES}, got {self.decay!r}")
        if not 0.0 <= self.final_factor <= 1.0:
            raise ValueError(f"train.final_factor must be in [0, 1], got {self.final_factor}")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("adam_b1", "adam_b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"train.seed must be an integer, got {self.seed!r}")
        return self

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainConfig:
        """From a dict / ConfigDict; unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"train: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**dict(values)).validate()


def as_train_config(train: Any) -> TrainConfig:
    if isinstance(train, TrainConfig):
        return train.validate()
    if hasattr(train, "to_dict"):
        return TrainConfig.from_mapping(train.to_dict())
    return TrainConfig.from_mapping(dict(train))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A run config (ConfigDict, dataclass tree or mapping) -> JSON-able dict for metadata."""
    if hasattr(config, "to_dict"):
        raw = config.to_dict()
    elif dataclasses.is_dataclass(config):
        raw = dataclasses.asdict(config)
    else:
        raw = dict(config)
    return json.loads(json.dumps(raw, default=str))


class Task(Protocol):
    name: str

    def model_config_dict(self) -> dict[str, Any]: ...
    def init_params(self, rng: jax.Array) -> Any: ...
    def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, deterministic: bool) -> Any: ...
    def train_dataset(self, process_index: int, process_count: int) -> Any: ...
    def eval_batches(self) -> list[dict[str, np.ndarray]]: ...
    def batch_shapes_key(self, batch: Mapping[str, Any]) -> Any: ...
    def trainable_mask(self, params: Any) -> Any: ...
    def tokens_in_batch(self, batch: Mapping[str, Any]) -> int: ...


# ---------------------------------------------------------------------------------------------
# Logging: JSONL always, TensorBoard when importable, only on process 0.


def _summary_writer_class() -> Any | None:
    if importlib.util.find_spec("tensorboardX") is not None:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    if importlib.util.find_spec("torch") is not None and importlib.util.find_spec("tensorboard") is not None:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter
    return None


class MetricWriter:
    """Appends one JSON object per call to `metrics.jsonl`; mirrors scalars to TensorBoard if available."""

    def __init__(self, workdir: pathlib.Path, enabled: bool):
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        self._file = open(workdir / METRICS_FILE, "a", encoding="utf-8")
        writer_class = _summary_writer_class()
        if writer_class is not None:
            self._tb = writer_class(str(workdir / "tensorboard"))

    def write(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in row.items():
                if name != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(name, value, row["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def _parse_row(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None


def truncate_metrics_after(path: pathlib.Path, step: int) -> None:
    """Drop logged rows past `step` (written by a run that died after its last checkpoint).

    A line cut off by a kill mid-write is dropped too. The rewrite goes through a temporary file
    and a rename, so a kill during it leaves either the old or the new file, never a torn one.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        row = _parse_row(line)
        if row is not None and row["step"] <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


class IntervalStats:
    """Accumulates per-step metrics between two log lines; `row()` averages the non-skipped steps."""

    def __init__(self) -> None:
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.start = now
        self.sums: dict[str, float] = {}
        self.count = 0
        self.skipped = 0
        self.steps = 0
        self.windows = 0
        self.tokens = 0
        self.last: dict[str, float] = {}

    def add(self, metrics: Mapping[str, float], windows: int, tokens: int) -> None:
        self.steps += 1
        self.windows += windows
        self.tokens += tokens
        self.last = dict(metrics)
        if metrics["skipped"]:
            self.skipped += 1
            return
        self.count += 1
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)

    def row(self, step: int, skipped_total: int, now: float) -> dict[str, Any]:
        elapsed = max(now - self.start, 1e-9)
        row: dict[str, Any] = {"step": step}
        means = {name: total / self.count for name, total in self.sums.items()} if self.count else {}
        for name, value in self.last.items():
            row[name] = means.get(name, float(value))
        row["lr"] = float(self.last.get("lr", float("nan")))  # the schedule's value now, not a mean
        row.update(
            skipped=self.skipped,
            skipped_total=skipped_total,
            steps_per_s=self.steps / elapsed,
            windows_per_s=self.windows / elapsed,
            tokens_per_s=self.tokens / elapsed,
            time=time.time(),
        )
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


# ---------------------------------------------------------------------------------------------
# Setup pieces.


def prepare_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(workdir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise RunConfigError(f"workdir {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise RunConfigError(f"workdir {path} is not writable: {err.strerror or err}") from None
    return path


def make_checkpoint_manager(directory: pathlib.Path, train_cfg: TrainConfig) -> Any:
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=train_cfg.max_to_keep,
        save_interval_steps=train_cfg.checkpoint_every,
        enable_async_checkpointing=train_cfg.async_checkpointing,
        create=True,
        # Leftovers of saves cut off by a crash (`<step>.orbax-checkpoint-tmp-*`); never loaded anyway.
        cleanup_tmp_directories=True,
    )
    items = (ckpt_io.PARAMS_ITEM, ckpt_io.OPT_STATE_ITEM, ckpt_io.DATA_ITER_ITEM, ckpt_io.METADATA_ITEM)
    return ocp.CheckpointManager(directory, item_names=items, options=options)


def _with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _one_line_reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def check_compatible_model(step_dir: pathlib.Path, saved: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose stored model config differs from this run's, naming every differing field."""
    if saved is None:
        return
    wanted = json.loads(json.dumps(dict(wanted), default=str))  # tuples -> lists, as stored
    differing = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differing:
        fields = ", ".join(f"{k} (checkpoint {saved.get(k)!r}, configured {wanted.get(k)!r})" for k in differing)
        raise RunConfigError(
            f"checkpoint {step_dir} holds a different model than configured: {fields}; "
            "use a new --workdir or the original model config"
        )


def check_compatible_params(step_dir: pathlib.Path, abstract_params: Any) -> None:
    """Refuse to resume from a checkpoint whose parameter shapes differ from the configured model."""
    saved = ckpt_io.saved_param_shapes(step_dir)
    flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    wanted = {ckpt_io.key_path_str(path): tuple(leaf.shape) for path, leaf in flat}
    if saved != wanted:
        differing = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        raise RunConfigError(
            f"checkpoint {step_dir} holds a different model than configured (parameters differ: {differing[:5]}"
            f"{' ...' if len(differing) > 5 else ''}); use a new --workdir or the original model config"
        )


def save_checkpoint(manager: Any, state: TrainState, data_iter: Any, metadata: Mapping[str, Any], force: bool) -> bool:
    import grain
    import orbax.checkpoint as ocp

    step = int(metadata["step"])
    args = ocp.args.Composite(
        **{
            ckpt_io.PARAMS_ITEM: ocp.args.StandardSave(state.params),
            ckpt_io.OPT_STATE_ITEM: ocp.args.StandardSave(state.opt_state),
            ckpt_io.DATA_ITER_ITEM: grain.checkpoint.CheckpointSave(data_iter),
            ckpt_io.METADATA_ITEM: ocp.args.JsonSave(dict(metadata)),
        }
    )
    return manager.save(step, args=args, force=force)


def restore_checkpoint(
    manager: Any, step: int, abstract_state: TrainState, state_shardings: TrainState, data_iter: Any
) -> tuple[TrainState, dict[str, Any]]:
    """Restore params and optimizer state already sharded for this mesh, and the data position."""
    import grain
    import orbax.checkpoint as ocp

    target = _with_shardings(abstract_state, state_shardings)
    args = ocp.args.Composite(
        **{
            ckpt_io.PARAMS_ITEM: ocp.args.StandardRestore(target.params),
            ckpt_io.OPT_STATE_ITEM: ocp.args.StandardRestore(target.opt_state),
            ckpt_io.DATA_ITER_ITEM: grain.checkpoint.CheckpointRestore(data_iter),
            ckpt_io.METADATA_ITEM: ocp.args.JsonRestore(),
        }
    )
    try:
        restored = manager.restore(step, args=args)
    except Exception as err:  # noqa: BLE001 - Orbax / TensorStore / Grain raise many types for a bad file
        raise ckpt_io.UnreadableCheckpointError(
            f"cannot restore checkpoint step {step} in {manager.directory}: {_one_line_reason(err)}"
        ) from None
    step_array = jax.device_put(np.asarray(step, np.int32), state_shardings.step)
    state = TrainState(step=step_array, params=restored[ckpt_io.PARAMS_ITEM], opt_state=restored[ckpt_io.OPT_STATE_ITEM])
    return state, dict(restored[ckpt_io.METADATA_ITEM])


def check_same_process_count(step_dir: pathlib.Path) -> None:
    """Refuse to RESUME TRAINING from a checkpoint written by a different number of processes.

    Parameters and optimizer state reshard onto any mesh, but the Grain iterator state is one file
    per process (each process reads its own `[i::n]` slice of the stream), so a run with another
    process count cannot continue the same batch sequence. Evaluation, inference and fine-tuning
    need only the parameters: `restore_params` loads them onto any mesh and process count.
    """
    saved = ckpt_io.read_metadata(step_dir).get("process_count")
    if saved is not None and int(saved) != jax.process_count():
        raise RunConfigError(
            f"checkpoint {step_dir} was written by {saved} process(es) but this run has {jax.process_count()}; "
            "resuming training needs the same process count (the data-iterator position is saved per process). "
            "Rerun with the original process count, or start a new --workdir; for evaluation or fine-tuning "
            "its parameters load on any mesh (factost_jax.train.loop.restore_params)"
        )


def restore_params(path: str | pathlib.Path, abstract_params: Any, shardings: Any) -> Any:
    """A checkpoint's parameters, loaded straight into `shardings` (any mesh, any process count).

    `path` is a workdir, its `checkpoints/` or one step directory (the latest step is chosen);
    `abstract_params` the unboxed `jax.eval_shape` tree and `shardings` a matching tree of
    `NamedSharding`s on the NEW mesh (e.g. `mesh_lib.param_shardings(...)`). Every process calls it;
    each reads only the shards its devices hold.
    """
    import orbax.checkpoint as ocp

    step_dir, _ = ckpt_io.find_checkpoint(path)
    check_compatible_params(step_dir, abstract_params)
    target = _with_shardings(abstract_params, shardings)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(step_dir / ckpt_io.PARAMS_ITEM, target)


def params_sha256(params: Any) -> str:
    """sha256 over the parameters' raw bytes, leaves in sorted key-path order, fetched to host."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    digest = hashlib.sha256()
    for _, leaf in sorted(flat, key=lambda item: ckpt_io.key_path_str(item[0])):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils

            host = np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        else:
            host = np.asarray(jax.device_get(leaf))
        digest.update(np.ascontiguousarray(host).tobytes())
    return digest.hexdigest()


def evaluate(eval_step: Callable, params: Any, eval_batches: Sequence[Mapping[str, np.ndarray]], mesh: Any) -> dict:
    """Mean of each eval metric over the fixed batches -> {"eval_loss": ..., "eval_<aux>": ...}."""
    totals: dict[str, float] = {}
    for host_batch in eval_batches:
        metrics = jax.device_get(eval_step(params, mesh_lib.replicated_host_to_global(host_batch, mesh)))
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    return {f"eval_{name}": total / len(eval_batches) for name, total in totals.items()}


@dataclasses.dataclass
class _Setup:
    mesh: Any
    optimizer: Any
    schedule: Any
    abstract_params: Any
    abstract_state: TrainState
    state_shardings: TrainState
    init_state: Callable[[jax.Array], TrainState]


def build_setup(task: Task, train_cfg: TrainConfig, mesh: Any, init_rng: jax.Array,
                rules: Sequence[tuple[str, Any]] = mesh_lib.LOGICAL_AXIS_RULES) -> _Setup:
    """Abstract (shape-only) state, its shardings, and the optimizer; nothing is allocated yet."""
    abstract_boxed = jax.eval_shape(task.init_params, init_rng)
    params_shardings = mesh_lib.param_shardings(abstract_boxed, mesh, rules)
    abstract_params = mesh_lib.unbox(abstract_boxed)
    optimizer = make_optimizer(train_cfg, task.trainable_mask(abstract_params))

    def init_state(rng: jax.Array) -> TrainState:
        return TrainState.create(mesh_lib.unbox(task.init_params(rng)), optimizer)

    abstract_state = jax.eval_shape(init_state, init_rng)
    opt_shardings = mesh_lib.follow_param_shardings(abstract_state.opt_state, abstract_params, params_shardings, mesh)
    state_shardings = TrainState(step=mesh_lib.replicated(mesh), params=params_shardings, opt_state=opt_shardings)
    return _Setup(mesh, optimizer, make_schedule(train_cfg), abstract_params, abstract_state, state_shardings, init_state)


# ---------------------------------------------------------------------------------------------
# The loop.


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
            state, start_step, data_iter = _initial_state(task, setup, manager, make_data_iter, init_rng, say)
            if is_main:
                # A fresh start drops every row a crashed earlier attempt logged (even a step-0 evaluation).
                truncate_metrics_after(workdir / METRICS_FILE, start_step if resumed else -1)
            writer = MetricWriter(workdir, enabled=is_main)
            metadata = {
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


def _initial_state(
    task: Task, setup: _Setup, manager: Any, make_data_iter: Callable[[], Any], init_rng: jax.Array,
    say: Callable[[str], None],
) -> tuple[TrainState, int, Any]:
    """(state, start_step, data_iter) from the newest checkpoint that reads back, else a fresh init.

    A newer checkpoint that cannot be read (cut off, truncated, corrupted) is reported by path on
    stderr and the previous one is tried; once one restores, the unreadable ones are set aside as
    `checkpoints/unreadable-<step>-<time>` so this run can write those steps again. If none reads
    back nothing is renamed and the run stops with the reasons: restarting from step 0 silently
    would throw the work away. A readable checkpoint of another model or process count is refused
    (RunConfigError), never skipped.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        say("no checkpoint found; starting from step 0")
        state = jax.jit(setup.init_state, out_shardings=setup.state_shardings)(init_rng)
        return state, 0, make_data_iter()
    unreadable: list[tuple[pathlib.Path, str]] = []
    for step in steps:
        step_dir = pathlib.Path(manager.directory) / str(step)
        data_iter = make_data_iter()  # a failed attempt may have moved the iterator: each gets a fresh one
        try:
            state, metadata = _restore_step(task, setup, manager, step, step_dir, data_iter)
        except RunConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever the cause, this step cannot be resumed from
            reason = _one_line_reason(err)
            _warn(f"warning: checkpoint {step_dir} is unreadable ({reason}); trying the previous one")
            unreadable.append((step_dir, reason))
            continue
        _set_aside_unreadable(manager, [path for path, _ in unreadable])
        if metadata.get("stage") not in (None, task.name):
            say(f"warning: checkpoint stage {metadata.get('stage')!r} differs from this task's {task.name!r}")
        load_task_state = getattr(task, "load_state_dict", None)
        if load_task_state is not None:
            load_task_state(dict(metadata.get("task_state") or {}))
        say(f"resumed from step {step} ({step_dir})")
        return state, step, data_iter
    details = "; ".join(f"{path}: {reason}" for path, reason in unreadable)
    raise RunConfigError(
        f"no readable checkpoint in {manager.directory} ({details}); move it away to start again from step 0"
    )


def _restore_step(
    task: Task, setup: _Setup, manager: Any, step: int, step_dir: pathlib.Path, data_iter: Any
) -> tuple[TrainState, dict[str, Any]]:
    metadata = ckpt_io.read_step_metadata(step_dir)
    check_compatible_model(step_dir, metadata.get("model_config"), task.model_config_dict())
    check_compatible_params(step_dir, setup.abstract_params)
    check_same_process_count(step_dir)
    return restore_checkpoint(manager, step, setup.abstract_state, setup.state_shardings, data_iter)


def _warn(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def _set_aside_unreadable(manager: Any, step_dirs: Sequence[pathlib.Path]) -> None:
    """Rename unreadable step dirs out of Orbax's step namespace (kept for inspection, never loaded)."""
    if not step_dirs:
        return
    if jax.process_index() == 0:
        stamp = int(time.time())
        for step_dir in step_dirs:
            target = step_dir.with_name(f"unreadable-{step_dir.name}-{stamp}")
            step_dir.rename(target)
            _warn(f"warning: moved unreadable checkpoint {step_dir} to {target}")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("factost_set_aside_unreadable_checkpoints")
    manager.reload()


class PreemptionGuard:
    """SIGTERM / SIGINT -> a stop request the loop honours at the next step boundary.

    One process: our handlers record the signal; a second signal of the same kind reaches the
    handler that was there before (default SIGTERM: exit now; Ctrl-C twice: KeyboardInterrupt).
    Several processes must all stop at the same step, so there the decision is JAX's preemption
    sync point (its distributed runtime catches SIGTERM and agrees on a step across hosts) and no
    Python handler is installed. Handlers can only be set from the main thread; elsewhere the guard
    only does the multi-process check.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, process_count: int):
        self.multi_process = process_count > 1
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionGuard:
        if not self.multi_process and threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                previous = signal.signal(signum, self._handle)
                self._previous[signum] = signal.SIG_DFL if previous is None else previous
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def requested(self, step: int) -> bool:
        """Called once per step, with the step every process is at."""
        if not self.multi_process:
            return self.signal_name is not None
        from jax.experimental import multihost_utils

        try:
            reached = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # the preemption service is disabled: there is no notice to act on
            return False
        if reached:
            self.signal_name = self.signal_name or "a preemption notice"
        return reached


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
        self.writer.write({"step": step, **eval_metrics})
        self.summary.update(eval_metrics)


def _jit_steps(task: Task, setup: _Setup) -> tuple[Callable, Callable]:
    mesh = setup.mesh
    train_step = jax.jit(
        make_train_step(task.loss_fn, setup.optimizer, setup.schedule),
        in_shardings=(setup.state_shardings, mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)),
        out_shardings=(setup.state_shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        make_eval_step(task.loss_fn),
        in_shardings=(setup.state_shardings.params, mesh_lib.batch_sharding(mesh)),
        out_shardings=mesh_lib.replicated(mesh),
    )
    return train_step, eval_step


def _run_steps(
    task: Task,
    train_cfg: TrainConfig,
    setup: _Setup,
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
    train_step, eval_step = _jit_steps(task, setup)
    reporter = _Reporter(train_cfg, start_step, writer, progress, manager)
    eval_batches: list[dict[str, np.ndarray]] | None = None
    seen_shapes: set[Any] = set()
    step = start_step
    evaluate_params = getattr(task, "evaluate_params", None)
    # Only on a fresh start: a checkpoint of step 0 (preempted before the first update) already holds
    # this evaluation in its task state, and repeating it would count it twice for early stopping.
    if evaluate_params is not None and fresh_start:
        reporter.log_eval(0, evaluate_params(state.params, 0))
    stopped_early = _task_should_stop(task)
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
            if evaluate_params is not None:
                reporter.log_eval(step, evaluate_params(state.params, step))
            stopped_early = _task_should_stop(task)
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


def _task_should_stop(task: Task) -> bool:
    should_stop = getattr(task, "should_stop", None)
    return bool(should_stop()) if should_stop is not None else False


def _task_state(task: Task) -> dict[str, Any]:
    state_dict = getattr(task, "state_dict", None)
    return {"task_state": state_dict()} if state_dict is not None else {}
