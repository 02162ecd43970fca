"""Quantile forecasts of every series in a long table: `factost-forecast`.

  factost-forecast --checkpoint factost-tiny --input my.csv --horizon 24 --output out.csv \
      [--quantiles 0.1,0.5,0.9] [--id_column unique_id] [--timestamp_column ds] [--target y]

--input is a CSV or Parquet long table, one row per (series, timestamp) (Nixtla / Chronos layout);
each series is forecast from its own history (zero-shot, channel-independent). --output (CSV or
Parquet, by its suffix) gets one row per (series, future timestamp): the id and timestamp columns,
"median" and one column per quantile level ("0.1", "0.5", "0.9"). --checkpoint takes a shipped name,
a training workdir / checkpoint dir, a `save_pretrained` directory or a Hub repository id ("org/name").
A user error prints one line `error: ...` on stderr and exits with status 2.
"""

from __future__ import annotations

import pathlib

from absl import app, flags, logging

from factost_jax.cli import fail, flag_parser, reject_positional

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")

flags.DEFINE_string("checkpoint", "factost-tiny", "Shipped name, workdir / checkpoint dir, save_pretrained "
                    "directory or Hub repository id (org/name).")
flags.DEFINE_string("input", None, "Long table (CSV or Parquet): one row per series id and timestamp.")
flags.DEFINE_string("output", None, "Where the forecasts go (CSV or Parquet, by suffix).")
flags.DEFINE_integer("horizon", None, "Steps to forecast past each series' last timestamp.", lower_bound=1)
flags.DEFINE_list("quantiles", ["0.1", "0.5", "0.9"], "Quantile levels in (0, 1), comma separated.")
flags.DEFINE_string("id_column", "unique_id", "Column holding the series id.")
flags.DEFINE_string("timestamp_column", "ds", "Column holding the timestamps.")
flags.DEFINE_string("target", "y", "Column holding the values.")
flags.DEFINE_integer("batch_size", 256, "Series per forecast call.", lower_bound=1)
flags.mark_flags_as_required(["input", "horizon", "output"])

FLAGS = flags.FLAGS


def table_suffix(path: pathlib.Path, flag: str) -> str:
    """The table format of `path` by its suffix; anything else is a user error naming `flag`."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"--{flag} {path}: expected a .csv or .parquet file")
    return suffix


def read_table(path: pathlib.Path):
    """A CSV or Parquet file -> DataFrame; unreadable content is a ValueError naming the file."""
    import pandas as pd

    suffix = table_suffix(path, "input")
    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: no such file")
    try:
        return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as error:  # noqa: BLE001 - pandas and pyarrow raise many types for a bad file
        raise ValueError(f"--input {path}: not a readable {suffix[1:]} table ({type(error).__name__}: "
                         f"{' '.join(str(error).split())[:200]})") from None


def write_table(frame, path: pathlib.Path) -> None:
    suffix = table_suffix(path, "output")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def parse_quantiles(values: list[str]) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise ValueError(f"--quantiles {','.join(values)}: expected numbers in (0, 1), e.g. 0.1,0.5,0.9") from None


def main(argv: list[str]) -> None:
    reject_positional(argv)
    logging.set_verbosity(logging.ERROR)  # Orbax logs every restore; errors stay one line
    from factost_jax.hub import from_pretrained

    output = pathlib.Path(FLAGS.output)
    try:
        table_suffix(output, "output")
        levels = parse_quantiles(FLAGS.quantiles)
        frame = read_table(pathlib.Path(FLAGS.input))
        forecaster = from_pretrained(FLAGS.checkpoint)
        result = forecaster.forecast_df(frame, id_column=FLAGS.id_column, timestamp_column=FLAGS.timestamp_column,
                                        target=FLAGS.target, horizon=FLAGS.horizon, quantiles=levels,
                                        batch_size=FLAGS.batch_size, progress=False)
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    write_table(result, output)
    series = result[FLAGS.id_column].nunique()
    print(f"wrote {output}: {series} series x {FLAGS.horizon} steps, quantiles {','.join(FLAGS.quantiles)}")


def run() -> None:
    """The `factost-forecast` entry point."""
    app.run(main, flags_parser=flag_parser(FLAGS))


if __name__ == "__main__":
    run()
