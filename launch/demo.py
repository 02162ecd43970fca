"""`make demo`: the whole user journey on the embedded default, printing each command it runs.

1. stage 1: the shipped checkpoint `factost-tiny` (factost_jax/pretrained/) when present, otherwise a short `debug`
   pretraining (`launch/pretrain.py`);
2. zero-shot evaluation next to the baselines (`launch/evaluate.py --with_baselines --plot`);
3. stage 2: few-shot (10 %) adaptation of the same checkpoint (`launch/adapt.py`);
4. one comparison table (MAE / RMSE, average over the horizon) and the forecast plots.

The dataset is HZMETRO (inflow, 12 -> 12) when the data directory has it, the synthetic sensor network
otherwise. Every step is an ordinary command a user can copy; the demo only strings them together.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys

from absl import app, flags

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED_CHECKPOINT = REPO_ROOT / "factost_jax" / "pretrained" / "factost-tiny"

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/demo", "Where the demo writes its runs, JSON results and plots.")
flags.DEFINE_string("dataset", None, "Dataset to forecast (default: HZMETRO if present, else SYNTHETIC).")
flags.DEFINE_integer("pretrain_steps", 100, "Steps of the debug pretraining when no shipped checkpoint exists.")
flags.DEFINE_integer("adapt_steps", 100, "Few-shot adaptation steps (validation every 50).")
flags.DEFINE_integer("adapt_batch", 8, "Windows per adaptation step (configs/adapt.py's 32 is meant for a GPU).")
flags.DEFINE_bool("skip_adapt", False, "Stop after the zero-shot comparison.")


def run(command: list[str]) -> None:
    """Print a command as a user would type it, then run it; stop the demo if it fails."""
    print(f"\n$ {shlex.join(command)}", flush=True)
    completed = subprocess.run(command, cwd=REPO_ROOT)
    if completed.returncode != 0:
        raise SystemExit(f"error: demo step failed with exit code {completed.returncode}: {shlex.join(command)}")


def pick_dataset() -> str:
    """HZMETRO when the real data is reachable, else the synthetic network."""
    from factost_jax.data import formats

    return "HZMETRO" if "HZMETRO" in formats.list_datasets() else "SYNTHETIC"


def stage1_checkpoint(workdir: pathlib.Path, steps: int) -> str:
    if SHIPPED_CHECKPOINT.is_dir():
        print(f"stage 1: using the shipped checkpoint {SHIPPED_CHECKPOINT.relative_to(REPO_ROOT)}")
        return str(SHIPPED_CHECKPOINT)
    pretrain_dir = workdir / "pretrain"
    print("stage 1: no shipped checkpoint; pretraining the debug size for a quick demo")
    run([sys.executable, "launch/pretrain.py", "--config", "configs/pretrain.py:debug",
         "--workdir", str(pretrain_dir), f"--config.train.steps={steps}"])
    return str(pretrain_dir)


def summary_rows(zero_shot: dict, adapted: dict | None) -> list[tuple[str, dict]]:
    """(label, avg metrics) rows: baselines, zero-shot FactoST, few-shot FactoST."""
    rows = []
    for result in zero_shot.get("results", [zero_shot]):
        label = result["model"]
        if label.startswith("factost"):
            label = "FactoST zero-shot"
        rows.append((label, result["metrics"]["avg"]))
    if adapted is not None:
        rows.append(("FactoST few-shot (10 %)", adapted["metrics"]["avg"]))
    return rows


def print_table(dataset: str, rows: list[tuple[str, dict]]) -> None:
    print(f"\n{dataset} 12 -> 12, test split, average over the horizon")
    print(f"{'model':<28}{'MAE':>10}{'RMSE':>10}{'MAPE':>10}")
    for label, metrics in rows:
        print(f"{label:<28}{metrics['MAE']:>10.3f}{metrics['RMSE']:>10.3f}{metrics['MAPE']:>10.3f}")


def main(argv: list[str]) -> None:
    del argv
    workdir = (REPO_ROOT / FLAGS.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = FLAGS.dataset or pick_dataset()
    print(f"demo dataset: {dataset} (data dir: {os.environ.get('FACTOST_DATA_DIR', '../shared/data')})")

    checkpoint = stage1_checkpoint(workdir, FLAGS.pretrain_steps)

    zero_shot_json = workdir / "zero_shot.json"
    run([sys.executable, "launch/evaluate.py", "--checkpoint", checkpoint, "--dataset", dataset,
         "--input_len", "12", "--horizon", "12", "--with_baselines",
         "--output", str(zero_shot_json), "--plot", str(workdir / "plots")])
    zero_shot = json.loads(zero_shot_json.read_text())

    adapted = None
    if not FLAGS.skip_adapt:
        adapt_dir = workdir / "adapt"
        run([sys.executable, "launch/adapt.py", "--config", f"configs/adapt.py:{dataset.lower()}",
             f"--config.init_from={checkpoint}", "--workdir", str(adapt_dir),
             f"--config.train.steps={FLAGS.adapt_steps}", f"--config.data.batch_size={FLAGS.adapt_batch}",
             "--config.train.eval_every=50", "--config.train.checkpoint_every=50"])
        adapted = json.loads((adapt_dir / "metrics.json").read_text())

    print_table(dataset, summary_rows(zero_shot, adapted))
    print(f"\nplots: {workdir / 'plots'}; JSON: {zero_shot_json}"
          + (f", {workdir / 'adapt' / 'metrics.json'}" if adapted else ""))


if __name__ == "__main__":
    app.run(main)
