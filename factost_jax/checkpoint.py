"""Orbax checkpoint I/O shared by the training loop, evaluation and the Forecaster.

On-disk layout (what `train/loop.py` writes through an Orbax `CheckpointManager`)::

    <workdir>/checkpoints/<step>/
        params/     parameters, unboxed pytree of float32 arrays (Orbax StandardSave)
        opt_state/  optimizer state (training only)
        data_iter/  Grain iterator state, one JSON per process (training only)
        metadata/metadata   JSON: {"step", "stage", "model_config", "run_config", ...}

A stage-2 (adaptation) workdir also keeps `<workdir>/best/<step>/` (params and metadata), the
parameters of the best validation, which its `metrics.json` scores; `inference_root` sends a
workdir that has one there. A shipped inference checkpoint (`save_inference_checkpoint`) is one
such step directory holding only `params/` and `metadata/`; `resolve_checkpoint_path` finds one by
name ("factost-tiny"). This module knows only `model/config.py` (and the `trees.py` basement).
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from factost_jax.model.config import ModelConfig
from factost_jax.trees import key_path_str  # noqa: F401  (re-exported: ckpt_io.key_path_str)

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"  # a stage-2 workdir's best-validation store (train/best_params.py)
PARAMS_ITEM = "params"
OPT_STATE_ITEM = "opt_state"
DATA_ITER_ITEM = "data_iter"
METADATA_ITEM = "metadata"
METADATA_FILE = "metadata"  # Orbax's JsonSave file name inside the item directory
INFERENCE_DTYPES = ("float32", "bfloat16")
SHIPPED_CHECKPOINTS_DIR = "pretrained"  # package data: factost_jax/pretrained/<name>


class UnreadableCheckpointError(ValueError):
    """A step directory that exists but cannot be read back: cut off, truncated or corrupted."""


def shipped_roots() -> list[pathlib.Path]:
    """Where shipped checkpoints live: `factost_jax/pretrained/`, package data, so the same place in a
    source checkout and in an installed wheel."""
    return [pathlib.Path(__file__).resolve().parent / SHIPPED_CHECKPOINTS_DIR]


def resolve_checkpoint_path(path: str | os.PathLike) -> pathlib.Path:
    """An existing path as given, or a shipped checkpoint name ("factost-tiny") -> its directory.

    A bare name (no path separator) that is not an existing path is looked up in
    `factost_jax/pretrained/<name>` (package data). Raises FileNotFoundError listing the places tried.
    """
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise ValueError(f"checkpoint path must be a non-empty path or name, got {path!r}")
    given = pathlib.Path(path).expanduser()
    if given.exists():
        return given
    text = os.fspath(path)
    if os.sep in text or (os.altsep and os.altsep in text):
        raise FileNotFoundError(f"checkpoint path {given} does not exist")
    candidates = [root / text for root in shipped_roots()]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"checkpoint {text!r} is neither an existing path nor a shipped checkpoint (tried {tried})")


def read_step_metadata(step_dir: str | pathlib.Path) -> dict[str, Any]:
    """The JSON metadata of one step directory.

    Raises:
      UnreadableCheckpointError: the metadata file is missing, empty or not a JSON object.
    """
    path = pathlib.Path(step_dir) / METADATA_ITEM / METADATA_FILE
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnreadableCheckpointError(f"cannot read checkpoint metadata {path}: {err}") from None
    if not isinstance(metadata, dict):
        raise UnreadableCheckpointError(f"checkpoint metadata {path} is not a JSON object")
    return metadata


def _is_step_dir(path: pathlib.Path) -> bool:
    return (path / PARAMS_ITEM).is_dir() and (path / METADATA_ITEM / METADATA_FILE).is_file()


def list_steps(checkpoints_dir: str | pathlib.Path) -> list[int]:
    """Finished step numbers under a `checkpoints/` directory, ascending (unfinished temp dirs skipped)."""
    root = pathlib.Path(checkpoints_dir)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and _is_step_dir(p))


def _step_of(step_dir: pathlib.Path) -> int:
    metadata = read_step_metadata(step_dir)
    if "step" in metadata:
        return int(metadata["step"])
    if step_dir.name.isdigit():
        return int(step_dir.name)
    raise ValueError(f"checkpoint {step_dir}: metadata has no 'step' and the directory name is not a step number")


def find_checkpoint(path: str | pathlib.Path) -> tuple[pathlib.Path, int]:
    """A workdir, its `checkpoints/` directory, or one step directory -> (step_dir, step).

    For a workdir or `checkpoints/` directory the latest finished step is chosen.
    """
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"checkpoint path {path} is a file; expected a workdir, a checkpoints/ dir or a step dir")
    if _is_step_dir(path):
        return path, _step_of(path)
    root = path / CHECKPOINTS_DIR if (path / CHECKPOINTS_DIR).is_dir() else path
    steps = list_steps(root)
    if not steps:
        raise FileNotFoundError(
            f"no finished checkpoint under {path} (expected {CHECKPOINTS_DIR}/<step>/{{{PARAMS_ITEM},{METADATA_ITEM}}})"
        )
    return root / str(steps[-1]), steps[-1]


def inference_root(path: str | pathlib.Path) -> pathlib.Path:
    """Where inference reads `path`: a stage-2 workdir's `best/` when it holds a finished step (the
    best validation, what `metrics.json` scores, not the latest step early stopping ran past),
    else `path` as given (a stage-1 workdir, a `checkpoints/` dir, a step dir)."""
    path = pathlib.Path(path).expanduser()
    if path.is_dir() and not _is_step_dir(path) and list_steps(path / BEST_DIR):
        return path / BEST_DIR
    return path


def read_metadata(path: str | pathlib.Path) -> dict[str, Any]:
    """The JSON metadata of the checkpoint `find_checkpoint(path)` selects."""
    step_dir, _ = find_checkpoint(path)
    return read_step_metadata(step_dir)


def model_config_from_metadata(metadata: Mapping[str, Any], where: str = "checkpoint") -> ModelConfig:
    if "model_config" not in metadata:
        raise ValueError(f"{where}: metadata has no 'model_config'")
    return ModelConfig.from_dict(metadata["model_config"])


def _pretrain_data_field(metadata: Mapping[str, Any], key: str) -> Any:
    """A field of the stage-1 data config a checkpoint records, or None.

    Stage-2 checkpoints (and exports) copy it as `pretrain_<key>`; a stage-1 checkpoint holds it in
    `run_config["data"]`.
    """
    if metadata.get(f"pretrain_{key}") is not None:
        return metadata[f"pretrain_{key}"]
    run_config = metadata.get("run_config")
    if metadata.get("stage") == "pretrain" and isinstance(run_config, Mapping):
        return (run_config.get("data") or {}).get(key)
    return None


def trained_context_length(metadata: Mapping[str, Any]) -> int | None:
    """The longest context (steps) the checkpoint's encoder was pretrained on; None if unrecorded."""
    value = _pretrain_data_field(metadata, "context_length")
    return None if value is None else int(value)


