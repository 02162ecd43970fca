"""launch/evaluate.py end to end (subprocess) and the pieces it prints with."""

import json
import math
import os
import subprocess
import sys

import pytest

from factost_jax.eval.evaluate import format_table, json_safe, run_evaluation


def run_cli(repo_root, *args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "launch/evaluate.py", *args], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_table_and_json(repo_root, data_dir, tmp_path):
    output = tmp_path / "out" / "result.json"
    proc = run_cli(repo_root, "--dataset", "HZMETRO", "--model", "last_value", "--input_len", "12", "--horizon", "12",
                   "--data_dir", str(data_dir), "--output", str(output))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "HZMETRO | last_value | test | 12->12"
    assert lines[1].split() == ["MAE", "RMSE", "MAPE"]
    assert [line.split()[0] for line in lines[2:6]] == ["avg", "step_3", "step_6", "step_12"]

    result = json.loads(output.read_text())
    assert list(result) == ["dataset", "model", "input_len", "horizon", "split", "channel", "num_windows",
                            "window_stride", "split_windows", "metrics"]
    assert (result["num_windows"], result["window_stride"], result["split_windows"]) == (1488, 1, 1488)
    assert (result["dataset"], result["model"], result["input_len"], result["horizon"], result["split"]) == (
        "HZMETRO", "last_value", 12, 12, "test")
    assert list(result["metrics"]) == ["avg", "step_3", "step_6", "step_12"]
    assert all(list(row) == ["MAE", "RMSE", "MAPE"] for row in result["metrics"].values())
    in_process = run_evaluation("HZMETRO", "last_value", 12, 12, data_dir=str(data_dir), progress=False)
    assert result == json.loads(json.dumps(in_process))
    # Errors grow with the horizon for a flat forecast of metro flows.
    assert result["metrics"]["step_3"]["MAE"] < result["metrics"]["step_12"]["MAE"]


@pytest.mark.parametrize("args, message", [
    (["--dataset", "NO_SUCH_SET", "--model", "last_value"], "unknown dataset 'NO_SUCH_SET'"),
    (["--dataset", "HZMETRO", "--model", "arima"], "--model=arima: value should be one of"),
    (["--dataset", "LOS-LOOP", "--model", "last_value", "--horizon", "5000"],
     "no test window fits input_len=12 + horizon=5000"),
    (["--dataset", "LOS-LOOP", "--model", "seasonal_naive_week"], "seasonal_naive_week needs 2016 steps of history"),
    (["--dataset", "HZMETRO", "--checkpoint", "/nonexistent/ckpt"], "checkpoint path /nonexistent/ckpt does not exist"),
    (["--dataset", "HZMETRO", "--checkpoint", "/tmp/ckpt", "--model", "last_value"], "Exactly one of (model, checkpoint)"),
    (["--dataset", "HZMETRO"], "Exactly one of (model, checkpoint)"),
    (["--dataset", "HZMETRO", "--model", "last_value", "--with_baselines", "--baselines", "naive,ets"],
     "unknown baseline 'ets'"),
])
def test_cli_user_errors_are_one_line_exit_2(repo_root, data_dir, args, message):
    lengths = [] if "--horizon" in args else ["--horizon", "12"]
    proc = run_cli(repo_root, *args, "--input_len", "12", *lengths, "--data_dir", str(data_dir))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert proc.stdout == ""


def test_cli_missing_required_flag(repo_root):
    proc = run_cli(repo_root, "--dataset", "HZMETRO", "--model", "last_value", "--horizon", "12")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: flag --input_len=None: Flag --input_len must have a value other than None."


def test_run_evaluation_rejects_unknown_model_before_loading():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        run_evaluation("NO_SUCH_SET", "nope", 12, 12)


def test_format_table_and_json_safe():
    result = {"dataset": "X", "model": "m", "split": "val", "input_len": 4, "horizon": 3,
              "metrics": {"avg": {"MAE": 1.23456, "RMSE": float("nan"), "MAPE": 0.5}}}
    table = format_table(result).splitlines()
    assert table[0] == "X | m | val | 4->3"
    assert table[2].split() == ["avg", "1.2346", "nan", "0.5000"]
    safe = json_safe(result)
    assert safe["metrics"]["avg"]["RMSE"] is None and safe["metrics"]["avg"]["MAE"] == 1.23456
    assert math.isnan(result["metrics"]["avg"]["RMSE"])  # the input is not modified
    json.loads(json.dumps(safe, allow_nan=False))


def test_note_names_the_best_step_of_an_adaptation_workdir(capsys, tmp_path):
    from factost_jax.commands.evaluate import _note_best_step

    _note_best_step({"model": f"factost:{tmp_path / 'run' / 'best' / '40'}"}, str(tmp_path / "run"))
    note = capsys.readouterr().err
    assert note.startswith(f"note: evaluating {tmp_path / 'run' / 'best' / '40'}, the best validation step 40 of "
                           f"the adaptation run {tmp_path / 'run'}") and f"{tmp_path / 'run' / 'checkpoints'}" in note
    for model, given in ((f"factost:{tmp_path / 'run' / 'best' / '40'}", str(tmp_path / "run" / "best")),
                         (f"factost:{tmp_path / 'run' / 'checkpoints' / '60'}", str(tmp_path / "run")),
                         ("seasonal_naive_day", None)):
        _note_best_step({"model": model}, given)
    assert capsys.readouterr().err == ""  # best/ named by hand, a stage-1 workdir, a baseline: nothing to say
