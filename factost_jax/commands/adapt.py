"""Stage-2 (spatio-temporal adaptation) launcher: few-shot FactoST or the STID expert.

  python launch/adapt.py --config configs/adapt.py:hzmetro --config.init_from=runs/tiny --workdir runs/hz
  python launch/adapt.py --config configs/adapt.py:los_loop --config.model=stid --workdir runs/los_stid
  python launch/adapt.py --config configs/adapt.py:synthetic --config.init_from=DIR --dry_run

Trains with early stopping on the full validation split, then evaluates the best parameters on the
full test split and writes WORKDIR/metrics.json (the launch/evaluate.py layout). Re-running the same
command resumes from the latest checkpoint in --workdir. Multi-process jobs take the same flags as
launch/pretrain.py (--coordinator_address, --num_processes, --process_id, --distributed). A user
error (bad config value, missing data, missing / corrupt / wrong-size checkpoint, unusable workdir)
prints one line `error: ...` and exits 2 with nothing written; a run stopped by non-finite losses
exits 1; one stopped by SIGTERM / SIGINT saves a checkpoint and exits 0 without metrics.json.
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

config_flags.DEFINE_config_file("config", None, "Adaptation config file, e.g. configs/adapt.py:hzmetro.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, best/, metrics.jsonl, metrics.json.")
flags.DEFINE_bool("dry_run", False, "Validate, build the task, print `params: N` and the data subset, and exit.")

FLAGS = flags.FLAGS
define_distributed_flags(FLAGS)


def _describe(run_config, task, num_params: int) -> str:
    from factost_jax.data.st_pipeline import select_train_windows

    data = run_config.data
    subset = select_train_windows(task.dataset, data).summary()
    model = ("stid" if run_config.model == "stid"
             else f"factost (d={run_config.backbone.d_model}, layers={run_config.backbone.num_layers}, "
                  f"trainable={run_config.trainable}, init_from={run_config.init_from})")
    replay = (f"memory {subset['memory_windows']} + current {subset['current_windows']}, replay {data.replay_ratio}"
              if data.replay_ratio > 0 else "no replay")
    return (f"dataset {task.dataset.name}: N={task.dataset.num_nodes}, {data.input_len}->{data.horizon}; "
            f"train windows {subset['selected_windows']} of {subset['train_windows']} "
            f"({data.few_shot_ratio:g}, {data.few_shot_selection}; {replay})\n"
            f"model: {model}; {num_params:,} params")


def main(argv: list[str]) -> None:
    start_training(argv, FLAGS)
    import jax

    from factost_jax.eval.evaluate import format_table
    from factost_jax.model.encoder import count_params
    from factost_jax.train.loop import RunConfigError, TrainingDivergedError
    from factost_jax.train.stage2 import METRICS_JSON, make_task, run_adaptation, validate_adapt_config

    is_main = jax.process_index() == 0
    try:
        run_config = validate_adapt_config(FLAGS.config)
        # Reads (and checks) the init checkpoint before anything is written to the workdir.
        task = make_task(run_config, FLAGS.workdir)
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    num_params = count_params(jax.eval_shape(task.init_params, jax.random.key(0)))
    if is_main:
        print(_describe(run_config, task, num_params), flush=True)
    if FLAGS.dry_run:
        print(f"params: {num_params}")
        return
    workdir = prepare_workdir_or_fail(FLAGS.workdir)
    try:
        result = run_adaptation(run_config, workdir, task=task, progress=is_main and run_config.train.progress)
    except (RunConfigError, FileNotFoundError, ValueError) as error:
        fail(str(error))
    except TrainingDivergedError as error:
        fail(str(error), status=TRAINING_ERROR)
    if result.get("preempted"):
        return  # the loop printed where it saved; rerunning the command resumes
    if is_main:
        adaptation = result["adaptation"]
        print(f"best step {adaptation['best_step']} (val MAE {adaptation['best_val_MAE']:.4f}) of "
              f"{adaptation['steps_run']} steps{' (stopped early)' if adaptation['stopped_early'] else ''}")
        print(format_table(result))
        print(f"wrote {workdir / METRICS_JSON}")


def run() -> None:
    """The `factost-adapt` entry point (and `python launch/adapt.py`); a `--config` file that does not
    exist is taken from the packaged configs by its file name (factost_jax/configs/)."""
    app.run(main, argv=packaged_config_argv(sys.argv), flags_parser=flag_parser(FLAGS, "configs/adapt.py:hzmetro"))


if __name__ == "__main__":
    run()
