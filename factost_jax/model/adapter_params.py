"""Stage-2 parameter trees: a stage-1 checkpoint grafted into one, and which of its leaves train.

A stage-2 tree is {token_embed, reg_token, stack, head, adapter}: the stage-1 subtrees under their
stage-1 names, so a stage-1 checkpoint grafts on 1:1, and every adapter weight under "adapter".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from factost_jax.model.config import TRAINABLE_CHOICES
from factost_jax.trees import unbox

Params = Any

STAGE1_KEYS: tuple[str, ...] = ("token_embed", "reg_token", "stack", "head")
ADAPTER_KEY = "adapter"


def _path_str(path: tuple[str, ...]) -> str:
    return "/".join(path)


def graft_stage1_params(stage2_params: Params, stage1_params: Params) -> Params:
    """Copies every stage-1 leaf (token_embed, reg_token, stack, head) into a stage-2 tree.

    Boxes (nn.LogicallyPartitioned) of `stage2_params` are kept; stage-1 params may be boxed or
    plain. The adapter subtree is untouched. Pure: returns a new tree.

    Raises:
      ValueError: stage-1 top-level keys are not exactly the four above, a stage-1 path is missing
        in the stage-2 tree, or a leaf's shape differs (the message names the first such path, e.g.
        a checkpoint of another model size).
    """
    source = unbox(stage1_params)
    if not isinstance(source, Mapping) or set(source) != set(STAGE1_KEYS):
        keys = sorted(source) if isinstance(source, Mapping) else type(source).__name__
        raise ValueError(
            f"graft_stage1_params: stage-1 params must have exactly the keys {list(STAGE1_KEYS)}, got {keys}"
        )
    if not isinstance(stage2_params, Mapping):
        raise ValueError(f"graft_stage1_params: stage-2 params must be a dict, got {type(stage2_params).__name__}")

    def graft(target: Any, src: Any, path: tuple[str, ...]) -> Any:
        if isinstance(src, Mapping):
            if not isinstance(target, Mapping):
                raise ValueError(
                    f"graft_stage1_params: {_path_str(path)} is a subtree in stage 1 but a leaf in stage 2"
                )
            for key in src:
                if key not in target:
                    raise ValueError(
                        f"graft_stage1_params: stage-1 path {_path_str(path + (key,))} has no stage-2 counterpart"
                    )
            return {key: graft(target[key], src[key], path + (key,)) if key in src else target[key] for key in target}
        if isinstance(target, Mapping):
            raise ValueError(f"graft_stage1_params: {_path_str(path)} is a leaf in stage 1 but a subtree in stage 2")
        boxed = isinstance(target, nn.meta.AxisMetadata)
        target_value = target.unbox(apply_constraint=False) if boxed else target
        if tuple(np.shape(src)) != tuple(target_value.shape):
            raise ValueError(
                f"graft_stage1_params: shape mismatch at {_path_str(path)}: stage-1 {tuple(np.shape(src))} vs "
                f"stage-2 {tuple(target_value.shape)} (is the checkpoint of another model size?)"
            )
        value = jnp.asarray(src, dtype=target_value.dtype)
        return target.replace_boxed(value) if boxed else value

    grafted = dict(stage2_params)
    for key in STAGE1_KEYS:
        if key not in stage2_params:
            raise ValueError(f"graft_stage1_params: stage-2 params lack the stage-1 subtree {key!r}")
        grafted[key] = graft(stage2_params[key], source[key], (key,))
    return grafted


def trainable_mask(params: Params, trainable: str) -> Params:
    """Bool pytree (same structure as `params`, boxed or plain) of the leaves to train.

    "adapter": only the adapter subtree; "adapter+head": adapter and quantile head; "all": every leaf.
    """
    if trainable not in TRAINABLE_CHOICES:
        raise ValueError(f"trainable must be one of {TRAINABLE_CHOICES}, got {trainable!r}")
    if not isinstance(params, Mapping) or ADAPTER_KEY not in params:
        keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"trainable_mask: params have no {ADAPTER_KEY!r} subtree (top-level keys {keys})")
    selected = {"adapter": {ADAPTER_KEY}, "adapter+head": {ADAPTER_KEY, "head"}, "all": set(params)}[trainable]

    def is_trainable(path, _leaf) -> bool:
        return path[0].key in selected

    return jax.tree_util.tree_map_with_path(is_trainable, params)
