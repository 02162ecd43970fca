"""The stage-2 `best/` store: the parameters of the best validation so far, kept by an Orbax
`CheckpointManager` that ranks its steps by the validation metric (`best_fn`, `best_mode="min"`,
`max_to_keep=1`).

`best/<step>/` has the layout of a loop checkpoint without the training items: `params/` (host
float32) and `metadata/` (stage, model and run config, input scale, step, the metric), so
`Forecaster.load` and `launch/evaluate.py --checkpoint` of WORKDIR (which prefer `best/`) or
WORKDIR/best load exactly the parameters `metrics.json` reports.
A save cut off by a kill leaves `<step>.orbax-checkpoint-tmp-*`; the next save's manager removes it
(`cleanup_tmp_directories`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

from factost_jax import checkpoint as ckpt_io
from factost_jax.train import mesh as mesh_lib
from factost_jax.train.checkpointing import with_shardings

BEST_DIR = ckpt_io.BEST_DIR  # where `checkpoint.inference_root` looks for it
BEST_METRIC = "val_MAE"  # lower is better


def _manager(root: pathlib.Path) -> Any:
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda metrics: metrics[BEST_METRIC], best_mode="min",
        keep_checkpoints_without_metrics=False, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=False)
    return ocp.CheckpointManager(root, item_names=(ckpt_io.PARAMS_ITEM, ckpt_io.METADATA_ITEM), options=options)


def save_best(root: pathlib.Path, params: Any, step: int, value: float, metadata: Mapping[str, Any]) -> None:
    """Saves `params` as `root/<step>` with its validation `value`; the manager keeps only the best step.

    `metadata` (JSON: stage, model_config, run_config) is stored beside them, with step and value.
    """
    import orbax.checkpoint as ocp

    manager = _manager(root)
    try:
        # Host copies: saving device arrays makes Orbax slice every replica (one compile per shape).
        args = ocp.args.Composite(**{
            ckpt_io.PARAMS_ITEM: ocp.args.StandardSave(ckpt_io.fetch_to_host(params)),
            ckpt_io.METADATA_ITEM: ocp.args.JsonSave({**metadata, "step": int(step), BEST_METRIC: float(value)}),
        })
        manager.save(int(step), args=args, metrics={BEST_METRIC: float(value)}, force=True)
        manager.wait_until_finished()
    finally:
        manager.close()


def restore_best(root: pathlib.Path, step: int | None, abstract_boxed: Any, mesh: Any,
                 rules: Any = mesh_lib.LOGICAL_AXIS_RULES) -> Any:
    """The parameters saved as `root/<step>`, restored straight onto `mesh` with the shardings of
    `abstract_boxed` (each process reads only its shards).

    Raises FileNotFoundError when there is no such step (no finished validation, or `best/` removed).
    """
    import orbax.checkpoint as ocp

    path = None if step is None else root / str(step) / ckpt_io.PARAMS_ITEM
    if path is None or not path.is_dir():
        raise FileNotFoundError(f"no best parameters at {root}/{step}: the run has no finished "
                                "validation (or its best/ directory was removed)")
    target = with_shardings(mesh_lib.unbox(abstract_boxed), mesh_lib.param_shardings(abstract_boxed, mesh, rules))
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path, target)
