"""What every command (`factost_jax/commands/`, `launch/` in a checkout) shares: one-line user errors, exit statuses, absl flag parsing.

A user error (bad flag, bad config override, missing file) is printed as one line `error: ...` on
stderr and exits with status 2; a training run stopped by non-finite losses exits with 1. absl's
own handling would print a usage dump or a traceback instead.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Callable, NoReturn

from absl import flags, logging

USAGE_ERROR = 2
TRAINING_ERROR = 1
# The configs shipped in the package, so an installed `factost-pretrain` finds `pretrain.py:tiny`.
PACKAGED_CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


def one_line(message: str) -> str:
    """Collapses a message to one line; a quoted traceback is reduced to its final exception line."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    if any("Traceback (most recent call last)" in line for line in lines):
        head = lines[0].split("Traceback (most recent call last)")[0].strip()
        return f"{head} {lines[-1]}".strip()
    return " ".join(" ".join(lines).split())


def fail(message: str, status: int = USAGE_ERROR) -> NoReturn:
    """Prints `error: <message on one line>` to stderr and exits with `status`."""
    print("error: " + one_line(message), file=sys.stderr)
    sys.exit(status)


def flag_parser(flag_values: flags.FlagValues = flags.FLAGS,
                config_example: str | None = None) -> Callable[[list[str]], list[str]]:
    """An `app.run(..., flags_parser=...)` that turns flag errors into one line and exit status 2.

    With `config_example` (e.g. "configs/pretrain.py:tiny") the script has an ml_collections
    `--config` flag: it is required, and an override of a field the config lacks is reported as
    such instead of ml_collections' exception.
    """

    def parse(argv: list[str]) -> list[str]:
        try:
            remaining = flag_values(argv)
        except flags.Error as error:
            fail(str(error))
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            if config_example is None:
                raise
            # ml_collections raises these for an override of a field the config does not have.
            text = str(error).replace("\\n", " ").replace("\\'", "'")
            if len(text) > 1 and text[0] == text[-1] == "'":
                text = text[1:-1]
            unknown = isinstance(error, (AttributeError, KeyError))
            fail(f"bad --config override: {'unknown field ' if unknown else ''}{text}")
        if config_example is not None and flag_values["config"].value is None:
            fail(f"--config is required, e.g. --config {config_example}")
        return remaining

    return parse


def reject_positional(argv: list[str]) -> None:
    """Fails on positional arguments after the program name (a mistyped flag usually)."""
    if len(argv) > 1:
        fail(f"unexpected positional arguments: {' '.join(argv[1:])}")


def start_training(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """What launch/pretrain.py and launch/adapt.py do first: refuse positional arguments, keep
    absl's backend-probing INFO lines off the console, join a multi-process job if one is configured
    (factost_jax/train/distributed.py flags)."""
    from factost_jax.train.distributed import initialize_from_flags

    reject_positional(argv)
    logging.set_verbosity(logging.WARNING)
    try:
        initialize_from_flags(flag_values)
    except ValueError as error:
        fail(str(error))


def prepare_workdir_or_fail(workdir: str | None) -> pathlib.Path:
    """The run directory, created and checked writable; a missing or unusable one is a user error."""
    from factost_jax.train.loop import RunConfigError, prepare_workdir

    if not workdir:
        fail("--workdir is required (the run directory; rerunning resumes from its checkpoints)")
    try:
        return prepare_workdir(workdir)
    except RunConfigError as error:
        fail(str(error))


def packaged_config_argv(argv: list[str]) -> list[str]:
    """`argv` with the file of `--config FILE[:ARG]` / `--config=FILE[:ARG]` replaced by the packaged
    config of the same file name (factost_jax/configs/) when FILE does not exist.

    So `--config configs/adapt.py:hzmetro` (or `adapt.py:hzmetro`, `adapt:hzmetro`) works from any
    directory once the package is installed, while an existing file, a user's own config, always wins.
    A FILE that matches neither is a user error (one line, exit 2), not ml_collections' traceback.
    """
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            index, prefix, value = i + 1, "", out[i + 1]
        elif arg.startswith("--config="):
            index, prefix, value = i, "--config=", arg[len("--config="):]
        else:
            continue
        path, sep, rest = value.partition(":")
        if not path or pathlib.Path(path).expanduser().exists():
            continue
        name = pathlib.Path(path).name
        packaged = PACKAGED_CONFIGS / (name if name.endswith(".py") else f"{name}.py")
        if not (packaged.is_file() and packaged.name != "__init__.py"):
            known = ", ".join(sorted(p.name for p in PACKAGED_CONFIGS.glob("*.py") if p.name != "__init__.py"))
            fail(f"--config {value}: no such file, and not a packaged config (those are {known})")
        out[index] = f"{prefix}{packaged}{sep}{rest}"
    return out
