"""The stage-2 `best/` store: the parameters of the best validation so far, one step directory.

`best/<step>/` holds an Orbax StandardSave of the host parameters; a new best replaces the old one.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import jax
import numpy as np

from factost_jax import checkpoint as ckpt_io
from factost_jax.train import mesh as mesh_lib

BEST_DIR = "best"


def save_best(root: pathlib.Path, params: Any, step: int) -> None:
    """Saves `params` as `root/<step>` and removes every other entry of `root` (older bests, and
    `<step>.orbax-checkpoint-tmp-*` left by a save cut off by a kill)."""
    import orbax.checkpoint as ocp

    # Host copies: saving device arrays makes Orbax slice every replica (one compile per shape).
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    checkpointer.save(root / str(step), args=ocp.args.StandardSave(ckpt_io.fetch_to_host(params)), force=True)
    checkpointer.close()
    if jax.process_index() == 0:
        for old in root.iterdir():
            if old.name != str(step):
                shutil.rmtree(old, ignore_errors=True)


def restore_best(root: pathlib.Path, step: int | None, abstract_boxed: Any, mesh: Any,
                 rules: Any = mesh_lib.LOGICAL_AXIS_RULES) -> Any:
    """The parameters saved as `root/<step>`, placed on `mesh` with the shardings of `abstract_boxed`.

    Raises FileNotFoundError when there is no such step (no finished validation, or `best/` removed).
    """
    import orbax.checkpoint as ocp

    path = None if step is None else root / str(step)
    if path is None or not path.is_dir():
        raise FileNotFoundError(f"no best parameters at {root}/{step}: the run has no finished "
                                "validation (or its best/ directory was removed)")
    shardings = mesh_lib.param_shardings(abstract_boxed, mesh, rules)
    target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), mesh_lib.unbox(abstract_boxed))
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    host = checkpointer.restore(path, args=ocp.args.StandardRestore(target))
    checkpointer.close()
    return jax.tree.map(lambda value, sharding: jax.make_array_from_callback(
        value.shape, sharding, lambda index, value=value: value[index]), host, shardings)
