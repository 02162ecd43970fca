"""Joining JAX's multi-controller runtime, and the flags every launcher shares for it.

One process runs per host (or per GPU, under SLURM/Open MPI); each calls
`initialize_distributed(...)` before touching any device, after which `jax.devices()` lists every
device of the job and `jax.process_index()` / `jax.process_count()` say who this process is.

Three ways in:
  explicit   `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (anywhere: a laptop,
             bare-metal nodes, a localhost test); all three flags together.
  detected   a TPU pod slice, a multi-task SLURM step (`srun`) or an Open MPI job (`mpirun`) is
             recognised from its environment and JAX's own cluster detection fills in the rest.
  forced     `--distributed` asks JAX to auto-detect even when the environment looks single-process
             (e.g. a TPU pod whose metadata server is the only witness).
Anything else runs as a plain single process without the coordination service.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax
from absl import flags

# Environment variables each job kind sets in every one of its processes.
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_OPEN_MPI_URI = "OMPI_MCA_orte_hnp_uri"
_OPEN_MPI_SIZE = "OMPI_COMM_WORLD_SIZE"
_TPU_HOSTS = "TPU_WORKER_HOSTNAMES"


@dataclasses.dataclass(frozen=True)
class DistributedSetup:
    """How this process joined (or did not join) a multi-process job."""

    mode: str  # "single", "explicit", or the detected cluster: "slurm", "open_mpi", "tpu_pod", "auto"
    process_index: int
    process_count: int


def _positive_count(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ.get(name, "1"))
    except ValueError:
        return 1


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """The multi-process job this environment belongs to: "slurm", "open_mpi", "tpu_pod" or None.

    A job of one task (a plain `sbatch` script, `mpirun -n 1`, a single-host TPU VM) counts as None:
    there is nobody to coordinate with.
    """
    environ = os.environ if environ is None else environ
    if all(var in environ for var in _SLURM_VARS) and _positive_count(environ, "SLURM_NTASKS") > 1:
        return "slurm"
    if _OPEN_MPI_URI in environ and _positive_count(environ, _OPEN_MPI_SIZE) > 1:
        return "open_mpi"
    hosts = [h for h in environ.get(_TPU_HOSTS, "").split(",") if h.strip()]
    if len(hosts) > 1:
        return "tpu_pod"
    return None


def _check_explicit(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise ValueError(
            f"--coordinator_address, --num_processes and --process_id go together; missing {', '.join(missing)}"
        )
    host, sep, port = str(coordinator_address).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--coordinator_address must be HOST:PORT (e.g. 10.0.0.1:1234), got {coordinator_address!r}")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"--num_processes must be an integer >= 1, got {num_processes!r}")
    if isinstance(process_id, bool) or not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id must be an integer in 0..{num_processes - 1}, got {process_id!r}")


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto_detect: bool = False,
    initialization_timeout: int = 300,
) -> DistributedSetup:
    """Join the job this process belongs to (see the module docstring); call before any JAX computation.

    Explicit arguments win; otherwise a detected cluster (or `auto_detect=True`) hands over to
    `jax.distributed.initialize()`'s own detection; otherwise nothing happens. On CPU the
    cross-process collectives use gloo, so a localhost job of several processes really computes.

    Raises:
      ValueError: a partial or malformed explicit setting (one line naming the flag).
    """
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    if explicit:
        _check_explicit(coordinator_address, num_processes, process_id)
    cluster = None if explicit else detect_cluster()
    if not (explicit or cluster or auto_detect):
        return DistributedSetup("single", 0, 1)
    if jax.distributed.is_initialized():
        return DistributedSetup("already", jax.process_index(), jax.process_count())
    # Harmless on accelerators; on CPU without it a multi-process computation has no collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=initialization_timeout)
        mode = "explicit"
    else:
        jax.distributed.initialize(initialization_timeout=initialization_timeout)
        mode = cluster or "auto"
    return DistributedSetup(mode, jax.process_index(), jax.process_count())


# ---------------------------------------------------------------------------------------------
# Flags shared by launch/pretrain.py and launch/adapt.py.

FLAG_NAMES = ("coordinator_address", "num_processes", "process_id", "distributed")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define --coordinator_address, --num_processes, --process_id and --distributed (idempotent)."""
    if "coordinator_address" in flag_values:
        return
    flags.DEFINE_string("coordinator_address", None,
                        "HOST:PORT of process 0's coordination service, for a multi-process job outside "
                        "SLURM/Open MPI/TPU pods (with --num_processes and --process_id).",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "Processes in the job (with --coordinator_address).",
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1 (with --coordinator_address).",
                         lower_bound=0, flag_values=flag_values)
    flags.DEFINE_bool("distributed", False,
                      "Auto-detect the cluster through jax.distributed.initialize() even when the environment "
                      "does not name one (SLURM, Open MPI and TPU pods with TPU_WORKER_HOSTNAMES are detected "
                      "without it).", flag_values=flag_values)


def initialize_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> DistributedSetup:
    """`initialize_distributed` with the values of the flags `define_flags` declared."""
    return initialize_distributed(flag_values.coordinator_address, flag_values.num_processes,
                                  flag_values.process_id, auto_detect=flag_values.distributed)
