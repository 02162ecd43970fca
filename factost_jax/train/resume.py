"""Where a run starts: the newest checkpoint that reads back (damaged ones set aside), else a fresh init."""

from __future__ import annotations

import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from factost_jax import checkpoint as ckpt_io
from factost_jax.train.checkpointing import (check_compatible_model, check_compatible_params, check_same_process_count,
                                             one_line_reason, restore_checkpoint)
from factost_jax.train.config import RunConfigError
from factost_jax.train.setup import Setup
from factost_jax.train.steps import TrainState
from factost_jax.train.task import Task


def initial_state(
    task: Task, setup: Setup, manager: Any, make_data_iter: Callable[[], Any], init_rng: jax.Array,
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
        state = setup.create_state(init_rng, task.initial_values())
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
            reason = one_line_reason(err)
            _warn(f"warning: checkpoint {step_dir} is unreadable ({reason}); trying the previous one")
            unreadable.append((step_dir, reason))
            continue
        _set_aside_unreadable(manager, [path for path, _ in unreadable])
        if metadata.get("stage") not in (None, task.name):
            say(f"warning: checkpoint stage {metadata.get('stage')!r} differs from this task's {task.name!r}")
        task.load_state_dict(dict(metadata.get("task_state") or {}))
        say(f"resumed from step {step} ({step_dir})")
        return state, step, data_iter
    details = "; ".join(f"{path}: {reason}" for path, reason in unreadable)
    raise RunConfigError(
        f"no readable checkpoint in {manager.directory} ({details}); move it away to start again from step 0"
    )


def _restore_step(
    task: Task, setup: Setup, manager: Any, step: int, step_dir: pathlib.Path, data_iter: Any
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
