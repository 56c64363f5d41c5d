"""The notebooks in notebooks/ run from top to bottom without an error (on CPU, as in CI)."""

import pathlib

import nbclient
import nbformat
import pytest

from conftest import upstream_path

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NEEDS_UPSTREAM = {"01_quickstart", "02_md_with_jax_md"}  # they load the vendored tests/data/upstream checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_runs_without_errors(name):
    if name in NEEDS_UPSTREAM:
        upstream_path("checkpoints")  # fails (never skips) without the vendored checkpoints
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors


def test_notebooks_are_committed_with_outputs():
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert {"01_quickstart", "02_md_with_jax_md", "03_performance"} <= set(names)
    for name in names:
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code and all(cell.execution_count for cell in code), f"{name}: every code cell must be executed before committing"
        assert any(cell.outputs for cell in code), f"{name}: committed without outputs"
