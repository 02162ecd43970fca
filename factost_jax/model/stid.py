"""STID: the spatial-temporal identity baseline (Shao et al., CIKM 2022) in flax.linen.

STID is the simplest strong ST expert: an MLP over a window of each node's series plus three learned
identities (which node, which time of day, which day of week). It is the "ST expert" baseline the
FactoST papers compare against; here it is written from the paper's description:

    e_ts   = Dense_{L -> D_ts}(x[:, :, n])                         time-series embedding per node
    e_node = E_node[n]         e_tod = E_tod[slot_tod]   e_dow = E_dow[slot_dow]
    h      = concat[e_ts, e_node, e_tod, e_dow]                    hidden = D_ts + D_node + D_tod + D_dow
    h      = h + Dense(Dropout(ReLU(Dense(h))))   (num_layers times)
    y      = Dense_{hidden -> H}(h)                                 [B, N, H] -> [B, H, N]

The calendar slots are those of the LAST input step (as in the original, which reads the tod/dow
channels at t = -1). Every op is per node, so cost is linear in N.

Missing values: NaN inputs are replaced by 0 before the time-series embedding. For the traffic
datasets (null_val 0.0) this is exactly what the data already holds for a broken sensor; on
z-scored data 0 is the train mean. No mask channel is added, to stay with the published model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from factost_jax.fields import reject_unknown_fields

_STID_FIELDS = ("num_nodes", "input_len", "horizon", "steps_per_day", "series_embed_dim", "node_embed_dim",
                "tod_embed_dim", "dow_embed_dim", "num_layers", "dropout")


@dataclasses.dataclass(frozen=True)
class STIDConfig:
    """Sizes of an STID model.

    Attributes:
      num_nodes: N, rows of the node-identity table.
      input_len: L, input window length.
      horizon: H, number of predicted steps.
      steps_per_day: rows of the time-of-day table (288 for 5-minute data, 24 for hourly).
      series_embed_dim / node_embed_dim / tod_embed_dim / dow_embed_dim: widths of the four parts of the
        hidden vector (32 each in the paper, so hidden = 128).
      num_layers: residual MLP blocks (3 in the paper).
      dropout: dropout inside each residual block (0.15 in the paper's BasicTS config).
    """

    num_nodes: int
    input_len: int = 12
    horizon: int = 12
    steps_per_day: int = 288
    series_embed_dim: int = 32
    node_embed_dim: int = 32
    tod_embed_dim: int = 32
    dow_embed_dim: int = 32
    num_layers: int = 3
    dropout: float = 0.15

    @property
    def hidden_dim(self) -> int:
        return self.series_embed_dim + self.node_embed_dim + self.tod_embed_dim + self.dow_embed_dim

    def validate(self) -> "STIDConfig":
        for name in ("num_nodes", "input_len", "horizon", "steps_per_day", "series_embed_dim", "node_embed_dim",
                     "tod_embed_dim", "dow_embed_dim", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"STIDConfig.{name} must be a positive int, got {value!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"STIDConfig.dropout must be in [0, 1), got {self.dropout!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "STIDConfig":
        reject_unknown_fields(values, _STID_FIELDS, "STIDConfig")
        return cls(**values).validate()


def _dense(features: int, in_name: str, out_name: str, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), (in_name, out_name)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (out_name,)),
        name=name,
    )


class _ResidualMLP(nn.Module):
    """`h + Dense(Dropout(ReLU(Dense(h))))` on `[..., hidden]`."""

    hidden_dim: int
    dropout: float

    @nn.compact
    def __call__(self, h: jax.Array, deterministic: bool) -> jax.Array:
        y = _dense(self.hidden_dim, "stid_hidden", "stid_mlp", "fc1")(h)
        y = nn.relu(y)
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        y = _dense(self.hidden_dim, "stid_mlp", "stid_hidden", "fc2")(y)
        return h + y


class STID(nn.Module):
    """STID forecaster.

    `__call__(values [B, L, N] (NaN = missing), time_of_day [B] int (slot of the last input step,
    0..steps_per_day-1), day_of_week [B] int (0..6), deterministic) -> [B, H, N]`.
    Slots are taken modulo their table size so an out-of-range slot can never index out of bounds.
    """

    config: STIDConfig

    @nn.compact
    def __call__(self, values: jax.Array, time_of_day: jax.Array, day_of_week: jax.Array,
                 deterministic: bool = True) -> jax.Array:
        cfg = self.config
        if values.ndim != 3:
            raise ValueError(f"STID: values must be [B, L, N], got shape {values.shape}")
        batch, length, num_nodes = values.shape
        if length != cfg.input_len:
            raise ValueError(f"STID: input length {length} != STIDConfig.input_len {cfg.input_len}")
        if num_nodes != cfg.num_nodes:
            raise ValueError(f"STID: data has {num_nodes} nodes but the node-embedding table has {cfg.num_nodes}")
        for name, slots in (("time_of_day", time_of_day), ("day_of_week", day_of_week)):
            if slots.shape != (batch,):
                raise ValueError(f"STID: {name} must be [B={batch}] (slot of the last input step), got {slots.shape}")

        x = jnp.nan_to_num(values.astype(jnp.float32), nan=0.0)
        x = jnp.swapaxes(x, 1, 2)  # [B, N, L]: the window of each node is one feature vector
        x = nn.with_logical_constraint(x, ("batch", "nodes", None))
        series_embed = _dense(cfg.series_embed_dim, "stid_window", "stid_embed", "series_embed")(x)

        def table(rows: int, width: int, rows_name: str, name: str) -> jax.Array:
            init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), (rows_name, "stid_embed"))
            return self.param(name, init, (rows, width))

        node_table = table(cfg.num_nodes, cfg.node_embed_dim, "nodes", "node_embed")
        tod_table = table(cfg.steps_per_day, cfg.tod_embed_dim, "calendar", "tod_embed")
        dow_table = table(7, cfg.dow_embed_dim, "calendar", "dow_embed")
        node_embed = jnp.broadcast_to(node_table[None], (batch, num_nodes, cfg.node_embed_dim))
        tod_embed = tod_table[jnp.mod(time_of_day.astype(jnp.int32), cfg.steps_per_day)]  # [B, D]
        dow_embed = dow_table[jnp.mod(day_of_week.astype(jnp.int32), 7)]
        tod_embed = jnp.broadcast_to(tod_embed[:, None], (batch, num_nodes, cfg.tod_embed_dim))
        dow_embed = jnp.broadcast_to(dow_embed[:, None], (batch, num_nodes, cfg.dow_embed_dim))

        h = jnp.concatenate([series_embed, node_embed, tod_embed, dow_embed], axis=-1)  # [B, N, hidden]
        h = nn.with_logical_constraint(h, ("batch", "nodes", "stid_hidden"))
        for i in range(cfg.num_layers):
            h = _ResidualMLP(cfg.hidden_dim, cfg.dropout, name=f"encoder_{i}")(h, deterministic)
        y = _dense(cfg.horizon, "stid_hidden", "stid_horizon", "regression")(h)  # [B, N, H]
        return jnp.swapaxes(y, 1, 2)


def init_stid_params(config: STIDConfig, rng: jax.Array, batch_size: int = 1):
    """Boxed (logically partitioned) STID parameters for `config`."""
    config.validate()
    values = jnp.zeros((batch_size, config.input_len, config.num_nodes), jnp.float32)
    slots = jnp.zeros((batch_size,), jnp.int32)
    return STID(config).init({"params": rng}, values, slots, slots, deterministic=True)["params"]
