"""Export a stage-1 training checkpoint as a small inference checkpoint (params + metadata only).

    python launch/export.py --checkpoint runs/tiny --output factost_jax/pretrained/factost-tiny --dtype bfloat16

The metadata keeps the model config, the run config, the source step, the pretraining context length
and output-patch counts (`pretrain_*`, which bound inference) and the list of datasets the
pretraining corpus really held (so `launch/evaluate.py` can refuse a zero-shot evaluation on data the
model has seen). The result loads with `Forecaster.load(OUTPUT)` and works as `--checkpoint` for
`launch/evaluate.py` and as `init_from` for `launch/adapt.py`.
"""

from __future__ import annotations

from absl import app, flags

from factost_jax.cli import fail, flag_parser, reject_positional

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Training workdir, its checkpoints/ dir, or one step dir.")
flags.DEFINE_string("output", None, "New directory for the inference checkpoint (must not exist).")
flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Stored parameter dtype (bfloat16 halves the size).")
flags.DEFINE_string("data_dir", None, "Data directory the corpus was built from (default: $FACTOST_DATA_DIR).")


def corpus_datasets(run_config: dict, data_dir: str | None) -> list[str]:
    """Names of the corpus components that kept at least one series (KernelSynth included)."""
    from factost_jax.data.pipeline import PretrainDataConfig, corpus_summary

    data = dict(run_config["data"])
    if data_dir is not None:
        data["data_dir"] = data_dir
    fields = PretrainDataConfig.__dataclass_fields__
    config = PretrainDataConfig(**{key: value for key, value in data.items() if key in fields})
    return [row["name"] for row in corpus_summary(config) if row["num_series"] > 0]


def export(checkpoint: str, output: str, dtype: str, data_dir: str | None) -> str:
    from factost_jax import checkpoint as ckpt

    step_dir, step = ckpt.find_checkpoint(checkpoint)
    metadata = ckpt.read_metadata(step_dir)
    model_config, params = ckpt.load_inference_params(step_dir)
    run_config = metadata.get("run_config") or {}
    # pretrain_context_length / _output_patch_buckets / ...: what the encoder was trained on, readable
    # without the run config (the Forecaster and stage 2 stay within it).
    extra = {**ckpt.inherited_metadata(metadata), "stage": metadata.get("stage", "pretrain"), "step": step,
             "source": str(step_dir), "run_config": run_config}
    if "data" in run_config:
        extra["corpus"] = corpus_datasets(run_config, data_dir)
    path = ckpt.save_inference_checkpoint(output, model_config, params, extra_metadata=extra, dtype=dtype)
    return str(path)


def main(argv: list[str]) -> None:
    reject_positional(argv)
    if not FLAGS.checkpoint or not FLAGS.output:
        fail("--checkpoint and --output are required")
    try:
        path = export(FLAGS.checkpoint, FLAGS.output, FLAGS.dtype, FLAGS.data_dir)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    print(f"exported {FLAGS.checkpoint} -> {path}")


if __name__ == "__main__":
    app.run(main, flags_parser=flag_parser(FLAGS))