def trained_output_patches(metadata: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The output-patch counts F pretraining drew from (sorted); None if unrecorded."""
    value = _pretrain_data_field(metadata, "output_patch_buckets")
    return None if value is None else tuple(sorted(int(f) for f in value))


def trained_context(metadata: Mapping[str, Any]) -> int | None:
    """The longest context (steps) a checkpoint of either stage was trained on; None when unrecorded.

    The pretraining context length, or a stage-2 run's longer `input_len` (adapting with
    `allow_longer_context` trains the whole model on it).
    """
    pretrained = trained_context_length(metadata)
    run_config = metadata.get("run_config")
    data = run_config.get("data") if isinstance(run_config, Mapping) and metadata.get("stage") == "adapt" else None
    adapted = data.get("input_len") if isinstance(data, Mapping) else None
    if pretrained is None or not isinstance(adapted, int):
        return pretrained
    return max(pretrained, adapted)


def adapter_config_values(metadata: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The AdapterConfig fields of a stage-2 checkpoint: metadata["adapter_config"], else the adapt
    loop's run config (metadata["run_config"]["adapter"]); None when it records neither."""
    if isinstance(metadata.get("adapter_config"), Mapping):
        return metadata["adapter_config"]
    run_config = metadata.get("run_config")
    if isinstance(run_config, Mapping) and isinstance(run_config.get("adapter"), Mapping):
        return run_config["adapter"]
    return None


# Fields of the stage-1 data config every derived checkpoint keeps as `pretrain_<field>`: what the
# encoder was trained on (inference stays within it) and what its corpus held (leakage guards).
INHERITED_DATA_FIELDS = ("context_length", "output_patch_buckets", "corpora", "exclude")
INHERITED_KEYS = ("corpus",)  # top-level keys kept as they are (the exported list of corpus datasets)


def inherited_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint derived from this one (adapted, exported, saved, uploaded) keeps of its
    stage-1 provenance: "corpus" and `pretrain_<field>` for `INHERITED_DATA_FIELDS`, where recorded.

    Works on a stage-1 checkpoint (fields read from its run config) and on an already derived one
    (fields copied as they are), so the information survives any chain of stage 2 / export / save.
    """
    kept = {key: metadata[key] for key in INHERITED_KEYS if metadata.get(key) is not None}
    for field in INHERITED_DATA_FIELDS:
        value = _pretrain_data_field(metadata, field)
        if value is not None:
            kept[f"pretrain_{field}"] = value
    return kept


def _params_tree_metadata(params_dir: pathlib.Path) -> Any:
    """The saved params tree (shapes/dtypes) of an item directory.

    Read through the handler, not the checkpointer: an item written by a CheckpointManager keeps its
    step-level metadata one directory up, where `Checkpointer.metadata` does not look.
    """
    import orbax.checkpoint as ocp

    metadata = ocp.PyTreeCheckpointHandler().metadata(pathlib.Path(params_dir).absolute())
    return getattr(metadata, "tree", metadata)


def saved_param_shapes(path: str | pathlib.Path) -> dict[str, tuple[int, ...]]:
    """{"stack/attn/q/kernel": shape, ...} of a checkpoint's params, read from metadata (no array I/O)."""
    step_dir, _ = find_checkpoint(path)
    tree = _params_tree_metadata(step_dir / PARAMS_ITEM)
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {key_path_str(p): tuple(leaf.shape) for p, leaf in flat}


