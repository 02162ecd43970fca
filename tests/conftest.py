"""Test setup: 8 simulated CPU devices (set before jax is imported) and the real-data directory."""

import atexit
import os
import pathlib
import shutil
import tempfile

from launcher_runs import FAST_COMPILE_XLA_FLAG  # imports no jax, which must see XLA_FLAGS first

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count=8 {FAST_COMPILE_XLA_FLAG}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA cache for the session: a launcher subprocess (and its rerun, which resumes)
# then loads the programs an earlier run compiled instead of compiling them again.
_XLA_CACHE_DIR = tempfile.mkdtemp(prefix="factost-tests-xla-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _XLA_CACHE_DIR)
atexit.register(shutil.rmtree, _XLA_CACHE_DIR, True)

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


def _data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("FACTOST_DATA_DIR", str(DEFAULT_DATA_DIR)))


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """The real-data directory. Under CI its absence is a failure, never a skip."""
    path = _data_dir()
    if not path.is_dir():
        message = f"real data directory {path} not found (set FACTOST_DATA_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT
