"""The `Task` protocol: what the shared loop (`train/loop.py`) needs from a stage.

A task (stage 1: `train/tasks.py::PretrainTask`; stage 2: `train/stage2_task.py`) provides:
  name: str                                     stage recorded in checkpoint metadata
  model_config_dict() -> dict                   JSON model config, stored with every checkpoint
  init_params(rng, values=None) -> boxed params flax params carrying logical axis names; `values` (the
                                                task's initial_values(), when it has some) fill them
  loss_fn(params, batch, rng, deterministic) -> (loss, {name: scalar})
  train_dataset(process_index, process_count) -> grain.IterDataset of host batches (this process's rows)
  eval_batches() -> list[dict]                  fixed GLOBAL batches (identical on every process)
  batch_shapes_key(batch) -> hashable           one compiled program per distinct key
  trainable_mask(params) -> bool pytree | None  None trains everything
  tokens_in_batch(batch) -> int                 for throughput logging
  evaluate_params(params, step) -> {name: value} its own evaluation, run at every eval step and, on a fresh
                                                start, once before the first update (logged at step 0);
                                                {} logs nothing
  should_stop() -> bool                         checked after each evaluation: True saves a checkpoint and
                                                ends the run early (e.g. early stopping)
  state_dict() -> dict / load_state_dict(dict)  JSON task state saved in every checkpoint's metadata
                                                ("task_state", when not empty) and handed back on resume
  initial_values() -> host pytree | None        weights the fresh parameters start from (stage 2: the
                                                stage-1 checkpoint), top-level keys a subset of the
                                                params'; the loop places them on their shardings and
                                                passes them to the jitted init as ARGUMENTS (closed
                                                over, they would be constants of the compiled program)
  checkpoint_metadata() -> dict                 extra JSON keys of every checkpoint's metadata (stage 2:
                                                the input scale, data/input_scale.py, and the stage-1
                                                provenance, checkpoint.inherited_metadata)
`TaskHooks` gives the last six their do-nothing defaults for a task that needs none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import jax
import numpy as np


class Task(Protocol):
    name: str

    def model_config_dict(self) -> dict[str, Any]: ...
    def init_params(self, rng: jax.Array, values: Any = None) -> Any: ...
    def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, deterministic: bool) -> Any: ...
    def train_dataset(self, process_index: int, process_count: int) -> Any: ...
    def eval_batches(self) -> list[dict[str, np.ndarray]]: ...
    def batch_shapes_key(self, batch: Mapping[str, Any]) -> Any: ...
    def trainable_mask(self, params: Any) -> Any: ...
    def tokens_in_batch(self, batch: Mapping[str, Any]) -> int: ...
    def evaluate_params(self, params: Any, step: int) -> dict[str, Any]: ...
    def should_stop(self) -> bool: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...
    def initial_values(self) -> Any: ...
    def checkpoint_metadata(self) -> dict[str, Any]: ...


class TaskHooks:
    """The protocol's optional hooks, doing nothing: no own evaluation, no stop condition, no state,
    no initial values, no extra metadata."""

    def evaluate_params(self, params: Any, step: int) -> dict[str, Any]:
        return {}

    def should_stop(self) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None

    def initial_values(self) -> Any:
        return None

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {}
