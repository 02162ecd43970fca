"""What the loop compiles: abstract (shape-only) train state, its shardings, the optimizer and the
jitted train / eval steps. Nothing is allocated by `build_setup`; `setup.create_state(rng, values)`
creates the parameters already sharded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from factost_jax.train import mesh as mesh_lib
from factost_jax.train.config import TrainConfig
from factost_jax.train.optim import make_optimizer, make_schedule
from factost_jax.train.steps import TrainState, make_eval_step, make_train_step
from factost_jax.train.task import Task


@dataclasses.dataclass
class Setup:
    mesh: Any
    optimizer: Any
    schedule: Any
    abstract_params: Any
    abstract_state: TrainState
    state_shardings: TrainState
    init_state: Callable[..., TrainState]

    def create_state(self, rng: jax.Array, values: Any = None) -> TrainState:
        """The initial train state, born sharded. `values` (host arrays, `Task.initial_values()`) enter
        the jitted init as arguments already on their parameters' shardings, so the compiled program
        holds no weights as constants (its size and compile time do not grow with the backbone)."""
        placed = place_values(values, self.state_shardings.params)
        return jax.jit(self.init_state, out_shardings=self.state_shardings)(rng, placed)


def place_values(values: Any, params_shardings: Any) -> Any:
    """Host arrays -> global arrays on the shardings of the parameters they initialise (each process
    reads only its shards). `values` holds a subset of the parameters' top-level keys; None stays None."""
    if values is None:
        return None
    shardings = {key: params_shardings[key] for key in values}
    return jax.tree.map(lambda value, sharding: jax.make_array_from_callback(
        np.shape(value), sharding, lambda index, value=value: np.asarray(value)[index]), dict(values), shardings)


def build_setup(task: Task, train_cfg: TrainConfig, mesh: Any, init_rng: jax.Array,
                rules: Sequence[tuple[str, Any]] = mesh_lib.LOGICAL_AXIS_RULES) -> Setup:
    """Abstract (shape-only) state, its shardings, and the optimizer; nothing is allocated yet."""
    abstract_boxed = jax.eval_shape(task.init_params, init_rng)
    params_shardings = mesh_lib.param_shardings(abstract_boxed, mesh, rules)
    abstract_params = mesh_lib.unbox(abstract_boxed)
    optimizer = make_optimizer(train_cfg, task.trainable_mask(abstract_params))

    def init_state(rng: jax.Array, values: Any = None) -> TrainState:
        boxed = task.init_params(rng) if values is None else task.init_params(rng, values)
        return TrainState.create(mesh_lib.unbox(boxed), optimizer)

    abstract_state = jax.eval_shape(init_state, init_rng)
    opt_shardings = mesh_lib.opt_state_shardings(optimizer, abstract_boxed, mesh, rules)
    state_shardings = TrainState(step=mesh_lib.replicated(mesh), params=params_shardings, opt_state=opt_shardings)
    return Setup(mesh, optimizer, make_schedule(train_cfg), abstract_params, abstract_state, state_shardings, init_state)


def jit_steps(task: Task, setup: Setup) -> tuple[Callable, Callable]:
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
