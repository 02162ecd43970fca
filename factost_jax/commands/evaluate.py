"""Evaluate a baseline or a FactoST checkpoint on a dataset split with BasicTS metrics.

  python launch/evaluate.py --dataset HZMETRO --model seasonal_naive_day --input_len 12 --horizon 12 \
      [--split test] [--output result.json] [--data_dir DIR] [--batch_size 256] [--channel 0]
  python launch/evaluate.py --checkpoint runs/tiny --dataset ETTh2 --input_len 96 --horizon 96 \
      [--with_baselines] [--baselines naive|statistical|all|NAME,...] [--window_stride 1] [--allow_overlap]
      [--max_context N] [--plot plots/]
  python launch/evaluate.py --dataset ETTh2 --model autoets --input_len 96 --horizon 96 --window_stride 16

Prints the per-horizon table (rows avg, step_3, step_6, step_12; columns MAE, RMSE, MAPE, and QL,
coverage_80 for a checkpoint; MAPE is a fraction) and writes the result as JSON when --output is
given. --checkpoint takes a workdir, its checkpoints/ dir, a step dir or a shipped name, and evaluates
the latest checkpoint (zero-shot for stage 1, channel-independently), or for an adaptation (stage-2)
workdir its best validation step WORKDIR/best/<step>, which its metrics.json scores (a note on stderr
names it; WORKDIR/checkpoints gives the latest); a dataset the checkpoint was
pretrained on is refused unless --allow_overlap. The checkpoint sees at most the last max_context
steps of each window: by default the context length it was pretrained on (a note on stderr says
when --input_len is longer); --max_context N allows more, with a warning, up to the architecture's
maximum. --with_baselines adds every baseline and prints one
comparison table (a row per model); the JSON keeps the main result's keys and gains "results" (every
evaluated model, the main one first) and "skipped" ({"model", "error"} of baselines that cannot run
on these windows); --baselines narrows that set to a comma list of names or the groups naive (the
four of docs/baselines.md), statistical (autoets, autotheta: statsforecast, the optional `baselines`
extra) and all (the default). --window_stride S scores every S-th window of the split (the first
always), the same windows for the main model and every baseline: the statistical baselines fit one
model per window and node, minutes where the naive ones take seconds. --plot DIR writes PNGs of a
few windows and sensors with quantile bands. A user error prints one line `error: ...` on stderr and
exits with status 2.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags, logging

from factost_jax.checkpoint import BEST_DIR, CHECKPOINTS_DIR
from factost_jax.cli import fail, flag_parser, reject_positional
from factost_jax.eval import baselines
from factost_jax.eval.evaluate import (
    format_comparison,
    format_table,
    json_safe,
    plot_evaluation_windows,
    run_evaluation,
)

flags.DEFINE_string("dataset", None, "Dataset name, e.g. HZMETRO, HZMETRO:out, LOS-LOOP, ETTh2, or a file of "
                    "your own (my.csv, my.parquet, my.npz; see --data_option).")
flags.DEFINE_enum("model", None, list(baselines.BASELINES), "Baseline to evaluate (autoets / autotheta need "
                  "the optional statsforecast: pip install -e '.[baselines]').")
flags.DEFINE_string("checkpoint", None, "FactoST checkpoint (workdir, checkpoints dir, step dir or shipped name) "
                    "to evaluate instead of --model; stage 1 is evaluated zero-shot, an adaptation workdir at its "
                    "best validation step (best/).")
flags.DEFINE_integer("input_len", None, "Context length L.", lower_bound=1)
flags.DEFINE_integer("horizon", None, "Forecast horizon H.", lower_bound=1)
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split to evaluate.")
flags.DEFINE_string("output", None, "Write the result JSON here.")
flags.DEFINE_string("data_dir", None, "Real-data directory (default: $FACTOST_DATA_DIR or ../shared/data).")
flags.DEFINE_integer("batch_size", 256, "Windows per forecast call.", lower_bound=1)
flags.DEFINE_integer("channel", 0, "Channel of the dataset to forecast.", lower_bound=0)
flags.DEFINE_bool("with_baselines", False, "Also evaluate every baseline and print one table with a row per model.")
flags.DEFINE_string("baselines", "all", "With --with_baselines: comma list of baseline names or the groups "
                    "naive, statistical, all.")
flags.DEFINE_integer("window_stride", 1, "Score every S-th window of the split (same windows for every model).",
                     lower_bound=1)
flags.DEFINE_bool("allow_overlap", False, "Evaluate a checkpoint even on data its pretraining corpus contained.")
flags.DEFINE_integer("max_context", None, "Steps of each window a checkpoint sees (default: the context length it "
                     "was pretrained on; longer warns).", lower_bound=1)
flags.DEFINE_string("plot", None, "Write PNG plots of a few windows (sensors, median, quantile bands) into this dir.")
flags.DEFINE_multi_string("data_option", [], "For --dataset=PATH (a .csv / .parquet / .npz of your own): KEY=VALUE, "
                          "KEY one of id_column, timestamp_column, target, nodes, adjacency, freq, split_ratios "
                          "(0.6,0.2,0.2), null_val, norm; repeat the flag for several. A checkpoint adapted on the "
                          "same file (or by Forecaster.fit on a DataFrame) supplies the options it recorded.")
flags.mark_flags_as_required(["dataset", "input_len", "horizon"])
flags.mark_flags_as_mutual_exclusive(["model", "checkpoint"], required=True)

FLAGS = flags.FLAGS


def _common_kwargs() -> dict:
    from factost_jax.data.user_files import parse_option_pairs

    return {"split": FLAGS.split, "data_dir": FLAGS.data_dir, "channel": FLAGS.channel,
            "file_options": parse_option_pairs(FLAGS.data_option) or None}


def _baseline_results(names: list[str], skip: str | None) -> list[dict]:
    """The baselines `names` but `skip` on the same windows; one that cannot run records its reason."""
    results = []
    for name in names:
        if name == skip:
            continue
        try:
            # The statistical ones fit a model per window and node: show their progress.
            results.append(run_evaluation(FLAGS.dataset, name, FLAGS.input_len, FLAGS.horizon,
                                          batch_size=FLAGS.batch_size, window_stride=FLAGS.window_stride,
                                          **_common_kwargs(),
                                          progress=name in baselines.STATISTICAL_BASELINES))
        except ValueError as error:
            results.append({"model": name, "error": " ".join(str(error).split())})
    return results


def _note_cut_context(result: dict, requested: int | None) -> None:
    """One stderr line when the checkpoint saw less history than --input_len gave it."""
    seen = result.get("max_context")
    if seen is not None and seen < result["input_len"]:
        why = "--max_context" if requested else "the context length it was pretrained on; --max_context allows more"
        print(f"note: the checkpoint sees the last {seen} of the {result['input_len']} input steps ({why})",
              file=sys.stderr)


def _note_best_step(result: dict, given: str | None) -> None:
    """One stderr line when --checkpoint named an adaptation workdir, whose best/ step was evaluated."""
    step_dir = pathlib.Path(str(result.get("model", "")).removeprefix("factost:"))
    if given is None or step_dir.parent.name != BEST_DIR or step_dir.parent.parent != pathlib.Path(given).expanduser():
        return
    print(f"note: evaluating {step_dir}, the best validation step {step_dir.name} of the adaptation run {given} "
          f"(what its metrics.json scores); --checkpoint {pathlib.Path(given) / CHECKPOINTS_DIR} evaluates the latest",
          file=sys.stderr)


def main(argv: list[str]) -> None:
    reject_positional(argv)
    logging.set_verbosity(logging.ERROR)  # Orbax logs every restore at INFO/WARNING; errors stay one line
    if FLAGS.max_context is not None and FLAGS.checkpoint is None:
        fail("--max_context applies to --checkpoint (a baseline uses the --input_len steps it is given)")
    try:
        compared_names = baselines.baseline_names(FLAGS.baselines)  # a typo fails before any evaluation
        result = run_evaluation(FLAGS.dataset, FLAGS.model, FLAGS.input_len, FLAGS.horizon,
                                batch_size=FLAGS.batch_size, checkpoint=FLAGS.checkpoint,
                                allow_overlap=FLAGS.allow_overlap, window_stride=FLAGS.window_stride,
                                max_context=FLAGS.max_context, **_common_kwargs())
        _note_cut_context(result, FLAGS.max_context)
        _note_best_step(result, FLAGS.checkpoint)
        compared = _baseline_results(compared_names, FLAGS.model) if FLAGS.with_baselines else None
        plot_paths = []
        if FLAGS.plot:
            plot_paths = plot_evaluation_windows(FLAGS.dataset, FLAGS.model, FLAGS.input_len, FLAGS.horizon,
                                                 FLAGS.plot, checkpoint=FLAGS.checkpoint,
                                                 allow_overlap=FLAGS.allow_overlap, max_context=FLAGS.max_context,
                                                 **_common_kwargs())
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    print(format_table(result))
    if compared is not None:
        evaluated = [result, *(r for r in compared if "error" not in r)]
        skipped = [r for r in compared if "error" in r]
        print()
        print(format_comparison(evaluated))
        for row in skipped:
            print(f"skipped {row['model']}: {row['error']}")
        result = {**result, "results": evaluated, "skipped": skipped}
    for path in plot_paths:
        print(f"wrote {path}")
    if FLAGS.output:
        output = pathlib.Path(FLAGS.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(json_safe(result), indent=2) + "\n")
        print(f"wrote {output}")


def run() -> None:
    """The `factost-evaluate` entry point (and `python launch/evaluate.py`)."""
    app.run(main, flags_parser=flag_parser(FLAGS))


if __name__ == "__main__":
    run()
