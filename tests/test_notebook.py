"""notebooks/zero_shot_demo.ipynb runs top to bottom (nbclient, the venv's python3 kernel) without errors."""

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NOTEBOOK = "notebooks/zero_shot_demo.ipynb"


def test_notebook_has_colab_badge_and_guarded_install(repo_root):
    notebook = nbformat.read(repo_root / NOTEBOOK, as_version=4)
    first = notebook.cells[0].source
    assert "colab.research.google.com/github/factost-jax/factost-jax/blob/main/notebooks/zero_shot_demo.ipynb" in first
    install = notebook.cells[1].source
    assert 'importlib.util.find_spec("factost_jax") is None' in install and "pip" in install
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # stored clean


def test_notebook_runs_clean(repo_root, data_dir, monkeypatch):
    notebook = nbformat.read(repo_root / NOTEBOOK, as_version=4)
    # The kernel inherits this environment: CPU, the real data, and ONE host device as a user has
    # (eight simulated devices would make the in-notebook pretraining several times slower).
    monkeypatch.setenv("FACTOST_DATA_DIR", str(data_dir))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", "")
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(repo_root)}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "ETTh2, test split, held out of this checkpoint's pretraining corpus" in text
    assert any("image/png" in o.get("data", {}) for o in outputs if o.output_type == "display_data")
    tables = "".join(o.get("data", {}).get("text/plain", "") for o in outputs if "data" in o)
    assert "seasonal naive" in tables and "FactoST zero-shot" in tables
