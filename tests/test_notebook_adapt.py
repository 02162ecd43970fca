"""notebooks/adapt_your_network.ipynb runs top to bottom: fit -> forecast -> plot -> metrics -> save/reload."""

import nbclient
import nbformat
import pytest
from launcher_runs import FAST_COMPILE_XLA_FLAG

NOTEBOOK = "notebooks/adapt_your_network.ipynb"


def test_notebook_is_stored_clean_with_badge(repo_root):
    notebook = nbformat.read(repo_root / NOTEBOOK, as_version=4)
    assert "notebooks/adapt_your_network.ipynb" in notebook.cells[0].source
    assert 'importlib.util.find_spec("factost_jax") is None' in notebook.cells[1].source
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.slow
def test_notebook_runs_clean(repo_root, monkeypatch):
    notebook = nbformat.read(repo_root / NOTEBOOK, as_version=4)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE_XLA_FLAG)  # one host device, as a user has
    client = nbclient.NotebookClient(notebook, timeout=1200, kernel_name="python3",
                                     resources={"metadata": {"path": str(repo_root)}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "my_network.csv: " in text and "8 sensors" in text
    assert "Forecaster(stage=2" in text and "same forecasts after reload: True" in text
    assert any("image/png" in o.get("data", {}) for o in outputs if o.output_type == "display_data")
    tables = "".join(o.get("data", {}).get("text/plain", "") for o in outputs if "data" in o)
    for row in ("adapted (stage 2)", "zero-shot (stage 1)", "seasonal naive (1 day)"):
        assert row in tables
