"""Device mesh, the one logical-axis rules table, and host batches -> global `jax.Array`s.

Parameters name their dimensions with logical axes ("embed", "mlp", "heads", ...) through
`nn.with_logical_partitioning`; activations do the same with `nn.with_logical_constraint`
("batch", "length", "embed"). `LOGICAL_AXIS_RULES` maps those names onto the mesh axes
`("data", "fsdp", "tensor")`; nothing else in the package mentions a mesh axis by name.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from factost_jax.trees import unbox  # noqa: F401  (re-exported: mesh_lib.unbox)

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")

# Order matters: flax assigns a mesh axis to the first logical name that claims it, so "batch"
# (listed first) takes "fsdp" before "embed" can in an activation `[batch, length, embed]`.
#
# Weights: FSDP stores every `embed`-sized dimension split over "fsdp" (gathered per layer by XLA);
# tensor parallelism splits the attention heads and the MLP hidden width over "tensor" (Megatron
# style: q/k/v and the MLP's up projection column-wise, the output projections row-wise). Batches
# and activations are split over data x fsdp on the batch axis. The stage-2 adapter's own small
# tables (prototypes, prompts, calendar, filters) stay replicated. "nodes" (the sensor axis of a
# stage-2 `[B, N, L, D]` activation and of the node embedding table) is replicated by default;
# `logical_axis_rules(nodes_axis="tensor")` splits it instead, for graphs too large for one device.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("nodes", None),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("quantile_out", None),
    ("patch_in", None),
    ("layers", None),
    ("adapter_in", None),
    ("adapter_embed", None),
    ("calendar", None),
    ("delays", None),
    ("filters", None),
    ("prototypes", None),
    ("prompts", None),
    ("prompt_rank", None),
    ("prompt_hidden", None),
    ("cpr_hidden", None),
)

# Mesh axes the stage-2 node axis may be split over ("data"/"fsdp" already carry the batch).
NODE_AXIS_CHOICES: tuple[str | None, ...] = (None, "tensor")


def logical_axis_rules(nodes_axis: str | None = None) -> tuple[tuple[str, Any], ...]:
    """The rules table, with the logical "nodes" axis mapped to `nodes_axis` (None: replicated)."""
    if nodes_axis not in NODE_AXIS_CHOICES:
        raise ValueError(f"mesh.nodes_axis must be one of {NODE_AXIS_CHOICES}, got {nodes_axis!r}")
    return tuple((name, nodes_axis if name == "nodes" else axes) for name, axes in LOGICAL_AXIS_RULES)


def parse_mesh_shape(shape: str | Sequence[int]) -> tuple[int, int, int]:
    """`"-1,1,1"` or `(-1, 1, 1)` -> a 3-tuple of ints (at most one -1 = "the remaining devices")."""
    if isinstance(shape, str):
        parts = [p.strip() for p in shape.replace("(", "").replace(")", "").split(",") if p.strip()]
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"mesh.shape: expected integers like '-1,1,1', got {shape!r}") from None
    else:
        dims = tuple(int(d) for d in shape)
    if len(dims) != len(MESH_AXES):
        raise ValueError(f"mesh.shape: expected {len(MESH_AXES)} sizes for axes {MESH_AXES}, got {shape!r}")
    if sum(d == -1 for d in dims) > 1 or any(d == 0 or d < -1 for d in dims):
        raise ValueError(f"mesh.shape: sizes must be positive with at most one -1, got {shape!r}")
    return dims  # type: ignore[return-value]


def resolve_mesh_shape(shape: str | Sequence[int], num_devices: int) -> tuple[int, int, int]:
    """Replace the -1 in `shape` by the remaining devices; the product must equal `num_devices`."""
    dims = parse_mesh_shape(shape)
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
        if num_devices % known:
            raise ValueError(f"mesh.shape {shape!r}: fixed sizes (product {known}) do not divide {num_devices} devices")
        dims = tuple(num_devices // known if d == -1 else d for d in dims)  # type: ignore[assignment]
    if math.prod(dims) != num_devices:
        raise ValueError(f"mesh.shape {shape!r} has {math.prod(dims)} devices but {num_devices} are available")
    return dims


def make_mesh(shape: str | Sequence[int] = (-1, 1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `("data", "fsdp", "tensor")` mesh over all (or the given) devices.

    Axes are `Auto` (GSPMD propagation) so that flax's logical constraints and jit shardings
    steer the partitioner rather than type-check every op.
    """
    devices = list(jax.devices() if devices is None else devices)
    dims = resolve_mesh_shape(shape, len(devices))
    return jax.make_mesh(dims, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES):
    """Trace inside this so `nn.with_logical_constraint` in the model becomes real constraints."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _mesh_axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        return mesh.shape[axes]
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES
) -> PartitionSpec:
    """Logical dimension names -> mesh `PartitionSpec`, replicating any dimension its mesh axes do not divide.

    The fallback keeps odd-sized dimensions (e.g. the 11-quantile x 16 head output, a 3-head model on a
    2-way tensor axis) from crashing a run: they are simply stored whole on every device.
    """
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match an array of rank {len(shape)}")
    spec = nn.logical_to_mesh_axes(tuple(names), rules)
    entries = list(spec) + [None] * (len(shape) - len(spec))
    safe = [axes if dim % _mesh_axis_size(mesh, axes) == 0 else None for axes, dim in zip(entries, shape)]
    return PartitionSpec(*safe)


def _is_boxed(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def param_shardings(abstract_boxed_params: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Any:
    """`NamedSharding` per parameter, for the UNBOXED tree, from `jax.eval_shape(init)`'s boxed output.

    Leaves without logical names (plain arrays) are replicated.
    """

    def one(leaf: Any) -> NamedSharding:
        if _is_boxed(leaf):
            return NamedSharding(mesh, logical_to_spec(leaf.names, leaf.value.shape, mesh, rules))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, abstract_boxed_params, is_leaf=_is_boxed)


def opt_state_shardings(optimizer: Any, abstract_boxed_params: Any, mesh: Mesh,
                        rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> Any:
    """Shardings of `optimizer.init(params)`, read from the logical-axis boxes.

    The optimizer is initialised abstractly on the BOXED parameters: its moments keep each
    parameter's box (its axis names), so they shard like their parameter through the same rules;
    leaves without a box (step counts) are replicated. The tree matches the unboxed optimizer state.
    """
    abstract_state = jax.eval_shape(optimizer.init, abstract_boxed_params)
    return param_shardings(abstract_state, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over `("data", "fsdp")`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_shard_count(mesh: Mesh) -> int:
    return _mesh_axis_size(mesh, ("data", "fsdp"))


def _check_batch_divisible(name: str, global_batch: int, mesh: Mesh) -> None:
    shards = batch_shard_count(mesh)
    if global_batch % shards:
        raise ValueError(
            f"batch array {name!r}: global batch {global_batch} is not divisible by the data*fsdp mesh size {shards}"
        )


def host_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice of a batch (`[b_local, ...]` per key) -> global arrays `[b_local * P, ...]`.

    Every process must call this with its own rows (what `make_pretrain_dataset(cfg, i, n)` yields).
    """
    sharding = batch_sharding(mesh)
    out = {}
    for name, local in batch.items():
        local = np.asarray(local)
        _check_batch_divisible(name, local.shape[0] * jax.process_count(), mesh)
        out[name] = jax.make_array_from_process_local_data(sharding, local)
    return out


def replicated_host_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """A batch that every process holds IN FULL (fixed eval batches) -> batch-sharded global arrays."""
    sharding = batch_sharding(mesh)
    out = {}
    for name, full in batch.items():
        full = np.asarray(full)
        _check_batch_divisible(name, full.shape[0], mesh)
        out[name] = jax.make_array_from_callback(full.shape, sharding, lambda index, full=full: full[index])
    return out
