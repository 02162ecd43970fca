"""benchmarks/gpu_pass.py runs end to end on CPU (--smoke), so its first run on a lent GPU does not fail on a typo.

The GPU image lacks some of this project's dependencies (grain, ml_collections, tensorboardX,
statsforecast: /work/.library/device/KINDS.md); the smoke run makes them unimportable, so an import of
one on the pass's path fails here too.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

if os.environ.get("CI"):
    import torch  # noqa: F401  (`make test` installs it: under CI a missing torch fails, never skips)
else:
    pytest.importorskip("torch", reason="torch is not installed; `make test` installs the CPU build")

sys.path.insert(0, str(REPO_ROOT))
from benchmarks import common, gpu_pass  # noqa: E402

NOT_ON_THE_GPU_IMAGE = ("grain", "ml_collections", "tensorboardX", "statsforecast")


def _blocking_path(root):
    """A directory of packages that raise ImportError, to put first on PYTHONPATH."""
    for name in NOT_ON_THE_GPU_IMAGE:
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU image')\n")
    return root


def test_smoke_pass_measures_every_framework_without_the_missing_packages(tmp_path):
    blocked = _blocking_path(tmp_path / "blocked")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(blocked), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "benchmarks/gpu_pass.py", "--smoke", "--output", str(tmp_path / "out")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_pass.json").read_text())
    assert [(row["model"], row["phase"]) for row in result["rows"]] == [("debug", "train"), ("debug", "infer")]
    for row in result["rows"]:
        assert "error" not in row, row["error"]
        assert row["dtype"] == "bfloat16"
        for name in ("jax", "torch_eager", "torch_compile"):
            assert row[f"{name}_per_s"] > 0, row.get(f"{name}_error")
            assert row[f"{name}_tokens_per_s"] > 0
        assert row["jax_vs_torch_eager"] > 0 and row["jax_vs_torch_compile"] > 0
    assert set(result["targets"]) == set(gpu_pass.TARGETS)
    assert result["meta"]["command"].endswith("--smoke --output " + str(tmp_path / "out"))


def test_targets_read_the_training_rows():
    rows = [{"model": "base", "phase": "train", "jax_vs_torch_eager": 1.6, "jax_vs_torch_compile": 0.9,
             "jax_mfu": 0.36},
            {"model": "tiny", "phase": "train", "jax_vs_torch_eager": 1.7, "jax_vs_torch_compile": 1.1},
            {"model": "base", "phase": "infer", "jax_vs_torch_eager": 0.1},
            {"model": "tiny", "phase": "train", "skipped": "budget"}]
    targets = gpu_pass.target_status(rows)
    assert targets["train_vs_torch_eager"]["met"] is True
    assert targets["train_vs_torch_compile"]["met"] is False  # base's 0.9
    assert targets["base_train_mfu"] == {"min": 0.35, "jax": 0.36, "met": True}
    assert gpu_pass.target_status([])["base_train_mfu"]["met"] is None


def test_device_peaks_by_name():
    assert common.device_peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert common.device_peak_flops("NVIDIA H200", "bfloat16") == 989e12
    assert common.device_peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert common.device_peak_flops("cpu", "bfloat16") is None
