"""Stage-2 cost against the number of nodes N: step time and XLA memory, with the fitted exponent.

  python benchmarks/scaling_nodes.py --output benchmarks/results            # N = 170 ... 8,000
  python benchmarks/scaling_nodes.py --quick --output benchmarks/results    # N = 170, 1,000, 8,000, batch 2

For every N a synthetic sensor network of N nodes (`configs/adapt.py:synthetic`, the project's own
stage-2 run config) gets an `AdaptTask` around a stage-1 checkpoint of a small backbone (`--model`,
default "debug"). Weights are drawn at random in numpy (their values do not change the cost, and
drawing them skips compiling the init for every N). Two phases are measured on the first device:

  train: the stage-2 training step the loop runs (`make_train_step(AdaptTask.loss_fn, AdamW)`,
         jitted with the loop's shardings and state donation): forward with dropout, backward and
         the optimizer update, trainable "all", loss "mae";
  infer: the deterministic forward the evaluation runs (`AdaptTask._forward`), quantiles [B, H, N, Q].

Each phase is compiled ahead of time (`compile_s` = lower + compile) and XLA's buffer plan is read
from `compiled.memory_analysis()` (`memory_bytes` = arguments + outputs + temporaries). Step times
are measured in interleaved rounds: every round times every (N, phase) once (a few back-to-back calls
averaged), so a change of machine load hits all N alike; `step_s` is the median over the rounds.

The exponent is the least-squares slope of log(cost) on log(N). Fixed per-step costs (dispatch, the
optimizer update of the N-independent backbone) flatten the curve at small N, so the slope over all
N can understate the large-N growth; the slope over the upper half of the N's is reported too, and
the target (spec: "linear", issue 8: exponent <= 1.1) is checked on both.

Writes DIR/scaling.json:
  {"rows": [{"nodes", "phase", "batch", "step_s", "compile_s", "memory_bytes", ...}, ...],
   "exponent": {"train", "infer", "memory_train", "memory_infer", "train_large_n", "infer_large_n",
                "memory_train_large_n", "memory_infer_large_n", "large_n_from"},
   "target_max_exponent": 1.1, "meets_target": bool, "settings": {...}}
and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
ALL_NODES: tuple[int, ...] = (170, 500, 1000, 2000, 4000, 8000)
# The issue's range end to end with one point between, so the upper-half fit spans 1,000 -> 8,000.
QUICK_NODES: tuple[int, ...] = (170, 1000, 8000)
PHASES: tuple[str, ...] = ("train", "infer")
TARGET_MAX_EXPONENT = 1.1
RESULT_FILE = "scaling.json"


@dataclasses.dataclass(frozen=True)
class ScalingSettings:
    """What one sweep measures. `nodes` ascending and distinct; every count >= 1."""

    nodes: tuple[int, ...] = ALL_NODES
    phases: tuple[str, ...] = PHASES
    model: str = "debug"
    batch: int = 4
    input_len: int = 12
    horizon: int = 12
    synthetic_days: int = 2
    warmup: int = 1
    repeats: int = 5
    min_round_s: float = 0.2
    max_calls_per_round: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        nodes = tuple(sorted({int(n) for n in self.nodes}))
        object.__setattr__(self, "nodes", nodes)
        if not nodes or nodes[0] < 1:
            raise ValueError(f"nodes must list positive node counts, got {self.nodes!r}")
        bad = [phase for phase in self.phases if phase not in PHASES]
        if bad or not self.phases:
            raise ValueError(f"phases must be a non-empty subset of {PHASES}, got {self.phases!r}")
        for name in ("batch", "input_len", "horizon", "synthetic_days", "repeats", "max_calls_per_round"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.min_round_s < 0:
            raise ValueError(f"warmup and min_round_s must be >= 0, got {self.warmup}, {self.min_round_s}")


# --------------------------------------------------------------------------- the fit
def fit_exponent(nodes: Sequence[float], costs: Sequence[float]) -> float:
    """Least-squares slope b of log(cost) = a + b log(nodes): cost ~ nodes^b.

    Raises ValueError unless there are >= 2 distinct node counts, as many costs, all positive and finite.
    """
    x = np.asarray(nodes, np.float64)
    y = np.asarray(costs, np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"fit_exponent: nodes and costs must be 1-D of equal length, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(x > 0) and np.all(np.isfinite(y)) and np.all(y > 0)):
        raise ValueError("fit_exponent: nodes and costs must be positive and finite")
    if np.unique(x).size < 2:
        raise ValueError(f"fit_exponent: need at least 2 distinct node counts, got {sorted(set(x.tolist()))}")
    log_x, log_y = np.log(x), np.log(y)
    centred = log_x - log_x.mean()
    return float(np.dot(centred, log_y - log_y.mean()) / np.dot(centred, centred))


def large_n_nodes(nodes: Sequence[int]) -> tuple[int, ...]:
    """The upper half of the distinct node counts (at least the two largest)."""
    distinct = sorted(set(nodes))
    return tuple(distinct[min(len(distinct) // 2, len(distinct) - 2):]) if len(distinct) >= 2 else tuple(distinct)


def exponents(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Fitted exponents of step time and memory per phase, over all N and over the upper half of N.

    rows: {"nodes", "phase", "step_s", "memory_bytes"} each. A phase with fewer than 2 node counts
    gets None.
    """
    out: dict[str, Any] = {}
    all_nodes = sorted({row["nodes"] for row in rows})
    upper = large_n_nodes(all_nodes)
    out["large_n_from"] = upper[0] if upper else None
    for phase in PHASES:
        phase_rows = sorted((row for row in rows if row["phase"] == phase), key=lambda row: row["nodes"])
        for suffix, keep in (("", None), ("_large_n", set(upper))):
            chosen = [row for row in phase_rows if keep is None or row["nodes"] in keep]
            enough = len({row["nodes"] for row in chosen}) >= 2
            nodes = [row["nodes"] for row in chosen]
            out[f"{phase}{suffix}"] = fit_exponent(nodes, [row["step_s"] for row in chosen]) if enough else None
            out[f"memory_{phase}{suffix}"] = (
                fit_exponent(nodes, [row["memory_bytes"] for row in chosen]) if enough else None)
    return out


