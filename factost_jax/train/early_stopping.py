"""Early stopping on a validation value (lower is better), with its state kept in checkpoints.

Hand-written rather than `flax.training.early_stopping.EarlyStopping`, whose semantics differ where
this run's guarantees depend on them (checked with flax 0.12): its first update counts as an
improvement whatever the value, so a NaN first validation becomes the best and nothing can beat it
afterwards; `patience=0` stops at the first evaluation without improvement (here: never stop); it
stops one evaluation later than `patience` says; and it does not record the best step, which
`best/` and metrics.json name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class EarlyStopping:
    """Tracks the best validation value (lower is better) and evaluations since it improved."""

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.evals_without_improvement = 0

    def update(self, value: float, step: int) -> bool:
        """Records one evaluation; True when it is a new best (a NaN never is)."""
        improved = math.isfinite(value) and (self.best_value is None or value < self.best_value - self.min_delta)
        if improved:
            self.best_value, self.best_step, self.evals_without_improvement = float(value), int(step), 0
        else:
            self.evals_without_improvement += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.evals_without_improvement >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_step": self.best_step,
                "evals_without_improvement": self.evals_without_improvement}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_value = state.get("best_value")
        self.best_step = state.get("best_step")
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
