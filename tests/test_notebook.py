"""notebooks/zero_shot_demo.ipynb: a Colab badge and a pip install cell (no clone), stored without
outputs. That it runs top to bottom from a pip install, outside the checkout, is
tests/test_wheel.py::test_notebook_runs_from_the_installed_wheel."""

import nbformat

NOTEBOOK = "notebooks/zero_shot_demo.ipynb"


def test_notebook_has_colab_badge_and_pip_install_without_clone(repo_root):
    notebook = nbformat.read(repo_root / NOTEBOOK, as_version=4)
    first = notebook.cells[0].source
    assert "colab.research.google.com/github/factost-jax/factost-jax/blob/main/notebooks/zero_shot_demo.ipynb" in first
    install = notebook.cells[1].source
    assert 'importlib.util.find_spec("factost_jax") is None' in install
    assert 'FACTOST_JAX_PIP = os.environ.get("FACTOST_JAX_PIP", "factost-jax")' in install
    assert '"pip", "install", "--quiet", FACTOST_JAX_PIP' in install
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "clone" not in code and "configs/" not in code and "REPO" not in code
    assert 'Forecaster.load("factost-tiny")' in code  # weights by name, from the package
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # stored clean
