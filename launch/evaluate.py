"""Evaluate a baseline (or, later, a checkpoint) on a dataset split with BasicTS metrics.

  python launch/evaluate.py --dataset HZMETRO --model seasonal_naive_day --input_len 12 --horizon 12 \
      [--split test] [--output result.json] [--data_dir DIR] [--batch_size 256] [--channel 0]

Prints the per-horizon table (rows avg, step_3, step_6, step_12; columns MAE, RMSE, MAPE; MAPE is a
fraction) and writes the result as JSON when --output is given. A user error prints one line
`error: ...` on stderr and exits with status 2.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags

from factost_jax.eval import baselines
from factost_jax.eval.evaluate import format_table, json_safe, run_evaluation

USAGE_ERROR = 2

flags.DEFINE_string("dataset", None, "Dataset name, e.g. HZMETRO, HZMETRO:out, LOS-LOOP, ETTh2.")
flags.DEFINE_enum("model", None, sorted(baselines.BASELINES), "Baseline to evaluate.")
flags.DEFINE_string("checkpoint", None, "Stage-1 checkpoint directory to evaluate zero-shot (instead of --model).")
flags.DEFINE_integer("input_len", None, "Context length L.", lower_bound=1)
flags.DEFINE_integer("horizon", None, "Forecast horizon H.", lower_bound=1)
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split to evaluate.")
flags.DEFINE_string("output", None, "Write the result JSON here.")
flags.DEFINE_string("data_dir", None, "Real-data directory (default: $FACTOST_DATA_DIR or ../shared/data).")
flags.DEFINE_integer("batch_size", 256, "Windows per forecast call.", lower_bound=1)
flags.DEFINE_integer("channel", 0, "Channel of the dataset to forecast.", lower_bound=0)
flags.mark_flags_as_required(["dataset", "input_len", "horizon"])
flags.mark_flags_as_mutual_exclusive(["model", "checkpoint"], required=True)

FLAGS = flags.FLAGS


def _fail(message: str) -> None:
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(USAGE_ERROR)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors and exit status 2 instead of a usage dump."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        _fail(str(error))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected positional arguments: {' '.join(argv[1:])}")
    try:
        result = run_evaluation(FLAGS.dataset, FLAGS.model, FLAGS.input_len, FLAGS.horizon, split=FLAGS.split,
                                data_dir=FLAGS.data_dir, batch_size=FLAGS.batch_size, channel=FLAGS.channel,
                                checkpoint=FLAGS.checkpoint)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    print(format_table(result))
    if FLAGS.output:
        output = pathlib.Path(FLAGS.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(json_safe(result), indent=2) + "\n")
        print(f"wrote {output}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
