"""Stage-2 initial parameters: read `init_from` (a stage-1 or stage-2 checkpoint), check its shapes
against the configured model before any array I/O, and fill boxed parameters with the values."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from factost_jax import checkpoint as ckpt_io
from factost_jax.train import mesh as mesh_lib
from factost_jax.train.adapt_config import read_init_metadata

NODE_EMBED_PATH = "adapter/st_context/node_embed"


def expected_shapes(abstract_params: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(mesh_lib.unbox(abstract_params))[0]
    return {ckpt_io.key_path_str(path): tuple(leaf.shape) for path, leaf in flat}


def check_init_shapes(step_dir: pathlib.Path, saved: Mapping[str, tuple[int, ...]],
                      expected: Mapping[str, tuple[int, ...]], num_nodes: int) -> str:
    """"stage1" or "stage2" for a checkpoint whose parameters fit the configured model; else ValueError.

    A stage-1 checkpoint must supply exactly the backbone leaves (token_embed, reg_token, stack, head);
    a stage-2 one every leaf. A node-embedding table of another size names both node counts.
    """
    is_stage2 = any(path.startswith("adapter/") for path in saved)
    wanted = dict(expected) if is_stage2 else {p: s for p, s in expected.items() if not p.startswith("adapter/")}
    if is_stage2 and NODE_EMBED_PATH in saved and NODE_EMBED_PATH in wanted \
            and saved[NODE_EMBED_PATH][0] != num_nodes:
        raise ValueError(f"init_from {step_dir}: its node embeddings are for N={saved[NODE_EMBED_PATH][0]} nodes "
                         f"but the dataset has N={num_nodes}; a stage-2 checkpoint only continues on the same network "
                         "(start from a stage-1 checkpoint instead)")
    differing = sorted(p for p in set(saved) | set(wanted) if saved.get(p) != wanted.get(p))
    if differing:
        first = differing[0]
        raise ValueError(
            f"init_from {step_dir}: parameters do not fit the configured model, first at {first}: checkpoint "
            f"{saved.get(first, 'missing')} vs model {wanted.get(first, 'absent')} ({len(differing)} differing "
            "path(s); is the checkpoint of another model size?)")
    return "stage2" if is_stage2 else "stage1"


def load_init_params(init_from: str, abstract_params: Any, num_nodes: int) -> tuple[str, Any]:
    """("stage1" | "stage2", host float32 params) read from `init_from`, shapes checked before any array I/O.

    Raises FileNotFoundError (no checkpoint) or ValueError (unreadable / corrupt / another size).
    """
    step_dir, _, _ = read_init_metadata(init_from)
    try:
        saved = ckpt_io.saved_param_shapes(step_dir)
    except Exception as err:  # noqa: BLE001 - Orbax raises many types for a damaged directory
        raise ValueError(f"init_from {step_dir}: cannot read the parameter metadata ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:300]})") from None
    kind = check_init_shapes(step_dir, saved, expected_shapes(abstract_params), num_nodes)
    try:
        _, params = ckpt_io.load_inference_params(step_dir)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"init_from {step_dir}: cannot restore the parameters ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:300]})") from None
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not np.all(np.isfinite(leaf)):
            raise ValueError(f"init_from {step_dir}: parameter {ckpt_io.key_path_str(path)} holds non-finite values")
    return kind, params


def fill_boxed(boxed: Any, values: Any) -> Any:
    """`boxed` (flax params with logical-axis boxes) with every leaf replaced by the matching value."""
    import flax.linen as nn

    def fill(target: Any, value: Any) -> Any:
        if isinstance(target, nn.meta.AxisMetadata):
            return target.replace_boxed(jnp.asarray(value, target.unbox(apply_constraint=False).dtype))
        return jnp.asarray(value, target.dtype)

    return jax.tree.map(fill, boxed, values, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
