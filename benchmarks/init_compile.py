"""Compile time of the stage-2 initialisation: stage-1 weights as jit constants vs as arguments.

The stage-2 init grafts the stage-1 weights into fresh adapter parameters inside one jitted, sharded
program. Closed over (what `AdaptTask.init_params` did before), the weights are constants of that
program, so its size and compile time grow with the backbone. `Setup.create_state` instead places
them on their parameters' shardings and passes them as arguments. This script compiles both
programs for each model size on the same task and mesh and prints the seconds.

    python benchmarks/init_compile.py --sizes tiny base --output benchmarks/results/init_compile.json

tiny uses the shipped factost-tiny checkpoint; other sizes a random-weight stage-1 checkpoint
(the values do not change the compile time). Run it on an otherwise idle machine: the numbers are
wall-clock seconds.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def _seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure(size: str, nodes: int, workdir: pathlib.Path) -> dict:
    """{"size", "params", "constant_mb", "constants_s", "arguments_s"} for one model size."""
    import jax
    import numpy as np

    from benchmarks.scaling_nodes import _adapt_configs, write_random_stage1_checkpoint
    from factost_jax import checkpoint as ckpt_io
    from factost_jax.train import mesh as mesh_lib
    from factost_jax.train import stage2
    from factost_jax.train.setup import build_setup, place_values

    init_from = (ckpt_io.resolve_checkpoint_path("factost-tiny") if size == "tiny"
                 else write_random_stage1_checkpoint(workdir / size, size))
    config = _adapt_configs().get_config("synthetic")
    config.init_from = str(init_from)
    config.data.update(dict(synthetic_nodes=nodes, synthetic_days=7, read_threads=0))
    run = stage2.validate_adapt_config(config)
    task = stage2.make_task(run)
    values = task.initial_values()
    mesh = mesh_lib.make_mesh(run.mesh.shape)
    rules = mesh_lib.logical_axis_rules(run.mesh.nodes_axis)
    rng = jax.random.key(run.train.seed)
    with mesh_lib.mesh_context(mesh, rules):
        setup = build_setup(task, run.train, mesh, rng, rules)
        placed = place_values(values, setup.state_shardings.params)
        # Arguments (now): the weights are inputs of the program.
        arguments = jax.jit(setup.init_state, out_shardings=setup.state_shardings)
        arguments_s, _ = _seconds(lambda: arguments.lower(rng, placed).compile())
        # Constants (before): the same init with the host weights closed over.
        constants = jax.jit(lambda key: setup.init_state(key, values), out_shardings=setup.state_shardings)
        constants_s, _ = _seconds(lambda: constants.lower(rng).compile())
    leaves = jax.tree.leaves(values)
    return {"size": size, "nodes": nodes, "stage1_params": int(sum(np.size(x) for x in leaves)),
            "constant_mb": round(sum(np.asarray(x).nbytes for x in leaves) / 2**20, 1),
            "constants_s": round(constants_s, 2), "arguments_s": round(arguments_s, 2),
            "devices": jax.device_count(), "backend": jax.default_backend()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    parser.add_argument("--nodes", type=int, default=8, help="sensors of the synthetic network")
    parser.add_argument("--output", type=pathlib.Path, default=None, help="JSON file for the rows")
    args = parser.parse_args(argv)
    import jax

    jax.jit(lambda x: x + 1).lower(1.0).compile()  # XLA's one-time start-up, outside the timings
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            rows.append(measure(size, args.nodes, pathlib.Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print("| size | stage-1 weights | compile, weights as constants | compile, weights as arguments |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['size']} | {row['stage1_params']:,} ({row['constant_mb']} MB) | {row['constants_s']} s "
              f"| {row['arguments_s']} s |")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
