"""Stage-1 pretraining (UTP) launcher.

  python launch/pretrain.py --config configs/pretrain.py:tiny --workdir runs/tiny [--config.train.steps=2000]
  python launch/pretrain.py --config configs/pretrain.py:tiny --dry_run      # print the parameter count

Re-running the same command resumes from the latest checkpoint in --workdir. Multi-process jobs
(factost_jax/train/distributed.py): under SLURM (`srun`), Open MPI (`mpirun`) or on a TPU pod slice
every process joins `jax.distributed` by itself (--distributed forces JAX's auto-detection);
anywhere else run one process per host with
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
and only process 0 writes metrics and prints. A user error
(bad config value, unusable workdir, missing data) prints one line `error: ...` and exits 2; a run
stopped by non-finite losses exits 1; a run that reaches train.steps exits 0, and so does one
stopped by SIGTERM / SIGINT after saving a checkpoint ("preempted at step N; checkpoint saved to PATH").
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from factost_jax.cli import (
    TRAINING_ERROR,
    fail,
    flag_parser,
    packaged_config_argv,
    prepare_workdir_or_fail,
    start_training,
)
from factost_jax.train.distributed import define_flags as define_distributed_flags

config_flags.DEFINE_config_file("config", None, "Pretraining config file, e.g. configs/pretrain.py:tiny.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, final_params.sha256.")
flags.DEFINE_bool("dry_run", False, "Build the model, print `params: N` and exit.")

FLAGS = flags.FLAGS
define_distributed_flags(FLAGS)


def _print_corpus(data_config) -> None:
    from factost_jax.data.pipeline import corpus_summary

    rows = corpus_summary(data_config)
    print(f"corpus: {len(rows)} sources, {sum(r['num_series'] for r in rows):,} series, "
          f"{sum(r['num_points'] for r in rows):,} points")
    for row in rows:
        print(f"  {row['name']:<20} series {row['num_series']:>9,}  points {row['num_points']:>13,}  "
              f"weight {row['weight']:.4f}")


def main(argv: list[str]) -> None:
    start_training(argv, FLAGS)
    import jax

    from factost_jax.model.encoder import count_params
    from factost_jax.train.loop import RunConfigError, TrainingDivergedError, train_and_evaluate
    from factost_jax.train.tasks import PretrainTask, validate_pretrain_config

    is_main = jax.process_index() == 0
    try:
        run_config = validate_pretrain_config(FLAGS.config)
        task = PretrainTask(run_config)
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    num_params = count_params(jax.eval_shape(task.init_params, jax.random.key(0)))
    if FLAGS.dry_run:
        print(f"params: {num_params}")
        return
    if is_main:
        print(f"model: {run_config.model_size} ({num_params:,} params, compute {run_config.model.compute_dtype}); "
              f"devices: {jax.device_count()} {jax.default_backend()}; mesh {run_config.mesh.shape}")
    try:
        if is_main:
            _print_corpus(run_config.data)
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    workdir = prepare_workdir_or_fail(FLAGS.workdir)
    try:
        summary = train_and_evaluate(task, run_config, workdir)
    except RunConfigError as error:
        fail(str(error))
    except TrainingDivergedError as error:
        fail(str(error), status=TRAINING_ERROR)
    except FileNotFoundError as error:
        fail(str(error))
    if is_main and not summary.get("preempted"):  # a preempted run already printed where it stopped
        shown = {k: summary[k] for k in ("step", "loss", "eval_loss", "params_sha256") if summary.get(k) is not None}
        print("done: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))


def run() -> None:
    """The `factost-pretrain` entry point (and `python launch/pretrain.py`); a `--config` file that does not
    exist is taken from the packaged configs by its file name (factost_jax/configs/)."""
    app.run(main, argv=packaged_config_argv(sys.argv), flags_parser=flag_parser(FLAGS, "configs/pretrain.py:tiny"))


if __name__ == "__main__":
    run()