def meets_target(exponent: dict[str, Any], target: float = TARGET_MAX_EXPONENT) -> bool | None:
    """True when every fitted step-time exponent (both phases, all N and large N) is <= target."""
    fitted = [exponent.get(f"{phase}{suffix}") for phase in PHASES for suffix in ("", "_large_n")]
    fitted = [value for value in fitted if value is not None]
    return None if not fitted else all(value <= target for value in fitted)


# --------------------------------------------------------------------------- building one N
def _adapt_configs():
    spec = importlib.util.spec_from_file_location("factost_configs_adapt_bench", REPO_ROOT / "configs" / "adapt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_like(abstract_tree: Any, seed: int = 0) -> Any:
    """Host float32 weights shaped like `abstract_tree` (scales 1, biases 0, the rest N(0, 0.02^2)):
    nothing compiles, and the values do not change the cost."""
    from factost_jax.model.encoder import host_random_params

    return host_random_params(abstract_tree, seed, std=0.02)


def write_random_stage1_checkpoint(path: pathlib.Path, size: str, seed: int = 0) -> pathlib.Path:
    """A stage-1 checkpoint of model size `size` with `random_like` weights (AdaptTask needs one to start from)."""
    from factost_jax import checkpoint as ckpt_io
    from factost_jax.model.config import model_config
    from factost_jax.model.encoder import abstract_params, unbox

    config = model_config(size)
    ckpt_io.save_inference_checkpoint(path, config, random_like(unbox(abstract_params(config)), seed),
                                      {"stage": "pretrain", "note": "random weights for benchmarks/scaling_nodes.py"})
    return path


def random_train_state(setup: Any, seed: int = 0) -> Any:
    """A `TrainState` on `setup`'s shardings with `random_like` params and the optimizer's initial state.

    Stands in for `setup.init_state` (the adapter init plus the stage-1 graft), whose compilation
    costs seconds per N and whose values do not change the cost of a step.
    """
    import jax
    import jax.numpy as jnp

    from factost_jax.train.steps import TrainState

    shardings = setup.state_shardings
    params = jax.device_put(random_like(setup.abstract_params, seed), shardings.params)
    opt_state = jax.jit(setup.optimizer.init, out_shardings=shardings.opt_state)(params)
    return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step), params=params,
                      opt_state=opt_state)


