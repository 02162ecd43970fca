"""How much history the Forecaster feeds the model: at most what the checkpoint was trained on.

A model pretrained on contexts of up to 512 steps degrades when given 2,048 (issue 13: every case
got worse past 512), although the architecture accepts `max_context_patches * patch_size` steps.
So the default limit is the trained length; raising it is allowed, up to the architecture's
maximum, with a warning.
"""

from __future__ import annotations

import warnings
from typing import Any

from factost_jax.inputs.series import positive_int


def default_max_context(trained: int | None, architecture: int) -> int:
    """The trained context length (capped at the architecture's), or the architecture's when unrecorded."""
    return architecture if trained is None else min(int(trained), architecture)


def check_max_context(value: Any, trained: int | None, architecture: int, stacklevel: int = 3) -> int:
    """A requested `max_context` -> int steps.

    Raises ValueError above `architecture` (the model cannot see more); warns, once per call, above
    `trained` (the model never saw contexts that long).
    """
    value = positive_int(value, "max_context")
    if value > architecture:
        raise ValueError(f"max_context={value} exceeds the model's maximum context of {architecture} steps "
                         "(max_context_patches * patch_size)")
    if trained is not None and value > trained:
        warnings.warn(f"max_context={value} is longer than the {trained}-step contexts this checkpoint was "
                      "pretrained on; forecasts from longer contexts are untested and may be worse",
                      stacklevel=stacklevel)
    return value
