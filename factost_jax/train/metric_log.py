"""Run logging, only on process 0: `metrics.jsonl` and the same scalars as TensorBoard event files.

Also the pieces that keep the log consistent with checkpoints: `truncate_metrics_after` drops rows a
crashed attempt wrote past its last checkpoint, and `IntervalStats` averages the steps between two
log lines.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any


METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
    """Appends one JSON object per call to `metrics.jsonl` and mirrors its numeric scalars to TensorBoard
    event files under `workdir/tensorboard/` (tensorboardX, a dependency: no TensorFlow needed).

    `purge_step`: a resumed run passes the first step it will log, so TensorBoard drops the events a
    crashed earlier attempt wrote from that step on (as `truncate_metrics_after` does for the JSONL).
    """

    def __init__(self, workdir: pathlib.Path, enabled: bool, purge_step: int | None = None):
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self._file = open(workdir / METRICS_FILE, "a", encoding="utf-8")
        # A unique suffix: a resumed writer opened within the same second must not overwrite the file.
        self._tb = SummaryWriter(str(workdir / TENSORBOARD_DIR), purge_step=purge_step,
                                 filename_suffix=f".{time.time_ns()}")

    def write(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in row.items():
                if name != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(name, value, row["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def _parse_row(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None


def truncate_metrics_after(path: pathlib.Path, step: int) -> None:
    """Drop logged rows past `step` (written by a run that died after its last checkpoint).

    A line cut off by a kill mid-write is dropped too. The rewrite goes through a temporary file
    and a rename, so a kill during it leaves either the old or the new file, never a torn one.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        row = _parse_row(line)
        if row is not None and row["step"] <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


class IntervalStats:
    """Accumulates per-step metrics between two log lines; `row()` averages the non-skipped steps."""

    def __init__(self) -> None:
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.start = now
        self.sums: dict[str, float] = {}
        self.count = 0
        self.skipped = 0
        self.steps = 0
        self.windows = 0
        self.tokens = 0
        self.last: dict[str, float] = {}

    def add(self, metrics: Mapping[str, float], windows: int, tokens: int) -> None:
        self.steps += 1
        self.windows += windows
        self.tokens += tokens
        self.last = dict(metrics)
        if metrics["skipped"]:
            self.skipped += 1
            return
        self.count += 1
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)

    def row(self, step: int, skipped_total: int, now: float) -> dict[str, Any]:
        elapsed = max(now - self.start, 1e-9)
        row: dict[str, Any] = {"step": step}
        means = {name: total / self.count for name, total in self.sums.items()} if self.count else {}
        for name, value in self.last.items():
            row[name] = means.get(name, float(value))
        row["lr"] = float(self.last.get("lr", float("nan")))  # the schedule's value now, not a mean
        row.update(
            skipped=self.skipped,
            skipped_total=skipped_total,
            steps_per_s=self.steps / elapsed,
            windows_per_s=self.windows / elapsed,
            tokens_per_s=self.tokens / elapsed,
            time=time.time(),
        )
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
