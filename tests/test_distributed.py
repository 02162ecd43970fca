"""Multi-process runs on localhost: launch/pretrain.py as 2 processes x 4 CPU devices (gloo) matches
one process with 8 devices; its checkpoint restores in one process on other meshes; and the flag /
environment handling of factost_jax/train/distributed.py."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from factost_jax.train import distributed
from factost_jax.train import mesh as mesh_lib
from launcher_runs import FAST_COMPILE_XLA_FLAG

STEPS = 4


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pretrain_args(workdir, data_dir):
    return [sys.executable, "launch/pretrain.py", "--config", "configs/pretrain.py:debug", "--workdir", str(workdir),
            f"--config.data.data_dir={data_dir}", "--config.data.batch_size=16",
            "--config.data.output_patch_buckets=(2,)",
            f"--config.train.steps={STEPS}", "--config.train.log_every=1", f"--config.train.eval_every={STEPS}",
            "--config.train.eval_windows=16", f"--config.train.checkpoint_every={STEPS}",
            "--config.train.progress=False", "--config.mesh.shape=-1,1,1"]


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "TPU_WORKER"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_XLA_FLAG}")
    return env


def _train_losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r], [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def runs(repo_root, data_dir, tmp_path_factory):
    """(one-process 8-device workdir, two-process 2x4-device workdir, their outputs), run concurrently."""
    root = tmp_path_factory.mktemp("distributed")
    single_dir, multi_dir = root / "single", root / "multi"
    port = _free_port()
    procs = {"single": subprocess.Popen(_pretrain_args(single_dir, data_dir), cwd=repo_root, env=_env(8),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)}
    for i in range(2):
        procs[f"p{i}"] = subprocess.Popen(
            _pretrain_args(multi_dir, data_dir) + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                                   f"--process_id={i}"],
            cwd=repo_root, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=400)
            outputs[name] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for name, (code, out, err) in outputs.items():
        assert code == 0, f"{name} exited {code}:\n{out[-2000:]}\n{err[-3000:]}"
    return single_dir, multi_dir, outputs


def test_two_processes_match_one_process_with_eight_devices(runs):
    single_dir, multi_dir, outputs = runs
    single_steps, single_losses = _train_losses(single_dir)
    multi_steps, multi_losses = _train_losses(multi_dir)
    assert single_steps == multi_steps == list(range(1, STEPS + 1))
    np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-4)
    # Only process 0 prints and writes; both joined one 8-device job.
    assert "devices: 8 cpu" in outputs["p0"][1] and "done: step 4" in outputs["p0"][1]
    # Process 1's stdout holds only gloo's own C++ connection log, none of the launcher's lines.
    assert not any(word in outputs["p1"][1] for word in ("model:", "corpus:", "done:", "checkpoint", "loss"))
    assert "devices: 8 cpu" in outputs["single"][1]
    # Every process took part in the save: one data-iterator state per process next to shared params.
    step_dir = multi_dir / "checkpoints" / str(STEPS)
    assert sorted(p.name for p in (step_dir / "data_iter").iterdir() if p.suffix == ".json") == [
        "process_0-of-2.json", "process_1-of-2.json"]
    metadata = json.loads((step_dir / "metadata" / "metadata").read_text())
    assert metadata["process_count"] == 2 and metadata["mesh_shape"] == {"data": 8, "fsdp": 1, "tensor": 1}


def test_multi_process_checkpoint_restores_in_one_process_on_any_mesh(runs, repo_root, data_dir):
    from factost_jax.train.loop import RunConfigError, params_sha256, restore_params, train_and_evaluate
    from factost_jax.train.tasks import PretrainTask

    single_dir, multi_dir, _ = runs
    multi_sha = (multi_dir / "final_params.sha256").read_text().strip()
    single_sha = (single_dir / "final_params.sha256").read_text().strip()
    config = _run_config(repo_root, data_dir)
    task = PretrainTask(config)
    init_rng = jax.random.key(0)
    one_device = mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    for mesh in (one_device, mesh_lib.make_mesh("1,4,2")):  # 2 processes -> 1 device, -> 8 devices FSDP+TP
        with mesh_lib.mesh_context(mesh):
            boxed = jax.eval_shape(task.init_params, init_rng)
            shardings = mesh_lib.param_shardings(boxed, mesh)
            for workdir, sha in ((multi_dir, multi_sha), (single_dir, single_sha)):
                params = restore_params(workdir, mesh_lib.unbox(boxed), shardings)
                kernel = params["stack"]["layers"]["mlp"]["up_proj"]["kernel"]
                assert kernel.sharding.mesh.devices.size == mesh.devices.size
                assert kernel.sharding.spec == shardings["stack"]["layers"]["mlp"]["up_proj"]["kernel"].spec
                assert params_sha256(params) == sha
    # Params equal across the two runs up to float reduction order.
    with mesh_lib.mesh_context(one_device):
        boxed = jax.eval_shape(task.init_params, init_rng)
        shardings = mesh_lib.param_shardings(boxed, one_device)
        a = restore_params(multi_dir, mesh_lib.unbox(boxed), shardings)
        b = restore_params(single_dir, mesh_lib.unbox(boxed), shardings)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)

    # Resuming TRAINING in one process is refused with a clear message (the iterator state is per process).
    with pytest.raises(RunConfigError, match=r"written by 2 process\(es\) but this run has 1"):
        train_and_evaluate(task, config, multi_dir)


def _run_config(repo_root, data_dir):
    """The validated config the subprocess runs used (the same overrides as `_pretrain_args`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("factost_configs_pretrain_dist", repo_root / "configs" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("debug")
    config.data.data_dir = str(data_dir)
    config.data.batch_size = 16
    config.data.output_patch_buckets = (2,)
    config.train.update(dict(steps=STEPS, log_every=1, eval_every=STEPS, eval_windows=16, checkpoint_every=STEPS,
                             progress=False))
    return module.validate_config(config)


# ------------------------------------------------------------------------------ flags and detection
def test_detect_cluster_reads_slurm_open_mpi_and_tpu_environments():
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
             "SLURM_LOCALID": "0"}
    assert distributed.detect_cluster(slurm) == "slurm"
    assert distributed.detect_cluster({**slurm, "SLURM_NTASKS": "1"}) is None  # a one-task job
    assert distributed.detect_cluster({"SLURM_JOB_ID": "7"}) is None  # inside sbatch, not an srun step
    assert distributed.detect_cluster({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "4"}) \
        == "open_mpi"
    assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}) == "tpu_pod"
    assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "t0"}) is None
    assert distributed.detect_cluster({}) is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(coordinator_address="127.0.0.1:1234"), "missing num_processes, process_id"),
        (dict(coordinator_address="localhost", num_processes=2, process_id=0), "HOST:PORT"),
        (dict(coordinator_address="127.0.0.1:1234", num_processes=0, process_id=0), "num_processes"),
        (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2), r"process_id must be .* 0\.\.1"),
    ],
)
def test_initialize_distributed_rejects_partial_or_malformed_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        distributed.initialize_distributed(**kwargs)


def test_single_process_without_cluster_or_flags_and_flag_definitions(monkeypatch):
    for var in list(os.environ):
        if var.startswith(("SLURM_", "OMPI_", "TPU_WORKER")):
            monkeypatch.delenv(var)
    setup = distributed.initialize_distributed()
    assert setup == distributed.DistributedSetup("single", 0, 1)
    assert not jax.distributed.is_initialized()

    values = flags.FlagValues()
    distributed.define_flags(values)
    distributed.define_flags(values)  # idempotent: a second launcher module may call it too
    values(["prog", "--coordinator_address=10.0.0.1:99", "--num_processes=4", "--process_id=3"])
    assert (values.coordinator_address, values.num_processes, values.process_id, values.distributed) == (
        "10.0.0.1:99", 4, 3, False)
    with pytest.raises(flags.IllegalFlagValueError):
        values(["prog", "--num_processes=0"])