def build_adapt_task(num_nodes: int, settings: ScalingSettings, init_from: pathlib.Path) -> tuple[Any, Any]:
    """(AdaptTask, AdaptRunConfig) of `configs/adapt.py:synthetic` on a synthetic network of `num_nodes`."""
    from factost_jax.data.st_pipeline import STDataConfig, load_st_dataset
    from factost_jax.train import stage2

    config = _adapt_configs().get_config("synthetic")
    config.init_from = str(init_from)
    config.input_len, config.horizon = settings.input_len, settings.horizon
    config.compute_dtype = "float32"
    config.mesh.shape = "1,1,1"
    config.data.synthetic_nodes = num_nodes
    config.data.synthetic_days = settings.synthetic_days
    config.data.batch_size = settings.batch
    config.data.read_threads = 0
    config.data.prefetch_batches = 0
    # Which windows fill the batch does not change the cost; no replay allows any batch size.
    config.data.replay_ratio = 0.0
    config.data.seed = settings.seed
    config.train.progress = False
    data = STDataConfig(dataset="synthetic", input_len=settings.input_len, horizon=settings.horizon,
                        synthetic_nodes=num_nodes, synthetic_days=settings.synthetic_days)
    dataset = load_st_dataset(data)
    run_config = stage2.validate_adapt_config(config, dataset)
    return stage2.make_task(run_config, None, dataset), run_config


def _memory(compiled: Any) -> dict[str, int | None]:
    """XLA's buffer plan of a compiled program: argument, output, temp, alias bytes (None if unknown)."""
    try:
        analysis = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        analysis = None
    names = ("argument", "output", "temp", "alias")
    if analysis is None:
        return {f"{name}_bytes": None for name in names} | {"memory_bytes": None}
    sizes = {f"{name}_bytes": int(getattr(analysis, f"{name}_size_in_bytes")) for name in names}
    sizes["memory_bytes"] = sizes["argument_bytes"] + sizes["output_bytes"] + sizes["temp_bytes"]
    return sizes


@dataclasses.dataclass
class PhaseProgram:
    """One compiled (N, phase): `run()` executes one blocking step; `info` holds compile time and memory."""

    nodes: int
    phase: str
    run: Callable[[], None]
    info: dict[str, Any]


def build_programs(num_nodes: int, settings: ScalingSettings, init_from: pathlib.Path) -> list[PhaseProgram]:
    """Compiles the requested phases of one N on the first device; returns them ready to time."""
    import jax

    from factost_jax.train import mesh as mesh_lib
    from factost_jax.train.setup import build_setup, jit_steps

    task, run_config = build_adapt_task(num_nodes, settings, init_from)
    host_batch = next(iter(task.train_dataset(0, 1)))
    tokens = int(task.tokens_in_batch(host_batch))
    mesh = mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    programs = []
    with mesh_lib.mesh_context(mesh):
        init_rng, dropout_rng = jax.random.split(jax.random.key(settings.seed))
        setup = build_setup(task, run_config.train, mesh, init_rng)
        batch = mesh_lib.host_to_global(host_batch, mesh)
        common = {"nodes": num_nodes, "batch": settings.batch, "tokens": tokens,
                  "parameters": int(sum(np.size(leaf) for leaf in jax.tree.leaves(setup.abstract_params)))}
        if "train" in settings.phases:
            train_step, _ = jit_steps(task, setup)
            holder = {"state": random_train_state(setup, settings.seed)}
            started = time.perf_counter()
            compiled = train_step.lower(holder["state"], batch, dropout_rng).compile()
            compile_s = time.perf_counter() - started

            def run_train(compiled=compiled, holder=holder) -> None:
                holder["state"], metrics = compiled(holder["state"], batch, dropout_rng)
                jax.block_until_ready(metrics["loss"])

            programs.append(PhaseProgram(num_nodes, "train", run_train,
                                         {**common, "phase": "train", "compile_s": compile_s, **_memory(compiled)}))
        if "infer" in settings.phases:
            features = ("values", "context_time_of_day", "context_day_of_week", "future_time_of_day",
                        "future_day_of_week")
            inputs = {name: batch[name] for name in features}
            forecast = jax.jit(lambda params, inputs: task._forward(params, inputs, None, True),
                               in_shardings=(setup.state_shardings.params, mesh_lib.batch_sharding(mesh)),
                               out_shardings=mesh_lib.replicated(mesh))
            params = jax.device_put(random_like(setup.abstract_params, settings.seed), setup.state_shardings.params)
            started = time.perf_counter()
            compiled = forecast.lower(params, inputs).compile()
            compile_s = time.perf_counter() - started

            def run_infer(compiled=compiled) -> None:
                jax.block_until_ready(compiled(params, inputs))

            programs.append(PhaseProgram(num_nodes, "infer", run_infer,
                                         {**common, "phase": "infer", "compile_s": compile_s, **_memory(compiled)}))
    return programs


