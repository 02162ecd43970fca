"""A stage-2 Forecaster's windows as its adapter takes them: calendar slots mapped to the adapter's
cycles, and the input scale that maps values to the model's units.

`Forecaster.network_quantiles` checks the windows' shapes, then calls these and `adapter_predict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from factost_jax.data.input_scale import InputScale, recorded_input_scale
from factost_jax.inputs.series import standardise
from factost_jax.model.adapter import AdapterConfig, calendar_slots


def adapter_calendars(adapter_config: AdapterConfig, context_calendar: Mapping[str, np.ndarray],
                      future_calendar: Mapping[str, np.ndarray], horizon: int, keep: int,
                      steps_per_day: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The data layer's calendar -> the adapter's slots, for every feature the adapter uses.

    Args:
      context_calendar / future_calendar: {"time_of_day": slot 0..steps_per_day-1, "day_of_week":
        Monday = 0} as [B, T] / [B, >= H] ints.
      horizon: H; keep: the context steps the forecast uses (the last `keep` of T).
    Returns:
      ({name: [B, min(T, keep)] int32}, {name: [B, H] int32}), slots in [0, cycle).
    """
    context, future = {}, {}
    for name, cycle in adapter_config.calendar_features:
        if name == "time_of_day":
            mapping = lambda slots, c=cycle: calendar_slots(np.asarray(slots), steps_per_day, c)  # noqa: E731
        elif name == "day_of_week":
            mapping = lambda slots, c=cycle: np.asarray(slots, np.int32) % c  # noqa: E731
        else:
            raise ValueError(f"the adapter uses calendar feature {name!r}; forecast_network knows "
                             "'time_of_day' and 'day_of_week'")
        for source, target_dict, length in ((context_calendar, context, None), (future_calendar, future, horizon)):
            if name not in source:
                raise ValueError(f"calendar lacks {name!r}, which the adapter uses")
            slots = np.asarray(source[name])
            target_dict[name] = mapping(slots[:, -keep:] if length is None else slots[:, :length])
    return context, future


def network_input_scale(metadata: Mapping[str, Any], values: np.ndarray) -> InputScale:
    """The input scale the checkpoint was trained and validated with (data/input_scale.py), so a
    forecast maps windows as its metrics.json did; for windows values [B, T, N].

    Older checkpoints record none: each (window, node) is then standardised on its own (mean, std
    [B, 1, N]), which differs from training where a whole context is missing.
    """
    scale = recorded_input_scale(metadata)
    if scale is not None:
        return scale
    batch, length, nodes = values.shape
    flat = np.swapaxes(values, 1, 2).reshape(batch * nodes, length)
    _, loc, std = standardise(np.where(np.isfinite(flat), flat, np.nan))
    return InputScale(mean=loc.reshape(batch, 1, nodes), std=std.reshape(batch, 1, nodes))
