"""Soak test: stage-1 pretraining killed again and again, restarted each time, must end bitwise equal
to an uninterrupted run.

  python benchmarks/soak.py --minutes 3 --kill_every 10 --seed 0

1. A reference run (`launch/pretrain.py`, debug config, `--steps` steps) runs uninterrupted.
2. The same command runs in a second workdir and is interrupted again and again: each attempt is
   signalled a random time (uniform in [0.5, 1.5] x `--kill_every` seconds, from `--seed`) after it
   logs its first new step (counting from process start would, on a slow machine, kill every
   attempt during start-up and the run would never advance). The signal is
   SIGKILL, or SIGTERM for a fraction `--term_fraction`; each interruption is followed by a restart
   of the same command. Interruptions stop after `--minutes`; the last restart runs to the end.
   An existing finished `<workdir>/reference` run is reused.
3. Checks (exit status 1 if any fails):
   - `final_params.sha256` equals the reference run's;
   - metrics.jsonl, after the loop's own rule (on every restart it drops the rows logged past the
     checkpoint it resumed from), holds each step 1..steps exactly once, in order: no step lost or
     repeated; and every step's loss equals the reference run's loss bit for bit (same batches, same
     parameters);
   - every SIGTERM exited 0 with "preempted at step N; checkpoint saved to PATH";
   - every restart resumed from the newest checkpoint on disk at the time it was killed.
Work redone after SIGKILLs (steps trained past the last checkpoint, then lost) is reported, not an
error: it is bounded by `checkpoint_every`. A JSON summary goes to benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "soak.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long to keep interrupting the run")
    parser.add_argument("--kill_every", type=float, default=10.0, help="mean seconds between interruptions")
    parser.add_argument("--term_fraction", type=float, default=0.25, help="share of interruptions that are SIGTERM")
    parser.add_argument("--seed", type=int, default=0, help="seed of the interruption times and kinds")
    parser.add_argument("--steps", type=int, default=400, help="training steps of the run")
    parser.add_argument("--checkpoint_every", type=int, default=5)
    parser.add_argument("--data_dir", default=None, help="real data directory (default: kernelsynth-only corpus)")
    parser.add_argument("--workdir", default=None, help="where both runs live (default: a new temporary dir)")
    parser.add_argument("--output", default=str(RESULTS), help="JSON summary path")
    args = parser.parse_args(argv)
    for name in ("minutes", "kill_every", "steps", "checkpoint_every"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0, got {getattr(args, name)}")
    if not 0.0 <= args.term_fraction <= 1.0:
        parser.error(f"--term_fraction must be in [0, 1], got {args.term_fraction}")
    return args


def pretrain_command(args: argparse.Namespace, workdir: pathlib.Path) -> list[str]:
    command = [
        sys.executable, str(REPO / "launch" / "pretrain.py"), "--config", "configs/pretrain.py:debug",
        "--workdir", str(workdir), f"--config.train.steps={args.steps}", "--config.train.log_every=1",
        "--config.train.eval_every=100000", f"--config.train.checkpoint_every={args.checkpoint_every}",
        "--config.train.max_to_keep=3", "--config.train.progress=False", "--config.train.eval_windows=8",
        # One output bucket = one train program, compiled (and cached) before the first step; with
        # several, attempts killed while compiling a later bucket would never get it into the cache.
        "--config.data.batch_size=8", "--config.data.output_patch_buckets=(2,)",
    ]
    if args.data_dir:
        command.append(f"--config.data.data_dir={args.data_dir}")
    else:
        command += ["--config.data.kernelsynth_series=200", "--config.data.corpora=(('kernelsynth',1.0),)"]
    return command


def environment(cache_dir: pathlib.Path) -> dict[str, str]:
    """Restarts reuse compiled programs through JAX's persistent cache, as a real job would."""
    env = dict(os.environ)
    env.update(JAX_PLATFORMS=env.get("JAX_PLATFORMS", "cpu"), JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def read_rows(workdir: pathlib.Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def train_rows(workdir: pathlib.Path) -> list[dict]:
    return [row for row in read_rows(workdir) if "loss" in row]


def finished_steps(workdir: pathlib.Path) -> list[int]:
    root = workdir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir()
                  if p.name.isdigit() and (p / "metadata" / "metadata").is_file())


def saves_in_flight(workdir: pathlib.Path) -> int:
    root = workdir / "checkpoints"
    return sum(1 for p in root.iterdir() if ".orbax-checkpoint-tmp" in p.name) if root.is_dir() else 0


def run_reference(args: argparse.Namespace, workdir: pathlib.Path, env: dict[str, str]) -> dict:
    sha_file = workdir / "final_params.sha256"
    if sha_file.exists():
        return {"seconds": float("nan"), "sha256": sha_file.read_text().strip(), "reused": True}
    start = time.monotonic()
    result = subprocess.run(pretrain_command(args, workdir), cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: the reference run failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return {"seconds": time.monotonic() - start, "sha256": (workdir / "final_params.sha256").read_text().strip()}


class Attempt:
    """One launch of the command; its stdout/stderr are collected by threads so they can be watched live."""

    def __init__(self, command: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self.training_started = threading.Event()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))
            if line.startswith("compiling train step"):
                self.training_started.set()

    def finish(self) -> tuple[str, str]:
        self.proc.wait()
        for reader in self._readers:
            reader.join()
        return "\n".join(self.out), "\n".join(self.err)


def soak(args: argparse.Namespace, workdir: pathlib.Path, env: dict[str, str]) -> dict:
    """Interrupt-and-restart until `minutes` have passed, then let the last attempt finish."""
    rng = random.Random(args.seed)
    command = pretrain_command(args, workdir)
    deadline = time.monotonic() + 60.0 * args.minutes
    attempts, problems = [], []
    while True:
        started = time.monotonic()
        attempt = Attempt(command, env)
        proc = attempt.proc
        interrupt = started < deadline
        wait = rng.uniform(0.5, 1.5) * args.kill_every if interrupt else None
        kind = ("SIGTERM" if rng.random() < args.term_fraction else "SIGKILL") if interrupt else None
        record = {"attempt": len(attempts) + 1}
        if interrupt:
            resume_point = (finished_steps(workdir) or [0])[-1]
            # Rows past the resume point left by the killed attempt are dropped before training starts.
            while proc.poll() is None and not attempt.training_started.wait(0.05):
                pass
            while proc.poll() is None and (train_rows(workdir) or [{"step": -1}])[-1]["step"] <= resume_point:
                time.sleep(0.05)
            try:
                proc.wait(timeout=wait)
                kind = None  # it finished before the interruption was due
            except subprocess.TimeoutExpired:
                record.update(logged_step_at_signal=(train_rows(workdir) or [{"step": 0}])[-1]["step"],
                              checkpoints_at_signal=finished_steps(workdir), saves_in_flight=saves_in_flight(workdir))
                proc.send_signal(signal.SIGKILL if kind == "SIGKILL" else signal.SIGTERM)
        out, err = attempt.finish()
        resumed = [line for line in out.splitlines() if line.startswith("resumed from step ")]
        record.update(signal=kind, seconds=round(time.monotonic() - started, 2), exit=proc.returncode,
                      resumed_from=int(resumed[0].split()[3]) if resumed else 0,
                      preempted_line=next((l for l in out.splitlines() if l.startswith("preempted at step")), None))
        attempts.append(record)
        if attempts[:-1]:
            expected = (attempts[-2].get("checkpoints_after") or [0])[-1]
            if record["resumed_from"] != expected:
                problems.append(f"attempt {record['attempt']} resumed from {record['resumed_from']}, "
                                f"expected the newest checkpoint {expected}")
        record["checkpoints_after"] = finished_steps(workdir)
        print(json.dumps(record), flush=True)
        if kind == "SIGTERM" and (proc.returncode != 0 or not record["preempted_line"]):
            problems.append(f"attempt {record['attempt']}: SIGTERM gave exit {proc.returncode} "
                            f"and no 'preempted at step' line: {err[-500:]}")
        if kind is None:
            if proc.returncode != 0:
                problems.append(f"attempt {record['attempt']} failed with exit {proc.returncode}: {err[-1000:]}")
            return {"attempts": attempts, "problems": problems}
        if len(attempts) > 1000:
            problems.append("no completion after 1000 attempts")
            return {"attempts": attempts, "problems": problems}


def check(reference_dir: pathlib.Path, soak_dir: pathlib.Path, reference_sha: str, steps: int) -> list[str]:
    problems = []
    sha_file = soak_dir / "final_params.sha256"
    soak_sha = sha_file.read_text().strip() if sha_file.exists() else None
    if soak_sha != reference_sha:
        problems.append(f"final params differ: soak {soak_sha} vs reference {reference_sha}")
    soak_rows, reference_rows = train_rows(soak_dir), train_rows(reference_dir)
    logged = [row["step"] for row in soak_rows]
    if logged != list(range(1, steps + 1)):
        duplicates = sorted({s for s in logged if logged.count(s) > 1})
        missing = sorted(set(range(1, steps + 1)) - set(logged))
        problems.append(f"metrics.jsonl steps are not 1..{steps} once each: duplicates {duplicates[:10]}, "
                        f"missing {missing[:10]}")
    reference_loss = {row["step"]: row["loss"] for row in reference_rows}
    differing = [row["step"] for row in soak_rows if row["loss"] != reference_loss.get(row["step"])]
    if differing:
        problems.append(f"losses differ from the reference run at steps {differing[:10]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="factost_soak_")).absolute()
    root.mkdir(parents=True, exist_ok=True)
    reference_dir, soak_dir = root / "reference", root / "soak"
    if soak_dir.exists() and any(soak_dir.iterdir()):
        print(f"error: {soak_dir} is not empty; pass a new --workdir", file=sys.stderr)
        return 2
    env = environment(root / "xla_cache")
    print(f"soak in {root}: reference run of {args.steps} steps ...", flush=True)
    reference = run_reference(args, reference_dir, env)
    took = "reused" if reference.get("reused") else f"{reference['seconds']:.1f} s"
    print(f"reference: {took}, sha256 {reference['sha256']}", flush=True)
    soaked = soak(args, soak_dir, env)
    problems = soaked["problems"] + check(reference_dir, soak_dir, reference["sha256"], args.steps)
    attempts = soaked["attempts"]
    kills = [a for a in attempts if a["signal"] == "SIGKILL"]
    terms = [a for a in attempts if a["signal"] == "SIGTERM"]
    redone = sum(max(0, a["logged_step_at_signal"] - (a["checkpoints_at_signal"] or [0])[-1]) for a in kills)
    summary = {
        "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "steps": args.steps, "checkpoint_every": args.checkpoint_every, "minutes": args.minutes,
        "kill_every": args.kill_every, "seed": args.seed, "attempts": len(attempts), "sigkills": len(kills),
        "sigterms": len(terms), "kills_during_save": sum(1 for a in kills if a["saves_in_flight"]),
        "kills_before_first_step": sum(1 for a in kills if a["logged_step_at_signal"] == a["resumed_from"]),
        "steps_redone_after_sigkill": redone, "reference_sha256": reference["sha256"],
        "reference_seconds": None if reference.get("reused") else round(reference["seconds"], 1), "problems": problems, "passed": not problems,
        "attempt_log": attempts,
    }
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{len(attempts)} attempts: {len(kills)} SIGKILL ({summary['kills_during_save']} during a save, "
          f"{summary['kills_before_first_step']} before the first new step), {len(terms)} SIGTERM; "
          f"{redone} steps redone after kills")
    print("PASS: final params equal the uninterrupted run's; every step logged once with the reference loss"
          if not problems else "FAIL:\n  " + "\n  ".join(problems))
    print(f"summary: {output}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
