"""A Forecaster on the Hugging Face Hub: `save_pretrained`, `from_pretrained`, `push_to_hub`.

A pretrained directory (and a Hub model repository) holds three files:

    config.json        the checkpoint's JSON metadata: model_config (+ adapter_config for stage 2),
                       corpus, pretrain_context_length / pretrain_output_patch_buckets (what the
                       encoder was trained on), step, params_dtype, the training run config; plus "library"
    model.safetensors  the parameters, one tensor per leaf named by its tree path ("stack/attn/q/kernel")
    README.md          a generated model card (sizes, corpus, metrics, license)

Weights are safetensors, not Orbax: one file the Hub shows (parameter count, dtypes) and any
framework reads without executing code or needing TensorStore; Orbax stays the training format
(resumable runs, sharded restore), which a Hub download never needs. bfloat16 is kept as bfloat16
through `safetensors.flax` (its numpy reader has no bf16).

    fc = Forecaster.from_pretrained("ORG/factost-tiny")        # or a local directory
    fc.save_pretrained("out/factost-tiny"); fc.push_to_hub("ORG/factost-tiny")
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import tempfile
from typing import TYPE_CHECKING, Any, Mapping

import jax
import numpy as np

from factost_jax import checkpoint as ckpt_io

if TYPE_CHECKING:
    from factost_jax.forecast import Forecaster

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
LIBRARY = "factost-jax"
LICENSE = "apache-2.0"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def flatten_params(params: Any) -> dict[str, np.ndarray]:
    """{"stack/attn/q/kernel": host array, ...} of a nested dict of arrays."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {ckpt_io.key_path_str(path): np.asarray(leaf) for path, leaf in flat}


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `flatten_params`: "a/b/c" keys -> nested dicts."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _stored_dtype(forecaster: Forecaster, dtype: str | None) -> str:
    """`dtype`, else the dtype the forecaster's checkpoint was stored in (lossless: a bf16 checkpoint's
    float32 params are exactly bf16-representable), else float32."""
    chosen = dtype or forecaster.metadata.get("params_dtype") or "float32"
    if chosen not in ckpt_io.INFERENCE_DTYPES:
        raise ValueError(f"dtype must be one of {ckpt_io.INFERENCE_DTYPES}, got {chosen!r}")
    return chosen


def hub_config(forecaster: Forecaster, dtype: str) -> dict[str, Any]:
    """config.json: the checkpoint metadata with this forecaster's model (and adapter) config."""
    from factost_jax import __version__

    config = {k: v for k, v in forecaster.metadata.items() if k not in ("model_config", "adapter_config")}
    config.update(ckpt_io.inherited_metadata(forecaster.metadata))  # pretrain_* readable without the run config
    config.update(library=LIBRARY, library_version=__version__, model_config=forecaster.config.to_dict(),
                  params_dtype=dtype)
    if forecaster.adapter_config is not None:
        config["adapter_config"] = forecaster.adapter_config.to_dict()
    return config


def _trained_context_text(config: Mapping[str, Any]) -> str:
    """"512 steps (forecasts use at most this by default)", or "not recorded"."""
    trained = ckpt_io.trained_context_length(config)
    return "not recorded" if trained is None else f"{trained} steps (forecasts use at most this by default)"


def model_card(config: Mapping[str, Any], num_params: int, repo_id: str | None = None,
               metrics: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """README.md of a pretrained directory: YAML front matter for the Hub, then sizes, corpus, metrics.

    `metrics` maps a dataset/setting label to {metric name: value} (e.g. from launch/evaluate.py JSON).
    """
    model = config["model_config"]
    name = repo_id.split("/")[-1] if repo_id else "FactoST-v2 (factost-jax)"
    stage = "stage 2 (spatio-temporal adapter)" if "adapter_config" in config else "stage 1 (universal temporal encoder)"
    corpus = config.get("corpus") or []
    lines = [
        "---",
        f"license: {LICENSE}",
        f"library_name: {LIBRARY}",
        "pipeline_tag: time-series-forecasting",
        "tags:", "- time-series-forecasting", "- spatio-temporal", "- jax", "- flax", "- factost",
        "---", "",
        f"# {name}", "",
        f"FactoST-v2 {stage}, written with {LIBRARY} (JAX/Flax). "
        "Probabilistic forecasts: quantiles of any horizon from any context.", "",
        "```python",
        "from factost_jax import Forecaster",
        f"fc = Forecaster.from_pretrained({(repo_id or 'DIRECTORY')!r})",
        "result = fc.forecast(series, horizon=24, quantiles=(0.1, 0.5, 0.9))  # series: [B, T] or a list",
        "```", "",
        "## Sizes", "",
        "| what | value |", "|---|---|",
        f"| parameters | {num_params:,} |",
        f"| d_model / FFN / layers / heads | {model['d_model']} / {model['ffn_dim']} / {model['num_layers']} / "
        f"{model['num_heads']} |",
        f"| patch size | {model['patch_size']} |",
        f"| max context | {model['patch_size'] * model['max_context_patches']} steps |",
        f"| pretrained on contexts up to | {_trained_context_text(config)} |",
        f"| horizon in one pass | {model['patch_size'] * model['max_output_patches']} steps (longer: rollout) |",
        f"| quantile levels | {', '.join(f'{q:g}' for q in model['quantile_levels'])} |",
        f"| weights dtype | {config.get('params_dtype', 'float32')} |",
        f"| training step | {config.get('step', 'unknown')} |", "",
        "## Pretraining corpus", "",
        (", ".join(corpus) if corpus else "not recorded in this checkpoint's metadata") + ".", "",
        "Evaluate zero-shot only on data outside this list (`factost-evaluate` refuses an overlap).", "",
        "## Metrics", "",
    ]
    if metrics:
        names = sorted({m for row in metrics.values() for m in row})
        lines += ["| setting | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(f"{row[m]:.4g}" if m in row else "" for m in names) + " |"
                  for label, row in metrics.items()]
    else:
        lines.append("None recorded with this upload; `factost-evaluate --checkpoint ...` computes them.")
    lines += ["", "## License", "", "Apache-2.0, the license of factost-jax.", ""]
    return "\n".join(lines)


def save_pretrained(forecaster: Forecaster, directory: str | os.PathLike, dtype: str | None = None,
                    repo_id: str | None = None, metrics: Mapping[str, Mapping[str, float]] | None = None
                    ) -> pathlib.Path:
    """Write config.json, model.safetensors and README.md into `directory` (created; files replaced)."""
    from safetensors.flax import save_file

    import jax.numpy as jnp

    dtype = _stored_dtype(forecaster, dtype)
    directory = pathlib.Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"save_pretrained: {directory} is a file; expected a directory")
    directory.mkdir(parents=True, exist_ok=True)
    flat = flatten_params(jax.device_get(forecaster.params))
    target = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    tensors = {k: jnp.asarray(v, target if np.issubdtype(v.dtype, np.floating) else v.dtype) for k, v in flat.items()}
    save_file(tensors, directory / WEIGHTS_FILE, metadata={"format": "flax", "library": LIBRARY})
    config = hub_config(forecaster, dtype)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    num_params = sum(int(v.size) for v in flat.values())
    (directory / CARD_FILE).write_text(model_card(config, num_params, repo_id=repo_id, metrics=metrics))
    return directory


