"""Long-format pandas in and out for an adapted (stage-2) model: every sensor of the network jointly.

`Forecaster.forecast_df` calls `forecast_network_df` when the model is stage 2. The DataFrame is read by
the same reader as a user's file (`data/user_files.py`: columns, grid, gaps, one-line errors), put in
the adapter's node order (the `node_ids` an adapted checkpoint records; else the order the sensors
first appear, which must then be the order they had when adapting), and forecast with
`forecast_network`. The frame holds `id_column`, `timestamp_column`, "median" and one column per
quantile level ("0.1", ...), `horizon` rows per sensor on the future steps of the data's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from factost_jax.data.user_files import FileSourceOptions, frame_panel
from factost_jax.series_frames import level_column

_MAX_SHOWN = 5


def network_order(found: tuple[str, ...], adapted: Sequence[str] | None, num_nodes: int) -> np.ndarray:
    """`[N]` column of each adapted node in `found` (the frame's sensor order); one-line error on a mismatch."""
    if adapted is None:
        if len(found) != num_nodes:
            raise ValueError(f"the frame has {len(found)} sensors but the model was adapted to {num_nodes}")
        return np.arange(num_nodes)
    adapted = [str(a) for a in adapted]
    missing = [a for a in adapted if a not in set(found)]
    extra = [f for f in found if f not in set(adapted)]
    if missing or extra:
        parts = ([f"sensors the model was adapted to but the frame lacks {missing[:_MAX_SHOWN]}"] if missing else []) + \
                ([f"sensors the model does not know {extra[:_MAX_SHOWN]}"] if extra else [])
        raise ValueError("the frame's sensors differ from the adapted network: " + "; ".join(parts))
    return pd.Index(found).get_indexer(adapted)


def forecast_network_df(forecaster: Any, df: pd.DataFrame, id_column: str, timestamp_column: str, target: str,
                        horizon: int, quantiles: Sequence[float]) -> pd.DataFrame:
    """Stage-2 forecast of a long DataFrame -> long DataFrame (`horizon` rows per sensor, adapted order)."""
    options = FileSourceOptions(id_column=id_column, timestamp_column=timestamp_column, target=target)
    values, grid, alias, found = frame_panel(df, options, "df")  # values [T, N_found]
    adapted = forecaster.metadata.get("node_ids")
    order = network_order(found, adapted, forecaster.adapter_config.num_nodes)
    node_ids = list(adapted) if adapted is not None else list(found)
    result = forecaster.forecast_network(values[:, order], grid, horizon, quantiles=quantiles)
    future = pd.date_range(grid[-1], periods=horizon + 1, freq=pd.tseries.frequencies.to_offset(alias))[1:]
    nodes = len(node_ids)
    frame = pd.DataFrame({
        id_column: np.repeat(np.asarray(node_ids, dtype=object), horizon),
        timestamp_column: np.tile(future.to_numpy(), nodes),
        "median": result.median.T.reshape(-1),  # [H, N] -> sensor-major rows
    })
    for index, level in enumerate(result.quantile_levels):
        frame[level_column(level)] = result.quantiles[:, :, index].T.reshape(-1)
    try:  # the caller's id type back (ids were compared as strings)
        frame[id_column] = frame[id_column].astype(df[id_column].dtype)
    except (TypeError, ValueError):
        pass
    return frame
