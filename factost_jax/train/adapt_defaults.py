"""Stage 2's config defaults: the ConfigDicts `configs/adapt.py`'s variants and `Forecaster.fit` start from.

They live on the training floor, not in `configs/`, because `Forecaster.fit` (the forecast room,
above training) builds the same `custom` config as `launch/adapt.py --config configs/adapt.py:custom`
and may not import the launchers' configs (floor above it). The fields are described in
`factost_jax/configs/adapt.py`; `adapt_config.validate_adapt_config` turns either result into a frozen
`AdaptRunConfig`.
"""

from ml_collections import config_dict

from factost_jax.model.config import DEFAULT_TRAINABLE

CUSTOM = "custom"  # the variant for a user's own file (or, through Forecaster.fit, a DataFrame)


def default_adapt_config(dataset: str, input_len: int, horizon: int) -> config_dict.ConfigDict:
    """Every stage-2 field at its default, for `dataset` at `input_len` -> `horizon` (a named variant)."""
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


def custom_adapt_config() -> config_dict.ConfigDict:
    """A user's own file (data/user_files.py): dataset, input_len and horizon come from the command line.

    CPU-sized defaults (a 200-sensor, one-month, 5-minute network on 2 cores: README, "Your own
    sensor network"); on a GPU raise them, e.g. --config.train.steps=1000 --config.train.eval_every=50
    --config.data.batch_size=32 --config.train.patience=5 --config.data.few_shot_ratio=0.1 for the paper's
    few-shot protocol.
    """
    config = default_adapt_config(config_dict.placeholder(str), config_dict.placeholder(int),
                                  config_dict.placeholder(int))
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
    config.variant = CUSTOM  # as get_config records it, so Forecaster.fit's config equals the launcher's
    return config
