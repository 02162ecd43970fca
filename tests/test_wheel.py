"""A pip install that works alone: build the wheel, install it into a fresh virtualenv in a temporary
folder and use it from outside the checkout (shipped weights, entry points, packaged configs, Hub).

How the fresh venv gets its dependencies, and why: installing jax, flax, orbax, grain, pandas, ...
afresh costs minutes and the network for every run, so the new venv (`python -m venv --without-pip`)
receives only the built wheel (`pip --python NEW install --no-index --no-deps WHEEL`), and a `.pth`
file appends the test venv's site-packages for the third-party packages. `.pth` lines that are
paths do not run that directory's own `.pth` files, so the test venv's editable factost_jax finder
never loads: `factost_jax` can only come from the wheel, which the test asserts. The wheel is built
the way a user builds it (`pip wheel --no-deps .`, pip's isolated build environment), from a
copy of pyproject.toml, README.md and factost_jax/.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pandas as pd
import pytest
from launcher_runs import FAST_COMPILE_XLA_FLAG

pytestmark = pytest.mark.slow

COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _run(cmd, cwd, env, timeout=600):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(repo_root, tmp_path_factory):
    """(venv bin dir, its site-packages, an env without the checkout on any path, a work dir outside it)."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    # Built from a copy of what the wheel is made of: an in-tree build would leave build/ in the
    # checkout, whose stale files a later build would ship.
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(repo_root / name, source / name)
    shutil.copytree(repo_root / "factost_jax", source / "factost_jax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(source)],
         cwd=root, env=env)
    (wheel,) = (root / "dist").glob("factost_jax-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root, env=env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", "--no-deps",
          str(wheel)], cwd=root, env=env)
    site = pathlib.Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             cwd=root, env=env).stdout.strip())
    (site / "test_venv_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "work"
    work.mkdir()
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(root / "hf"), JAX_PLATFORMS="cpu")
    return venv / "bin", site, env, work


def _series_table(path):
    frames = []
    for sid, n, level in (("a", 200, 10.0), ("b", 150, 15.0)):
        t = np.arange(n)
        frames.append(pd.DataFrame({"unique_id": sid, "ds": pd.date_range("2024-01-01", periods=n, freq="h"),
                                    "y": level + 3 * np.sin(2 * np.pi * t / 24)}))
    frame = pd.concat(frames, ignore_index=True)
    frame.to_csv(path, index=False)
    return frame


def test_wheel_holds_the_weights_configs_and_entry_points(installed):
    bin_dir, site, _, _ = installed
    shipped = site / "factost_jax" / "pretrained" / "factost-tiny"
    assert (shipped / "params" / "manifest.ocdbt").is_file() and (shipped / "metadata" / "metadata").is_file()
    assert (site / "factost_jax" / "configs" / "adapt.py").is_file()
    for name in ("factost-pretrain", "factost-adapt", "factost-evaluate", "factost-forecast"):
        assert (bin_dir / name).is_file(), name


