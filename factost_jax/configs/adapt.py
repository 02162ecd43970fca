"""Stage-2 adaptation configs: `--config configs/adapt.py:<variant>`.

Variants (dataset, default lengths): hzmetro (HZMETRO inflow), hzmetro_out, los_loop, aqi36 (24->24),
pems03, pems04, pems07, pems08, metr_la, pems_bay (these six need the user's series files in the data
dir), synthetic (the embedded sensor network, no files), etth2 and weather (96->96,
the variables as nodes), custom (a user's own CSV / Parquet / .npz: --config.dataset=PATH
--config.input_len=L --config.horizon=H, file options under data., CPU-sized budget). Everything
else is 12->12. MONTEVIDEO_BUS has no variant: it is in the shipped checkpoints' pretraining corpus,
so adapting to it would not be few-shot (refused unless --config.allow_overlap=True).

  python launch/adapt.py --config configs/adapt.py:hzmetro --config.init_from=runs/tiny --workdir runs/hz
  python launch/adapt.py --config configs/adapt.py:los_loop --config.model=stid --config.data.few_shot_ratio=1.0 \
      --workdir runs/los_stid_full
  ... --config.input_len=96 --config.horizon=96          # long-term setting
  python launch/adapt.py --config configs/adapt.py:custom --config.dataset=my.csv --config.input_len=12 \
      --config.horizon=12 [--config.data.nodes=nodes.csv] [--config.data.null_val=0.0] --workdir runs/mine

Top-level fields: dataset, input_len, horizon, model ("factost" | "stid"), init_from (a stage-1
workdir / checkpoint dir; default: the shipped factost-tiny when it exists, required for FactoST),
model_size (optional check against the checkpoint), trainable ("adapter" | "adapter+head" | "all"),
loss ("mae" | "pinball" | "mae+pinball"), compute_dtype, remat, allow_overlap (adapt even to a
dataset of the checkpoint's pretraining corpus, with a warning), allow_longer_context (an input_len
above the checkpoint's pretraining context length, with a warning). Sections: data (few-shot subset,
memory replay, batch), adapter (AdapterConfig fields but num_nodes), stid (STIDConfig sizes), train
(TrainConfig fields plus patience, min_delta, eval_batch_size, val_windows), mesh.shape and mesh.nodes_axis.

The defaults themselves are built in `factost_jax/train/adapt_defaults.py`, which `Forecaster.fit`
shares (it may not import this floor). `validate_config(config)` turns the result into a frozen
`AdaptRunConfig` (ValueError naming the first bad field); the launcher calls it before anything
touches the workdir.
"""

from ml_collections import config_dict

from factost_jax.train.adapt_defaults import CUSTOM, custom_adapt_config, default_adapt_config

# variant -> (dataset name, input_len, horizon)
VARIANTS: dict[str, tuple[str, int, int]] = {
    "hzmetro": ("HZMETRO", 12, 12),
    "hzmetro_out": ("HZMETRO:out", 12, 12),
    "los_loop": ("LOS-LOOP", 12, 12),
    "aqi36": ("AQI36", 24, 24),
    "pems03": ("PEMS03", 12, 12),
    "pems04": ("PEMS04", 12, 12),
    "pems07": ("PEMS07", 12, 12),
    "pems08": ("PEMS08", 12, 12),
    "metr_la": ("METR-LA", 12, 12),
    "pems_bay": ("PEMS-BAY", 12, 12),
    "synthetic": ("synthetic", 12, 12),
    # Long-term setting on the LTSF sets (variables as nodes, normalised scale).
    "etth2": ("ETTh2", 96, 96),
    "weather": ("WEATHER", 96, 96),
}


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    variant = (arg or "synthetic").strip().lower()
    if variant not in VARIANTS and variant != CUSTOM:
        raise ValueError(f"unknown adapt config variant {variant!r}; expected one of {', '.join(VARIANTS)}, {CUSTOM}")
    config = custom_adapt_config() if variant == CUSTOM else default_adapt_config(*VARIANTS[variant])
    config.variant = variant
    return config


def validate_config(config):
    """ConfigDict -> factost_jax.train.stage2.AdaptRunConfig (frozen), or ValueError naming the bad field."""
    from factost_jax.train.stage2 import validate_adapt_config

    return validate_adapt_config(config)
