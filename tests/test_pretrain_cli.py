"""launch/pretrain.py end to end in a subprocess: dry run, a short debug run whose loss falls, resume, user errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _run(repo_root, *args, timeout=900):
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    return subprocess.run(
        [sys.executable, str(repo_root / "launch" / "pretrain.py"), *args],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_dry_run_prints_exact_tiny_param_count(repo_root):
    result = _run(repo_root, "--config", "configs/pretrain.py:tiny", "--dry_run")
    assert result.returncode == 0, result.stderr
    assert "params: 4378928" in result.stdout.splitlines()


def test_debug_run_exits_zero_loss_falls_and_rerun_resumes(repo_root, data_dir, tmp_path):
    workdir = tmp_path / "debug"
    args = ["--config", "configs/pretrain.py:debug", "--workdir", str(workdir),
            f"--config.data.data_dir={data_dir}", "--config.train.steps=40", "--config.train.log_every=4",
            "--config.train.eval_every=40", "--config.train.checkpoint_every=20", "--config.train.progress=False"]
    result = _run(repo_root, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no checkpoint found; starting from step 0" in result.stdout
    assert "corpus:" in result.stdout and "kernelsynth" in result.stdout
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert [r["step"] for r in rows if "loss" in r] == [1, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert all(np.isfinite(losses))
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.85 * first, f"loss did not fall: first {losses[:3]}, last {losses[-3:]}"
    assert any("eval_loss" in r for r in rows)
    assert (workdir / "checkpoints" / "40").is_dir() and (workdir / "final_params.sha256").is_file()

    rerun = _run(repo_root, *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from step 40 ({workdir / 'checkpoints' / '40'})" in rerun.stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.train.lr=-1"], "error: train.lr must be > 0"),
        (["--config.mesh.shape=2,2"], "error: mesh.shape"),
        (["--config.model.size=huge"], "error: model: unknown model size 'huge'"),
        (["--config.train.stepz=3"], "error: bad --config override: unknown field 'stepz'"),
        (["--config.data.data_dir=/nonexistent/data"], "error: data.data_dir='/nonexistent/data' is not a directory"),
    ],
)
def test_bad_config_values_print_one_line_and_exit_2(repo_root, tmp_path, extra, message):
    result = _run(repo_root, "--config", "configs/pretrain.py:debug", "--workdir", str(tmp_path / "w"), *extra)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not (tmp_path / "w").exists()  # refused before anything was written


def test_unusable_workdir_exits_2(repo_root, tmp_path):
    a_file = tmp_path / "not_a_dir"
    a_file.write_text("x")
    result = _run(repo_root, "--config", "configs/pretrain.py:debug", "--workdir", str(a_file))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: workdir {a_file} exists and is not a directory"]
