"""Helpers for tests that run a launcher in a subprocess and interrupt it (test_reliability*.py)."""

import json
import os
import pathlib
import subprocess
import time

import pytest

# Tests compile far more than they run: XLA's backend optimisations halve CPU compile times at level 0
# (a debug adaptation run: train step 11.7 -> 5.9 s) and change what a test checks only through float
# rounding, which every comparison with numbers recorded elsewhere allows for. Benchmarks and users keep
# the default level.
FAST_COMPILE_XLA_FLAG = "--xla_backend_optimization_level=0"


def launcher_env() -> dict:
    """The test process's environment (8 CPU devices, the session's XLA cache) caching every program."""
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def run(cmd, repo_root, env, timeout):
    return subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=timeout)


def metric_rows(workdir) -> list:
    """WORKDIR/metrics.jsonl rows; a line being written right now is skipped."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def train_steps(workdir) -> list:
    """The steps with a logged training loss, in log order."""
    return [row["step"] for row in metric_rows(workdir) if "loss" in row]


def start_and_signal(cmd, repo_root, env, signum, when, timeout):
    """Start `cmd`, send `signum` once `when()` is true, wait; -> (proc, stdout, stderr).

    Polls every 20 ms, so the moment of the signal depends on the run's progress, not on the
    machine's speed; fails the test if the run ends first or makes no progress within `timeout`.
    """
    proc = subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not when():
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"run ended (rc {proc.returncode}) before the signal could be sent:\n{out}\n{err[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("run made no progress before the deadline")
            time.sleep(0.02)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, out, err