# --------------------------------------------------------------------------- timing
def _seconds_per_call(run: Callable[[], None], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - started) / calls


def time_interleaved(programs: Sequence[PhaseProgram], settings: ScalingSettings,
                     log: Callable[[str], None] = print) -> dict[tuple[int, str], list[float]]:
    """Seconds per call of every program in each of `settings.repeats` interleaved rounds.

    After `warmup` untimed calls, each program gets calls_per_round = ceil(min_round_s / one call)
    (capped) so short steps are averaged over several calls; every round visits every program, in
    ascending N order on even rounds and descending on odd ones.
    """
    calls: dict[tuple[int, str], int] = {}
    for program in programs:
        for _ in range(settings.warmup):
            program.run()
        one = _seconds_per_call(program.run, 1)
        wanted = math.ceil(settings.min_round_s / one) if one > 0 else settings.max_calls_per_round
        calls[(program.nodes, program.phase)] = max(1, min(settings.max_calls_per_round, wanted))
    times: dict[tuple[int, str], list[float]] = {key: [] for key in calls}
    for round_index in range(settings.repeats):
        order = programs if round_index % 2 == 0 else list(reversed(programs))
        for program in order:
            key = (program.nodes, program.phase)
            times[key].append(_seconds_per_call(program.run, calls[key]))
        log(f"round {round_index + 1}/{settings.repeats} done")
    for program in programs:
        program.info["calls_per_round"] = calls[(program.nodes, program.phase)]
    return times


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def measure(settings: ScalingSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the sweep and returns the scaling.json content (see the module docstring)."""
    import jax

    load_start = _loadavg()
    started_at = time.strftime("%Y-%m-%d %H:%M:%S")
    started = time.perf_counter()
    programs: list[PhaseProgram] = []
    with tempfile.TemporaryDirectory(prefix="factost_scaling_nodes_") as tmp:
        init_from = write_random_stage1_checkpoint(pathlib.Path(tmp) / settings.model, settings.model, settings.seed)
        for num_nodes in settings.nodes:
            built = time.perf_counter()
            programs.extend(build_programs(num_nodes, settings, init_from))
            log(f"N={num_nodes}: built and compiled in {time.perf_counter() - built:.1f} s")
    times = time_interleaved(programs, settings, log)
    rows = []
    for program in programs:
        rounds = times[(program.nodes, program.phase)]
        step_s = statistics.median(rounds)
        rows.append({**program.info, "step_s": step_s, "step_s_min": min(rounds), "step_s_rounds": rounds,
                     "us_per_node": 1e6 * step_s / program.nodes})
    rows.sort(key=lambda row: (PHASES.index(row["phase"]), row["nodes"]))
    exponent = exponents(rows)
    device = jax.devices()[0]
    return {
        "benchmark": "scaling_nodes",
        "rows": rows,
        "exponent": exponent,
        "target_max_exponent": TARGET_MAX_EXPONENT,
        "meets_target": meets_target(exponent),
        "settings": {
            **dataclasses.asdict(settings),
            "trainable": "all",
            "loss": "mae",
            "compute_dtype": "float32",
            "dataset": "configs/adapt.py:synthetic (synthetic_network)",
            "backend": jax.default_backend(),
            "device_kind": device.device_kind,
            "cpu_count": os.cpu_count(),
            "jax_version": jax.__version__,
            "python": platform.python_version(),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
            "load_avg_1m": {"start": load_start, "end": _loadavg()},
            "wall_s": round(time.perf_counter() - started, 1),
            "started": started_at,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "memory_bytes": "XLA buffer plan: argument + output + temp bytes (compiled.memory_analysis())",
        },
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(result: dict[str, Any]) -> str:
    settings, exponent = result["settings"], result["exponent"]
    lines = [f"stage-2 cost against N: model {settings['model']}, batch {settings['batch']}, "
             f"{settings['input_len']}->{settings['horizon']}, backend {settings['backend']}, "
             f"load {settings['load_avg_1m']['start']} -> {settings['load_avg_1m']['end']}",
             f"{'phase':<6}{'nodes':>7}{'step ms':>10}{'us/node':>9}{'compile s':>10}{'memory MB':>11}{'calls':>6}"]
    for row in result["rows"]:
        memory = None if row["memory_bytes"] is None else row["memory_bytes"] / 2**20
        lines.append(f"{row['phase']:<6}{row['nodes']:>7}{1e3 * row['step_s']:>10.2f}{row['us_per_node']:>9.2f}"
                     f"{row['compile_s']:>10.1f}{_fmt(memory, '.1f'):>11}{row['calls_per_round']:>6}")
    for phase in PHASES:
        if exponent.get(phase) is None:
            continue
        lines.append(f"{phase} exponent: time {exponent[phase]:.3f} (N >= {exponent['large_n_from']}: "
                     f"{_fmt(exponent[f'{phase}_large_n'], '.3f')}), memory {_fmt(exponent[f'memory_{phase}'], '.3f')}"
                     f" (N >= {exponent['large_n_from']}: {_fmt(exponent[f'memory_{phase}_large_n'], '.3f')})")
    lines.append(f"target: every time exponent <= {result['target_max_exponent']}: "
                 f"{ {True: 'met', False: 'NOT met', None: 'not measured'}[result['meets_target']] }")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, ScalingSettings]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=pathlib.Path, help=f"directory for {RESULT_FILE}")
    parser.add_argument("--quick", action="store_true",
                        help=f"N = {','.join(map(str, QUICK_NODES))} at batch 2 (about 2-3 minutes on 2 idle cores)")
    parser.add_argument("--nodes", default=None, help="comma list of node counts (default: 170..8000 or quick's)")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma list from train,infer")
    parser.add_argument("--model", default="debug", help="backbone size of factost_jax.model.config.MODEL_SIZES")
    parser.add_argument("--batch", type=int, default=None, help="windows per step (default 4; --quick 2)")
    parser.add_argument("--input-len", type=int, default=12)
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--synthetic-days", type=int, default=2, help="length of each synthetic network")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per (N, phase) after compiling")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--min-round-s", type=float, default=0.2,
                        help="calls per round are chosen so one round of a (N, phase) lasts about this long")
    args = parser.parse_args(argv)
    try:
        nodes = QUICK_NODES if args.quick else ALL_NODES
        if args.nodes is not None:
            nodes = tuple(int(value) for value in args.nodes.split(",") if value.strip())
    except ValueError:
        parser.error(f"--nodes must be a comma list of integers, got {args.nodes!r}")
    try:
        settings = ScalingSettings(
            nodes=nodes,
            phases=tuple(value.strip() for value in args.phases.split(",") if value.strip()),
            model=args.model,
            batch=args.batch if args.batch is not None else (2 if args.quick else 4),
            input_len=args.input_len,
            horizon=args.horizon,
            synthetic_days=args.synthetic_days,
            warmup=args.warmup,
            repeats=args.repeats,
            min_round_s=args.min_round_s,
        )
    except ValueError as err:
        parser.error(str(err))
    from factost_jax.model.config import MODEL_SIZES

    if settings.model not in MODEL_SIZES:
        parser.error(f"--model must be one of {sorted(MODEL_SIZES)}, got {settings.model!r}")
    return args, settings


def main(argv: Sequence[str] | None = None) -> int:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    args, settings = parse_args(sys.argv[1:] if argv is None else argv)
    result = measure(settings, log=lambda message: print(message, flush=True))
    result["settings"]["command"] = "python benchmarks/scaling_nodes.py " + " ".join(
        shlex.quote(arg) for arg in (sys.argv[1:] if argv is None else argv))
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / RESULT_FILE
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(format_table(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
