"""Pytree helpers every floor uses (the basement: imports nothing of the package).

`unbox` strips flax's logical-partitioning boxes; `key_path_str` names a leaf "stack/attn/q/kernel",
the spelling checkpoints, shape checks and error messages share.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax


def unbox(tree: Any) -> Any:
    """Strips flax AxisMetadata boxes (`nn.LogicallyPartitioned`), leaving plain leaves; adds NO sharding
    constraint (`jax.jit`'s out_shardings place the arrays)."""
    return jax.tree.map(lambda leaf: leaf.value if isinstance(leaf, nn.meta.AxisMetadata) else leaf, tree,
                        is_leaf=lambda leaf: isinstance(leaf, nn.meta.AxisMetadata))


def key_path_str(path: Any) -> str:
    """A pytree key path as "stack/attn/q/kernel" (dict keys, attribute names or indices)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
