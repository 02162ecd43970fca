"""Stage-1 pretraining configs: `--config configs/pretrain.py:<variant>`.

Variants: debug (seconds-long CPU smoke run, loss visibly falls), minuscule, tiny (the paper's
default), small, base. The non-debug variants follow spec §2.4: AdamW lr 1e-3, weight decay 0.01,
clip 1.0, WSD 10 % warmup / decay from 60 %, global batch 512, 100k steps, dropout 0.1, seed 2025,
bf16 compute on accelerators (`model.compute_dtype="auto"`).

Data recipe v2 (issue 13; each choice measured with benchmarks/sanity.py, see docs/results.md):
contexts from 9 steps (min_context 8, under one patch) to 2,048, with the lengths users give
(`USER_CONTEXT_LENGTHS`: 12, 24, 96, 288, 512, a day or a week at common samplings) for half the
windows; batches cut to a context width drawn from `context_buckets`, so a step costs what its
contexts need; output patches F in {1, 2, 6, 16} (96-step horizons are F = 6; inference rounds any
other F up to a trained one and truncates); a seasonal synthetic component with daily and weekly
cycles at the periods of real sensors (24, 96, 144, 168, 288, 672, 2016).
`config.init_from` continues from a stage-1 checkpoint (e.g. the shipped factost-tiny).

Override any field from the command line, e.g.
  python launch/pretrain.py --config configs/pretrain.py:tiny --workdir runs/tiny \
      --config.train.steps=2000 --config.data.batch_size=256 --config.mesh.shape=-1,2,1

`validate_config(config)` turns the result into frozen dataclasses (raises ValueError naming the
first bad field); the launcher calls it before anything else.
"""

from ml_collections import config_dict

VARIANTS = ("debug", "minuscule", "tiny", "small", "base")


def _base_config(size: str) -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.variant = size

    # Model: a named size from factost_jax.model.config.MODEL_SIZES plus field overrides.
    config.model = config_dict.ConfigDict()
    config.model.size = size
    config.model.dropout = 0.1
    config.model.compute_dtype = "auto"  # bfloat16 on GPU/TPU, float32 on CPU
    config.model.remat = False

    # Data: the fields of factost_jax.data.pipeline.PretrainDataConfig.
    config.data = config_dict.ConfigDict()
    config.data.context_length = 2048
    config.data.predict_length = 256
    config.data.patch_size = 16
    config.data.min_context = 8
    config.data.output_patch_buckets = (1, 2, 6, 16)
    # Short widths dominate what users give; 2048 keeps the full trained length in every run.
    config.data.context_buckets = (64, 256, 1024, 2048)
    config.data.context_bucket_weights = (0.35, 0.25, 0.25, 0.15)
    config.data.user_context_share = 0.5
    config.data.batch_size = 512  # global, over all processes
    config.data.corpora = (("kernelsynth", 0.25), ("seasonal", 0.35), ("real", 0.4))
    config.data.exclude = config_dict.placeholder(tuple)  # None: every evaluation dataset and its twins
    config.data.allow_overlap = False
    config.data.kernelsynth_series = 1_000_000
    config.data.kernelsynth_length = 1024
    config.data.seasonal_series = 1_000_000
    config.data.seasonal_length = 4096  # two weekly cycles at 5-minute sampling
    config.data.seed = 2025
    config.data.data_dir = config_dict.placeholder(str)  # None: $FACTOST_DATA_DIR or ../shared/data
    config.data.worker_count = 0
    config.data.read_threads = 2
    config.data.prefetch_batches = 4

    # Training loop (factost_jax.train.loop.TrainConfig).
    config.train = config_dict.ConfigDict()
    config.train.steps = 100_000
    config.train.lr = 1e-3
    config.train.warmup_frac = 0.1
    config.train.stable_until_frac = 0.6
    config.train.weight_decay = 0.01
    config.train.clip_norm = 1.0
    config.train.log_every = 100
    config.train.eval_every = 5_000
    config.train.eval_windows = 10_240  # a multiple of the batch size
    config.train.checkpoint_every = 5_000
    config.train.max_to_keep = 3
    config.train.seed = 2025
    config.train.max_consecutive_skips = 20
    config.train.progress = True

    # A stage-1 checkpoint (path or shipped name) to continue from; None: random init.
    config.init_from = config_dict.placeholder(str)

    # Mesh ("data", "fsdp", "tensor"); -1 takes the remaining devices.
    config.mesh = config_dict.ConfigDict()
    config.mesh.shape = "-1,1,1"
    return config


def _debug(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """The debug model on 128-step contexts: ~100 steps in well under two minutes on two CPU cores."""
    config.model.dropout = 0.0
    config.data.context_length = 128
    config.data.predict_length = 64
    config.data.output_patch_buckets = (1, 2, 4)
    # One context width: the smoke run compiles one program per F bucket only (CI time).
    config.data.context_buckets = ()
    config.data.context_bucket_weights = ()
    config.data.user_context_share = 0.0
    config.data.batch_size = 32
    # Real series are cheap slices; KernelSynth draws a Gaussian process per window, so keep it a minority.
    config.data.corpora = (("kernelsynth", 0.2), ("seasonal", 0.2), ("real", 0.6))
    config.data.kernelsynth_series = 2_000
    config.data.kernelsynth_length = 256
    config.data.seasonal_series = 2_000
    config.data.seasonal_length = 512
    config.train.steps = 100
    config.train.lr = 3e-3
    config.train.log_every = 5
    config.train.eval_every = 50
    config.train.eval_windows = 128
    config.train.checkpoint_every = 50
    return config


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    variant = (arg or "tiny").strip()
    if variant not in VARIANTS:
        raise ValueError(f"unknown pretrain config variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    config = _base_config(variant)
    if variant == "debug":
        config = _debug(config)
    return config


def validate_config(config):
    """ConfigDict -> factost_jax.train.tasks.PretrainRunConfig (frozen), or ValueError naming the bad field."""
    from factost_jax.train.tasks import validate_pretrain_config

    return validate_pretrain_config(config)
