"""The loop's workdir and Orbax checkpoint I/O: manager, save / restore of the whole train state
(params, optimizer state, Grain iterator position, JSON metadata), compatibility checks before a
resume, and `restore_params` onto any mesh. The on-disk layout is described in `checkpoint.py`.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from factost_jax import checkpoint as ckpt_io
from factost_jax.train.config import RunConfigError, TrainConfig
from factost_jax.train.steps import TrainState


def prepare_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(workdir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise RunConfigError(f"workdir {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise RunConfigError(f"workdir {path} is not writable: {err.strerror or err}") from None
    return path


def save_replicated_arrays_whole_on_cpu() -> None:
    """On CPU, Orbax writes each replicated array whole from its first replica.

    Orbax's default there (`use_replica_parallel`) splits a replicated array's bytes among its
    replicas, which on CPU devices gains nothing (every replica lies in the same host memory) and
    costs one XLA compilation of a slice per array and device: about 150 compilations, 7 s, on the
    first save of a `debug` run over 8 CPU devices. Orbax itself turns it off on GPUs."""
    import orbax.checkpoint as ocp
    from absl import logging as absl_logging

    if jax.default_backend() != "cpu" or not getattr(ocp.type_handlers.get_type_handler(jax.Array),
                                                      "_use_replica_parallel", False):
        return
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns on every override; this one is meant
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    finally:
        absl_logging.set_verbosity(verbosity)


def make_checkpoint_manager(directory: pathlib.Path, train_cfg: TrainConfig) -> Any:
    import orbax.checkpoint as ocp

    save_replicated_arrays_whole_on_cpu()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=train_cfg.max_to_keep,
        save_interval_steps=train_cfg.checkpoint_every,
        enable_async_checkpointing=train_cfg.async_checkpointing,
        create=True,
        # Leftovers of saves cut off by a crash (`<step>.orbax-checkpoint-tmp-*`); never loaded anyway.
        cleanup_tmp_directories=True,
    )
    items = (ckpt_io.PARAMS_ITEM, ckpt_io.OPT_STATE_ITEM, ckpt_io.DATA_ITER_ITEM, ckpt_io.METADATA_ITEM)
    return ocp.CheckpointManager(directory, item_names=items, options=options)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def one_line_reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def check_compatible_model(step_dir: pathlib.Path, saved: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose stored model config differs from this run's, naming every differing field."""
    if saved is None:
        return
    wanted = json.loads(json.dumps(dict(wanted), default=str))  # tuples -> lists, as stored
    differing = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differing:
        fields = ", ".join(f"{k} (checkpoint {saved.get(k)!r}, configured {wanted.get(k)!r})" for k in differing)
        raise RunConfigError(
            f"checkpoint {step_dir} holds a different model than configured: {fields}; "
            "use a new --workdir or the original model config"
        )


def check_compatible_params(step_dir: pathlib.Path, abstract_params: Any) -> None:
    """Refuse to resume from a checkpoint whose parameter shapes differ from the configured model."""
    saved = ckpt_io.saved_param_shapes(step_dir)
    flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    wanted = {ckpt_io.key_path_str(path): tuple(leaf.shape) for path, leaf in flat}
    if saved != wanted:
        differing = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        raise RunConfigError(
            f"checkpoint {step_dir} holds a different model than configured (parameters differ: {differing[:5]}"
            f"{' ...' if len(differing) > 5 else ''}); use a new --workdir or the original model config"
        )


def save_checkpoint(manager: Any, state: TrainState, data_iter: Any, metadata: Mapping[str, Any], force: bool) -> bool:
    import grain
    import orbax.checkpoint as ocp

    step = int(metadata["step"])
    args = ocp.args.Composite(
        **{
            ckpt_io.PARAMS_ITEM: ocp.args.StandardSave(state.params),
            ckpt_io.OPT_STATE_ITEM: ocp.args.StandardSave(state.opt_state),
            ckpt_io.DATA_ITER_ITEM: grain.checkpoint.CheckpointSave(data_iter),
            ckpt_io.METADATA_ITEM: ocp.args.JsonSave(dict(metadata)),
        }
    )
    return manager.save(step, args=args, force=force)


