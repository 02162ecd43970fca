"""Pure train / eval steps shared by both stages (big_vision's `update_fn` shape).

A task supplies `loss_fn(params, batch, rng, deterministic) -> (loss, aux_metrics)`; these
functions turn it into `state -> state` updates that the loop jits with shardings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from factost_jax.metrics import observed_mask

COUNT_KEY = "target_count"  # eval-step output: targets counted in the batch (not a metric)
LossFn = Callable[[Any, Mapping[str, jax.Array], jax.Array, bool], tuple[jax.Array, Mapping[str, jax.Array]]]


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. `step` counts attempted updates, including skipped ones."""

    step: jax.Array  # int32 scalar
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation) -> TrainState:
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def _select(keep_new: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda n, o: jnp.where(keep_new, n, o), new, old)


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array], jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """-> pure `train_step(state, batch, base_rng) -> (new_state, metrics)`.

    The dropout rng is `fold_in(base_rng, step)`, so a resumed run draws the same masks. A non-finite
    loss or gradient leaves params and optimizer state untouched (the step counter still advances)
    and reports `skipped = 1`. Metrics: loss, grad_norm (all raw gradients), param_norm, update_norm
    (of the applied update), lr (when `learning_rate_fn` is given; the optimizer's own count lags
    the step by the number of skipped updates), skipped, plus the task's aux metrics.
    """

    def train_step(state: TrainState, batch: Mapping[str, jax.Array], base_rng: jax.Array):
        rng = jax.random.fold_in(base_rng, state.step)
        (loss, aux), grads = jax.value_and_grad(
            lambda p: loss_fn(p, batch, rng, False), has_aux=True
        )(state.params)
        grad_norm = optax.tree.norm(grads)
        # A NaN/inf anywhere in the gradient makes its global norm non-finite.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        params = _select(finite, new_params, state.params)
        opt_state = _select(finite, new_opt_state, state.opt_state)
        metrics = {
            "loss": loss.astype(jnp.float32),
            "grad_norm": grad_norm.astype(jnp.float32),
            "param_norm": optax.tree.norm(params).astype(jnp.float32),
            "update_norm": jnp.where(finite, optax.tree.norm(updates), 0.0).astype(jnp.float32),
            "skipped": jnp.where(finite, 0, 1).astype(jnp.int32),
        }
        if learning_rate_fn is not None:
            metrics["lr"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
        metrics.update({name: jnp.asarray(value, jnp.float32) for name, value in aux.items()})
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_eval_step(loss_fn: LossFn) -> Callable[[Any, Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """-> pure `eval_step(params, batch) -> {"loss": ..., **aux, COUNT_KEY: n}` (deterministic; the rng is unused).

    `n` is how many targets the batch counts (observed `target` values under `target_mask`, the
    batch convention of both stages; the rows of a batch without a `target`), the weight of its
    means in the loop's global evaluation mean.
    """

    def eval_step(params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        loss, aux = loss_fn(params, batch, jax.random.key(0), True)
        metrics = {"loss": jnp.asarray(loss, jnp.float32)}
        metrics.update({name: jnp.asarray(value, jnp.float32) for name, value in aux.items()})
        metrics[COUNT_KEY] = _target_count(batch)
        return metrics

    return eval_step


def _target_count(batch: Mapping[str, jax.Array]) -> jax.Array:
    if "target" not in batch:
        return jnp.asarray(jax.tree.leaves(batch)[0].shape[0], jnp.float32)
    return jnp.sum(observed_mask(batch["target"], mask=batch.get("target_mask"))).astype(jnp.float32)