def test_factost_forecast_from_outside_the_checkout(installed, repo_root):
    bin_dir, site, env, work = installed
    frame = _series_table(work / "my.csv")
    result = _run([str(bin_dir / "factost-forecast"), "--checkpoint", "factost-tiny", "--input", "my.csv",
                   "--horizon", "24", "--output", "out.csv"], cwd=work, env=env)
    assert result.stdout.strip() == "wrote out.csv: 2 series x 24 steps, quantiles 0.1,0.5,0.9"
    out = pd.read_csv(work / "out.csv")
    assert list(out.columns) == ["unique_id", "ds", "median", "0.1", "0.5", "0.9"] and len(out) == 48
    # The installed package forecasts what the checkout does.
    from factost_jax import Forecaster

    expected = Forecaster.load("factost-tiny").forecast_df(frame, horizon=24)
    np.testing.assert_allclose(out[["0.1", "0.5", "0.9"]].to_numpy(), expected[["0.1", "0.5", "0.9"]].to_numpy(),
                               rtol=1e-5, atol=1e-5)
    bad = subprocess.run([str(bin_dir / "factost-forecast"), "--input", "missing.csv", "--horizon", "24",
                          "--output", "o.csv"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert (bad.returncode, bad.stderr) == (2, "error: --input missing.csv: no such file\n")


def test_installed_package_loads_by_name_and_from_pretrained(installed):
    _, site, env, work = installed
    script = textwrap.dedent(f"""
        import json, pathlib, shutil
        import factost_jax
        from factost_jax import Forecaster
        assert pathlib.Path(factost_jax.__file__).is_relative_to({str(site)!r}), factost_jax.__file__
        fc = Forecaster.load("factost-tiny")
        saved = fc.save_pretrained("pretrained")
        again = Forecaster.from_pretrained("pretrained")
        # A Hub repository read from the offline HF cache (HF_HUB_OFFLINE=1, HF_HUB_CACHE set).
        storage = pathlib.Path({env['HF_HUB_CACHE']!r}) / "models--factost--factost-tiny"
        (storage / "refs").mkdir(parents=True)
        (storage / "refs" / "main").write_text({COMMIT!r})
        shutil.copytree(saved, storage / "snapshots" / {COMMIT!r})
        hub = Forecaster.from_pretrained("factost/factost-tiny")
        series = [[float(i % 24) for i in range(96)]]
        out = [m.forecast(series, 24).quantiles.tolist() for m in (fc, again, hub)]
        print(json.dumps({{"path": str(fc.path), "same": out[0] == out[1] == out[2]}}))
    """)
    result = _run([str(pathlib.Path(env["PATH"].split(os.pathsep)[0]) / "python"), "-c", script], cwd=work, env=env)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["same"] and pathlib.Path(report["path"]).is_relative_to(site)


def test_training_entry_points_use_packaged_configs_and_shipped_init(installed):
    bin_dir, _, env, work = installed
    result = _run([str(bin_dir / "factost-pretrain"), "--config", "pretrain.py:debug", "--dry_run"], cwd=work, env=env)
    assert "params: 78480" in result.stdout.splitlines()
    # Stage 2's default init_from is the shipped factost-tiny, found inside the installed package.
    result = _run([str(bin_dir / "factost-adapt"), "--config", "configs/adapt.py:synthetic", "--dry_run"],
                  cwd=work, env=env)
    assert "init_from=" in result.stdout and "site-packages/factost_jax/pretrained/factost-tiny" in result.stdout
    bad = subprocess.run([str(bin_dir / "factost-evaluate")], cwd=work, env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) == 1


def test_notebook_runs_from_the_installed_wheel(installed, repo_root, data_dir, monkeypatch):
    """The notebook, in a kernel of the fresh venv, from a directory outside the checkout."""
    import nbclient
    import nbformat

    bin_dir, site, env, work = installed
    kernels = work.parent / "jupyter" / "kernels" / "factost-wheel"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(bin_dir / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "factost-jax wheel", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(work.parent / "jupyter"))
    # The kernel inherits this environment: CPU, the real data, ONE host device as a user has.
    for key in ("PATH", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("FACTOST_DATA_DIR", str(data_dir))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE_XLA_FLAG)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    notebook = nbformat.read(repo_root / "notebooks" / "zero_shot_demo.ipynb", as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import factost_jax; print('package:', factost_jax.__file__)"))
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="factost-wheel",
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"package: {site / 'factost_jax' / '__init__.py'}" in text
    assert "ETTh2, test split, held out of this checkpoint's pretraining corpus" in text
    assert any("image/png" in o.get("data", {}) for o in outputs if o.output_type == "display_data")
    tables = "".join(o.get("data", {}).get("text/plain", "") for o in outputs if "data" in o)
    assert "seasonal naive" in tables and "FactoST zero-shot" in tables
