"""AdamW with a warmup-stable-decay schedule (spec §2.4), global-norm clipping, frozen partitions.

`make_optimizer` reads its hyperparameters from any object with the `TrainConfig` attributes
(`lr`, `steps`, `warmup_frac`, `stable_until_frac`, `weight_decay`, `clip_norm`, and optionally
`init_lr_div`, `decay`, `final_factor`, `adam_b1`, `adam_b2`, `adam_eps`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

DECAY_SHAPES = ("sqrt", "linear", "cosine")

TRAINABLE = "trainable"
FROZEN = "frozen"


def wsd_schedule(
    peak_lr: float,
    total_steps: int,
    warmup_frac: float = 0.1,
    stable_until_frac: float = 0.6,
    init_lr_div: float = 100.0,
    decay: str = "sqrt",
    final_factor: float = 0.0,
) -> optax.Schedule:
    """Warmup-stable-decay learning rate as a pure function of the step (works under jit).

    - steps [0, W): linear from `peak_lr / init_lr_div` to `peak_lr`, W = int(warmup_frac * T);
    - steps [W, D): `peak_lr`, D = int(stable_until_frac * T);
    - steps [D, T]: `peak_lr * (f + (1 - f) * shape(p))`, p = (s - D) / (T - D), f = final_factor,
      shape "sqrt" = 1 - sqrt(p) (the spec's), "linear" = 1 - p, "cosine" = (1 + cos(pi p)) / 2;
      steps past T stay at `peak_lr * f`.
    """
    if peak_lr <= 0:
        raise ValueError(f"peak_lr must be > 0, got {peak_lr}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= warmup_frac <= stable_until_frac <= 1.0:
        raise ValueError(
            f"need 0 <= warmup_frac <= stable_until_frac <= 1, got warmup_frac={warmup_frac}, "
            f"stable_until_frac={stable_until_frac}"
        )
    if init_lr_div < 1:
        raise ValueError(f"init_lr_div must be >= 1, got {init_lr_div}")
    if decay not in DECAY_SHAPES:
        raise ValueError(f"decay must be one of {DECAY_SHAPES}, got {decay!r}")
    if not 0.0 <= final_factor <= 1.0:
        raise ValueError(f"final_factor must be in [0, 1], got {final_factor}")

    warmup_steps = int(warmup_frac * total_steps)
    decay_start = max(int(stable_until_frac * total_steps), warmup_steps)
    decay_steps = total_steps - decay_start
    init_lr = peak_lr / init_lr_div

    def schedule(step: jax.Array | int) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        warm = init_lr + (peak_lr - init_lr) * step / max(warmup_steps, 1)
        progress = jnp.clip((step - decay_start) / max(decay_steps, 1), 0.0, 1.0)
        if decay == "sqrt":
            shape = 1.0 - jnp.sqrt(progress)
        elif decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        decayed = peak_lr * (final_factor + (1.0 - final_factor) * shape)
        lr = jnp.where(step < warmup_steps, warm, jnp.where(step < decay_start, peak_lr, decayed))
        return lr.astype(jnp.float32)

    return schedule


def make_schedule(train_cfg: Any) -> optax.Schedule:
    """The run's learning-rate schedule from a `TrainConfig`-like object."""
    return wsd_schedule(
        peak_lr=train_cfg.lr,
        total_steps=train_cfg.steps,
        warmup_frac=train_cfg.warmup_frac,
        stable_until_frac=train_cfg.stable_until_frac,
        init_lr_div=getattr(train_cfg, "init_lr_div", 100.0),
        decay=getattr(train_cfg, "decay", "sqrt"),
        final_factor=getattr(train_cfg, "final_factor", 0.0),
    )


def trainable_labels(trainable_mask: Any) -> Any:
    """A bool tree (True = train) -> the `optax.multi_transform` label tree."""
    return jax.tree.map(lambda trainable: TRAINABLE if trainable else FROZEN, trainable_mask)


def make_optimizer(
    train_cfg: Any,
    trainable_mask: Any | Callable[[Any], Any] | None = None,
) -> optax.GradientTransformation:
    """clip_by_global_norm(clip_norm) -> AdamW(b1 0.9, b2 0.999, eps 1e-8, weight_decay) on the WSD schedule.

    `trainable_mask`: None (train everything), a bool pytree shaped like the params, or a callable
    params -> such a tree. Frozen leaves get exactly zero updates and carry no Adam moments; the
    clipping norm is computed over trainable gradients only, so a frozen block cannot shrink the
    adapter's step. Weight decay applies to every trainable leaf, as torch's AdamW does.
    """
    inner = optax.chain(
        optax.clip_by_global_norm(train_cfg.clip_norm),
        optax.adamw(
            learning_rate=make_schedule(train_cfg),
            b1=getattr(train_cfg, "adam_b1", 0.9),
            b2=getattr(train_cfg, "adam_b2", 0.999),
            eps=getattr(train_cfg, "adam_eps", 1e-8),
            weight_decay=train_cfg.weight_decay,
        ),
    )
    if trainable_mask is None:
        return inner
    if callable(trainable_mask):
        labels: Any = lambda params: trainable_labels(trainable_mask(params))  # noqa: E731
    else:
        labels = trainable_labels(trainable_mask)
    return optax.multi_transform({TRAINABLE: inner, FROZEN: optax.set_to_zero()}, labels)