def _restore_params_to_host(params_dir: pathlib.Path) -> Any:
    import orbax.checkpoint as ocp

    params_dir = pathlib.Path(params_dir).absolute()
    checkpointer = ocp.PyTreeCheckpointer()
    tree = _params_tree_metadata(params_dir)
    # numpy restore ignores the saved device layout, so any machine can read any run's params.
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(params_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def _to_float32(tree: Any) -> Any:
    def one(x: Any) -> Any:
        x = np.asarray(x)
        return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16" else x

    return jax.tree.map(one, tree)


def load_inference_params(path: str | pathlib.Path) -> tuple[ModelConfig, Any]:
    """(ModelConfig, params) from a checkpoint: params only, host numpy float32 (bf16 files are upcast)."""
    _, _, config, params = load_latest_readable(path)
    return config, params


def _load_step(step_dir: pathlib.Path) -> tuple[dict[str, Any], ModelConfig, Any]:
    metadata = read_step_metadata(step_dir)
    config = model_config_from_metadata(metadata, where=str(step_dir))
    try:
        params = _restore_params_to_host(step_dir / PARAMS_ITEM)
    except Exception as err:  # noqa: BLE001 - Orbax / TensorStore raise many types for a damaged file
        reason = " ".join(str(err).split())[:300]
        raise UnreadableCheckpointError(f"cannot read checkpoint params {step_dir / PARAMS_ITEM}: "
                                        f"{type(err).__name__}: {reason}") from None
    return metadata, config, _to_float32(params)


def load_latest_readable(path: str | pathlib.Path) -> tuple[pathlib.Path, dict[str, Any], ModelConfig, Any]:
    """(step_dir, metadata, ModelConfig, float32 host params) of the newest checkpoint that reads back.

    For a workdir or `checkpoints/` directory, a latest step that is truncated or corrupt is
    reported by path in a warning and the previous step is used, as training does when it resumes.
    A step directory given explicitly must itself be readable.

    Raises:
      FileNotFoundError: nothing that looks like a checkpoint at `path`.
      UnreadableCheckpointError: the given step (or every step found) cannot be read.
    """
    step_dir, _ = find_checkpoint(path)
    if step_dir == pathlib.Path(path).expanduser():
        return (step_dir, *_load_step(step_dir))
    failures = []
    for step in reversed(list_steps(step_dir.parent)):
        candidate = step_dir.parent / str(step)
        try:
            loaded = _load_step(candidate)
        except UnreadableCheckpointError as err:
            failures.append(str(err))
            continue
        for failure in failures:
            warnings.warn(f"skipped an unreadable checkpoint: {failure}; using step {step}", stacklevel=2)
        return (candidate, *loaded)
    raise UnreadableCheckpointError(f"no readable checkpoint under {path}: " + "; ".join(failures))


def fetch_to_host(tree: Any) -> Any:
    """Every leaf as a full host numpy array (gathered across processes when sharded over hosts)."""
    from jax.experimental import multihost_utils

    def one(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


def save_inference_checkpoint(
    path: str | pathlib.Path,
    model_config: ModelConfig,
    params: Any,
    extra_metadata: Mapping[str, Any] | None = None,
    dtype: str = "float32",
) -> pathlib.Path:
    """Write a params-only step directory at `path` (must not exist); `dtype="bfloat16"` halves its size.

    `extra_metadata` is merged into the JSON metadata (e.g. {"step": 100000, "stage": "pretrain",
    "corpus": [...]}); "model_config" and "params_dtype" are always set here.
    """
    import orbax.checkpoint as ocp

    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"dtype must be one of {INFERENCE_DTYPES}, got {dtype!r}")
    path = pathlib.Path(path).expanduser().absolute()
    if path.exists():
        raise ValueError(f"checkpoint path {path} already exists; choose a new directory")
    host_params = fetch_to_host(params)
    if dtype == "bfloat16":
        import ml_dtypes

        host_params = jax.tree.map(
            lambda x: x.astype(ml_dtypes.bfloat16) if np.issubdtype(x.dtype, np.floating) else x, host_params
        )
    metadata = {"step": 0, "stage": "inference", **dict(extra_metadata or {})}
    metadata.update({"model_config": model_config.to_dict(), "params_dtype": dtype})
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    checkpointer.save(
        path,
        args=ocp.args.Composite(
            **{PARAMS_ITEM: ocp.args.StandardSave(host_params), METADATA_ITEM: ocp.args.JsonSave(metadata)}
        ),
    )
    checkpointer.close()
    return path