def restore_checkpoint(
    manager: Any, step: int, abstract_state: TrainState, state_shardings: TrainState, data_iter: Any
) -> tuple[TrainState, dict[str, Any]]:
    """Restore params and optimizer state already sharded for this mesh, and the data position."""
    import grain
    import orbax.checkpoint as ocp

    target = with_shardings(abstract_state, state_shardings)
    args = ocp.args.Composite(
        **{
            ckpt_io.PARAMS_ITEM: ocp.args.StandardRestore(target.params),
            ckpt_io.OPT_STATE_ITEM: ocp.args.StandardRestore(target.opt_state),
            ckpt_io.DATA_ITER_ITEM: grain.checkpoint.CheckpointRestore(data_iter),
            ckpt_io.METADATA_ITEM: ocp.args.JsonRestore(),
        }
    )
    try:
        restored = manager.restore(step, args=args)
    except Exception as err:  # noqa: BLE001 - Orbax / TensorStore / Grain raise many types for a bad file
        raise ckpt_io.UnreadableCheckpointError(
            f"cannot restore checkpoint step {step} in {manager.directory}: {one_line_reason(err)}"
        ) from None
    step_array = jax.device_put(np.asarray(step, np.int32), state_shardings.step)
    state = TrainState(step=step_array, params=restored[ckpt_io.PARAMS_ITEM], opt_state=restored[ckpt_io.OPT_STATE_ITEM])
    return state, dict(restored[ckpt_io.METADATA_ITEM])


def check_same_process_count(step_dir: pathlib.Path) -> None:
    """Refuse to RESUME TRAINING from a checkpoint written by a different number of processes.

    Parameters and optimizer state reshard onto any mesh, but the Grain iterator state is one file
    per process (each process reads its own `[i::n]` slice of the stream), so a run with another
    process count cannot continue the same batch sequence. Evaluation, inference and fine-tuning
    need only the parameters: `restore_params` loads them onto any mesh and process count.
    """
    saved = ckpt_io.read_metadata(step_dir).get("process_count")
    if saved is not None and int(saved) != jax.process_count():
        raise RunConfigError(
            f"checkpoint {step_dir} was written by {saved} process(es) but this run has {jax.process_count()}; "
            "resuming training needs the same process count (the data-iterator position is saved per process). "
            "Rerun with the original process count, or start a new --workdir; for evaluation or fine-tuning "
            "its parameters load on any mesh (factost_jax.train.loop.restore_params)"
        )


def restore_params(path: str | pathlib.Path, abstract_params: Any, shardings: Any) -> Any:
    """A checkpoint's parameters, loaded straight into `shardings` (any mesh, any process count).

    `path` is a workdir, its `checkpoints/` or one step directory (the latest step is chosen);
    `abstract_params` the unboxed `jax.eval_shape` tree and `shardings` a matching tree of
    `NamedSharding`s on the NEW mesh (e.g. `mesh_lib.param_shardings(...)`). Every process calls it;
    each reads only the shards its devices hold.
    """
    import orbax.checkpoint as ocp

    step_dir, _ = ckpt_io.find_checkpoint(path)
    check_compatible_params(step_dir, abstract_params)
    target = with_shardings(abstract_params, shardings)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(step_dir / ckpt_io.PARAMS_ITEM, target)


def params_sha256(params: Any) -> str:
    """sha256 over the parameters' raw bytes, leaves in sorted key-path order, fetched to host."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    digest = hashlib.sha256()
    for _, leaf in sorted(flat, key=lambda item: ckpt_io.key_path_str(item[0])):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils

            host = np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        else:
            host = np.asarray(jax.device_get(leaf))
        digest.update(np.ascontiguousarray(host).tobytes())
    return digest.hexdigest()