def load_pretrained_dir(directory: str | os.PathLike) -> Forecaster:
    """A Forecaster from a directory written by `save_pretrained` (or downloaded from the Hub)."""
    from safetensors.flax import load_file

    from factost_jax.forecast import Forecaster

    directory = pathlib.Path(directory)
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: not a pretrained directory (missing {', '.join(missing)}; "
                                "expected the save_pretrained layout)")
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{directory / CONFIG_FILE}: unreadable JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{directory / CONFIG_FILE}: expected a JSON object, got {type(config).__name__}")
    model_config = ckpt_io.model_config_from_metadata(config, where=str(directory / CONFIG_FILE))
    try:
        tensors = load_file(directory / WEIGHTS_FILE)
    except Exception as err:  # noqa: BLE001 - the Rust reader raises its own error types
        raise ValueError(f"{directory / WEIGHTS_FILE}: unreadable safetensors file ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]})") from None
    # Inference runs in float32 (as Forecaster.load does for a bf16 Orbax checkpoint).
    params = unflatten_params({k: np.asarray(v, np.float32) if jax.numpy.issubdtype(v.dtype, jax.numpy.floating)
                               else np.asarray(v) for k, v in tensors.items()})
    adapter_config = None
    if "adapter_config" in config:
        from factost_jax.model.adapter import AdapterConfig

        adapter_config = AdapterConfig.from_dict(config["adapter_config"])
    forecaster = Forecaster(params, model_config, adapter_config=adapter_config, metadata=config)
    forecaster.path = directory
    return forecaster


def is_repo_id(text: str) -> bool:
    """"org/name" as the Hub spells repository ids (not an existing local path)."""
    return bool(_REPO_ID.match(text)) and not pathlib.Path(text).expanduser().exists()


def from_pretrained(repo_id_or_dir: str | os.PathLike, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None, token: str | bool | None = None) -> Forecaster:
    """A local pretrained directory, a Hub repository id ("org/name", through `snapshot_download`,
    so the HF cache, HF_HUB_OFFLINE and `revision` behave as for any Hub model), a shipped name or an
    Orbax checkpoint directory (`Forecaster.load`): every way to name a model, for one flag or call."""
    from factost_jax.forecast import Forecaster

    text = os.fspath(repo_id_or_dir)
    local = pathlib.Path(text).expanduser()
    if local.is_dir():
        if any((local / name).exists() for name in (CONFIG_FILE, WEIGHTS_FILE)):
            return load_pretrained_dir(local)
        return Forecaster.load(local)  # an Orbax workdir / checkpoints dir / step dir
    if not is_repo_id(text):
        if "/" not in text and os.sep not in text:  # a shipped name such as "factost-tiny"
            return Forecaster.load(text)
        raise FileNotFoundError(f"from_pretrained: {text} is neither a directory nor a Hub repository id "
                                "(expected 'org/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError  # also in 0.24 (not .errors)

    try:
        snapshot = snapshot_download(text, revision=revision, cache_dir=cache_dir, token=token,
                                     allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, CARD_FILE])
    except (LocalEntryNotFoundError, HfHubHTTPError) as err:
        where = f" at revision {revision}" if revision else ""
        raise FileNotFoundError(f"from_pretrained: Hub repository {text}{where} not available "
                                f"({' '.join(str(err).split())[:300]})") from None
    return load_pretrained_dir(snapshot)


def push_to_hub(forecaster: Forecaster, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload FactoST forecaster", dtype: str | None = None,
                metrics: Mapping[str, Mapping[str, float]] | None = None, api: Any = None) -> str:
    """Create (if needed) the model repository `repo_id` and upload the save_pretrained files in one
    commit; -> the commit URL. `api` is an `HfApi` (default: a new one with `token`)."""
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"push_to_hub: repo_id {repo_id!r} is not a Hub repository id (expected 'org/name')")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="factost_push_") as folder:
        save_pretrained(forecaster, folder, dtype=dtype, repo_id=repo_id, metrics=metrics)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder,
                                   commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))
