"""Stage-2 tasks: few-shot adaptation of FactoST (`AdaptTask`) and the STID expert (`STIDTask`).

FactoST (spec §3): `STAdapterModel` with every stage-1 weight grafted from `init_from` (a stage-1
workdir / checkpoint dir; a stage-2 one continues an adaptation). The loss is L1 on the median in the
train-normalised space (spec §3.2 step 9), or the pinball loss, or their sum (`loss`). Which weights
train is `trainable` (model/config.py::TRAINABLE_CHOICES); the rest keep their stage-1 values exactly
(their optimizer updates are zero).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from factost_jax import checkpoint as ckpt_io
from factost_jax.data.types import STDataset
from factost_jax.train.adapt_config import AdaptRunConfig, read_init_metadata
from factost_jax.train.adapt_init import fill_boxed, load_init_params
from factost_jax.train.stage2_task import Stage2Task, model_calendar


class AdaptTask(Stage2Task):
    """FactoST stage 2: `STAdapterModel` initialised from a stage-1 (or stage-2) checkpoint.

    The checkpoint is read when the task is built, before the loop touches the workdir, so a missing,
    corrupt or wrong-size checkpoint fails with nothing written. Its weights are the task's
    `initial_values()`: the loop places them on the parameters' shardings and hands them to the
    jitted init as arguments, which grafts them into fresh stage-2 parameters (`init_params`).
    """

    def __init__(self, config: AdaptRunConfig, workdir: str | pathlib.Path | None = None,
                 dataset: STDataset | None = None):
        from factost_jax.model.adapter import STAdapterModel

        if config.model != "factost" or config.backbone is None or config.adapter is None:
            raise ValueError("AdaptTask needs a validated config with model='factost'")
        super().__init__(config, workdir, dataset)
        if self.dataset.num_nodes != config.adapter.num_nodes:
            raise ValueError(f"dataset {self.dataset.name} has N={self.dataset.num_nodes} nodes but the adapter's "
                             f"node table has {config.adapter.num_nodes}")
        self.backbone, self.adapter_config = config.backbone, config.adapter
        self.model = STAdapterModel(self.backbone, self.adapter_config)
        self.quantile_levels = tuple(self.backbone.quantile_levels)
        self._levels = np.asarray(self.quantile_levels, np.float32)
        self._median = int(np.argmin(np.abs(self._levels - 0.5)))
        abstract = jax.eval_shape(self._fresh_params, jax.random.key(0))
        self.init_kind, self._init_values = load_init_params(config.init_from, abstract, self.dataset.num_nodes)
        # The backbone's pretraining (context length, output lengths, corpus) travels with every checkpoint.
        self._provenance = ckpt_io.inherited_metadata(read_init_metadata(config.init_from)[1])

    def model_config_dict(self) -> dict[str, Any]:
        """The backbone's ModelConfig (the adapter's config is in the run config of the same metadata)."""
        return self.backbone.to_dict()

    def _fresh_params(self, rng: jax.Array) -> Any:
        """Freshly initialised boxed stage-2 params (shapes do not depend on the dummy batch)."""
        data, names = self.config.data, self.adapter_config.feature_names
        # numpy dummies: this runs inside the loop's jit / eval_shape traces.
        values = np.zeros((1, data.input_len, self.adapter_config.num_nodes), np.float32)
        context = {name: np.zeros((1, data.input_len), np.int32) for name in names}
        future = {name: np.zeros((1, data.horizon), np.int32) for name in names}
        return self.model.init({"params": rng}, values, context, future, data.horizon, True)["params"]

    def checkpoint_metadata(self) -> dict[str, Any]:
        """The input scale and the init checkpoint's stage-1 provenance (`checkpoint.inherited_metadata`)."""
        return {**super().checkpoint_metadata(), **self._provenance}

    def initial_values(self) -> Any:
        """The `init_from` weights (host float32): stage-1 keys, or every key of a stage-2 checkpoint."""
        return self._init_values

    def init_params(self, rng: jax.Array, values: Any = None) -> Any:
        """Fresh boxed stage-2 params; with `values` (see `initial_values`) grafted in."""
        from factost_jax.model.adapter import graft_stage1_params

        fresh = self._fresh_params(rng)
        if values is None:
            return fresh
        if self.init_kind == "stage2":
            return fill_boxed(fresh, values)
        return graft_stage1_params(fresh, values)

    def _forward(self, params: Any, batch: Mapping[str, Any], rng: jax.Array | None, deterministic: bool) -> Any:
        """-> quantiles [B, H, N, Q] in the train-normalised space."""
        context, future = model_calendar(batch, self.adapter_config.calendar_features, self.dataset.steps_per_day)
        return self.model.apply({"params": params}, batch["values"], context, future, self.config.data.horizon,
                                deterministic, rngs=None if deterministic else {"dropout": rng}).astype(jnp.float32)

    def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, deterministic: bool
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """L1 of the median (spec §3.2 step 9), the pinball loss, or their sum, over counted targets."""
        from factost_jax.metrics import masked_mae, pinball_loss

        quantiles = self._forward(params, batch, rng, deterministic)
        mask = batch["target_mask"]
        mae = masked_mae(quantiles[..., self._median], batch["target"], mask=mask)
        pinball = pinball_loss(quantiles, batch["target"], self._levels, mask)
        loss = {"mae": mae, "pinball": pinball, "mae+pinball": mae + pinball}[self.config.loss]
        return loss, {"mae": mae, "pinball": pinball}

    def trainable_mask(self, params: Any) -> Any:
        from factost_jax.model.adapter import trainable_mask

        return trainable_mask(params, self.config.trainable)

    def tokens_in_batch(self, batch: Mapping[str, Any]) -> int:
        rows, length, nodes = np.shape(batch["values"])
        patch = self.backbone.patch_size
        prompts = self.adapter_config.num_prompt_tokens if self.adapter_config.use_prompts else 0
        per_series = -(-min(length, self.backbone.max_context_length) // patch) + 1 \
            + -(-self.config.data.horizon // patch) + prompts
        return rows * nodes * per_series


class STIDTask(Stage2Task):
    """The STID expert (Shao et al., CIKM 2022) trained from scratch on the same windows and metrics."""

    def __init__(self, config: AdaptRunConfig, workdir: str | pathlib.Path | None = None,
                 dataset: STDataset | None = None):
        from factost_jax.model.stid import STID

        if config.model != "stid" or config.stid is None:
            raise ValueError("STIDTask needs a validated config with model='stid'")
        super().__init__(config, workdir, dataset)
        if self.dataset.num_nodes != config.stid.num_nodes:
            raise ValueError(f"dataset {self.dataset.name} has N={self.dataset.num_nodes} nodes but STID's node "
                             f"table has {config.stid.num_nodes}")
        self.model = STID(config.stid)

    def model_config_dict(self) -> dict[str, Any]:
        return {"kind": "stid", **self.config.stid.to_dict()}

    def _init_boxed(self, rng: jax.Array) -> Any:
        from factost_jax.model.stid import init_stid_params

        return init_stid_params(self.config.stid, rng)

    def _forward(self, params: Any, batch: Mapping[str, Any], rng: jax.Array | None, deterministic: bool) -> Any:
        """-> point forecast [B, H, N]; calendar of the LAST input step, as STID reads it."""
        return self.model.apply({"params": params}, batch["values"], batch["context_time_of_day"][:, -1],
                                batch["context_day_of_week"][:, -1], deterministic,
                                rngs=None if deterministic else {"dropout": rng}).astype(jnp.float32)

    def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, deterministic: bool
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
        from factost_jax.metrics import masked_mae

        mae = masked_mae(self._forward(params, batch, rng, deterministic), batch["target"], mask=batch["target_mask"])
        return mae, {"mae": mae}

    def trainable_mask(self, params: Any) -> None:
        return None

    def tokens_in_batch(self, batch: Mapping[str, Any]) -> int:
        rows, _, nodes = np.shape(batch["values"])
        return rows * nodes


def make_task(config: AdaptRunConfig, workdir: str | pathlib.Path | None = None,
              dataset: STDataset | None = None) -> AdaptTask | STIDTask:
    return (AdaptTask if config.model == "factost" else STIDTask)(config, workdir, dataset)
