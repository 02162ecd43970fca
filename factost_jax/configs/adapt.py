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

`validate_config(config)` turns the result into a frozen `AdaptRunConfig` (ValueError naming the
first bad field); the launcher calls it before anything touches the workdir.
"""

from ml_collections import config_dict

from factost_jax.model.config import DEFAULT_TRAINABLE

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


def _base_config(dataset: str, input_len: int, horizon: int) -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.dataset = dataset
    config.input_len = input_len
    config.horizon = horizon
    config.model = "factost"
    config.init_from = config_dict.placeholder(str)
    config.model_size = config_dict.placeholder(str)  # None: whatever size the checkpoint holds
    config.compute_dtype = "auto"  # bfloat16 on GPU/TPU, float32 on CPU
    config.remat = False
    # trainable: factost_jax.model.config.DEFAULT_TRAINABLE. loss: "mae" and "mae+pinball" tie on validation
    # MAE; "mae+pinball" keeps the quantiles calibrated (docs/results.md, "Stage-2 defaults and why").
    config.trainable = DEFAULT_TRAINABLE
    config.loss = "mae"
    # The init checkpoint's guards (factost_jax/train/adapt_guards.py): both refuse unless set True.
    config.allow_overlap = False  # target dataset in the checkpoint's pretraining corpus
    config.allow_longer_context = False  # input_len above the checkpoint's pretraining context length

    # Data: factost_jax.data.st_pipeline.STDataConfig (dataset / lengths come from the top level).
    config.data = config_dict.ConfigDict()
    config.data.data_dir = config_dict.placeholder(str)  # None: $FACTOST_DATA_DIR or ../shared/data
    config.data.channel = 0
    config.data.few_shot_ratio = 0.1
    config.data.few_shot_selection = "uniform"
    config.data.memory_fraction = 0.2
    config.data.replay_ratio = 0.3
    config.data.batch_size = 32  # global
    config.data.seed = 2025
    config.data.synthetic_nodes = 64
    config.data.synthetic_days = 28
    config.data.read_threads = 2
    config.data.prefetch_batches = 4

    # Adapter: factost_jax.model.adapter.AdapterConfig (num_nodes comes from the data); spec §3.3.
    config.adapter = config_dict.ConfigDict()
    config.adapter.calendar_features = (("time_of_day", 24), ("day_of_week", 7))
    config.adapter.embedding_dim = 32
    config.adapter.num_prompt_tokens = 3
    config.adapter.max_delay = 3
    config.adapter.num_prototypes = 32
    config.adapter.use_st_metadata = True
    config.adapter.use_cpr = True
    config.adapter.use_st_filtering = True
    config.adapter.use_prompts = True
    config.adapter.outer_revin = True
    config.adapter.dropout = 0.2
    config.adapter.cpr_num_heads = 4
    config.adapter.cpr_dropout = 0.5
    config.adapter.prompt_attention = "zero_gated"

    # STID expert: factost_jax.model.stid.STIDConfig sizes (the paper's: 32-wide parts, 3 layers).
    config.stid = config_dict.ConfigDict()
    config.stid.series_embed_dim = 32
    config.stid.node_embed_dim = 32
    config.stid.tod_embed_dim = 32
    config.stid.dow_embed_dim = 32
    config.stid.num_layers = 3
    config.stid.dropout = 0.15

    # Training loop (factost_jax.train.loop.TrainConfig) + early stopping.
    config.train = config_dict.ConfigDict()
    config.train.steps = 1000
    config.train.lr = 1e-3
    config.train.warmup_frac = 0.05
    config.train.stable_until_frac = 0.6
    config.train.decay = "sqrt"
    config.train.weight_decay = 0.01
    config.train.clip_norm = 1.0
    config.train.log_every = 25
    config.train.eval_every = 50
    config.train.checkpoint_every = 50
    config.train.max_to_keep = 2
    config.train.seed = 2025
    config.train.max_consecutive_skips = 20
    config.train.progress = True
    config.train.patience = 5  # evaluations without a better validation MAE; 0 never stops early
    config.train.min_delta = 0.0
    config.train.eval_batch_size = 64
    config.train.val_windows = 0  # early stopping on the last N validation windows; 0: all of them

    config.mesh = config_dict.ConfigDict()
    config.mesh.shape = "-1,1,1"
    # The mesh axis the sensor (node) axis is split over: None replicates it, "tensor" splits it for
    # networks too large for one device (factost_jax.train.mesh.logical_axis_rules).
    config.mesh.nodes_axis = config_dict.placeholder(str)
    return config


def _custom_config() -> config_dict.ConfigDict:
    """A user's own file (data/user_files.py): dataset, input_len and horizon come from the command line.

    CPU-sized defaults (a 200-sensor, one-month, 5-minute network on 2 cores: README, "Your own
    sensor network"); on a GPU raise them, e.g. --config.train.steps=1000 --config.train.eval_every=50
    --config.data.batch_size=32 --config.train.patience=5 --config.data.few_shot_ratio=0.1 for the paper's
    few-shot protocol.
    """
    config = _base_config(config_dict.placeholder(str), config_dict.placeholder(int), config_dict.placeholder(int))
    # How to read the file (user_files.FileSourceOptions); BasicTS defaults, recorded in the run.
    config.data.id_column = "unique_id"
    config.data.timestamp_column = "ds"
    config.data.target = "y"
    config.data.nodes = config_dict.placeholder(str)  # unique_id, latitude, longitude -> distance-kernel graph
    config.data.adjacency = config_dict.placeholder(str)  # or an [N, N] .npy / CSV
    config.data.freq = config_dict.placeholder(str)  # inferred from the timestamps; needed for an .npz without
    config.data.split_ratios = (0.6, 0.2, 0.2)
    config.data.null_val = config_dict.placeholder(float)  # None: only NaN / empty cells are missing
    config.data.norm = "global"
    # A user adapts to their whole history (the paper's 10 % is a benchmark protocol).
    config.data.few_shot_ratio = 1.0
    config.data.batch_size = 8
    config.train.steps = 40
    config.train.eval_every = 20
    config.train.checkpoint_every = 20
    config.train.log_every = 10
    config.train.patience = 2
    config.train.eval_batch_size = 32
    config.train.val_windows = 64  # a validation tail: the full split costs minutes per evaluation on CPU
    return config


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    variant = (arg or "synthetic").strip().lower()
    if variant not in VARIANTS and variant != "custom":
        raise ValueError(f"unknown adapt config variant {variant!r}; expected one of {', '.join(VARIANTS)}, custom")
    config = _custom_config() if variant == "custom" else _base_config(*VARIANTS[variant])
    config.variant = variant
    return config


def validate_config(config):
    """ConfigDict -> factost_jax.train.stage2.AdaptRunConfig (frozen), or ValueError naming the bad field."""
    from factost_jax.train.stage2 import validate_adapt_config

    return validate_adapt_config(config)
